"""
Checks of a whole configuration: credentials bound for plain http, and
the SSH host-key policy outside the lab.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slaveapi._text import shown_url

from ._schema import ConfigError

if TYPE_CHECKING:
    from ._records import Config


@dataclass(frozen=True)
class PlainHTTPCredentials:
    """
    A credential the configuration sends over plain http.

    @ivar section: the ini section that says where it goes, and that needs
        C{allow_plain_http = true} for it.
    @ivar key: the key whose value makes it plain http.
    @ivar where: the http:// URL (without user info), or which masters.
    @ivar credential: what travels in clear text, e.g. C{"inventory's basic-auth password"}.
    @ivar allowed: whether the section says C{allow_plain_http = true}.
    """

    section: str
    key: str
    where: str
    credential: str
    allowed: bool


def plain_http_credentials(config: Config) -> tuple[PlainHTTPCredentials, ...]:
    """
    Each section whose credentials would travel over plain http, once: inventory's
    basic auth, Bugzilla's API key, the Buildbot masters' basic auth (for
    masters reached over http, as far as the configuration tells).
    """
    found = []
    credentials = config.credentials
    inventory = config.inventory
    if inventory.username and credentials.inventory is not None:
        for key, url in (("api_url", inventory.api_url), ("dns_api_url", inventory.dns_api_url)):
            if url is not None and _is_plain_http(url):
                credential = "inventory's basic-auth password"
                allowed = inventory.allow_plain_http
                found.append(PlainHTTPCredentials("inventory", key, shown_url(url), credential, allowed))
                break
    bugzilla = config.bugzilla
    if credentials.bugzilla is not None and _is_plain_http(bugzilla.api_url):
        found.append(
            PlainHTTPCredentials(
                "bugzilla", "api_url", shown_url(bugzilla.api_url), "the Bugzilla API key", bugzilla.allow_plain_http
            )
        )
    buildbot = config.buildbot
    plain_masters = sorted(name for name, scheme in buildbot.master_schemes.items() if scheme == "http")
    if buildbot.username and credentials.buildbot_master is not None and (buildbot.scheme == "http" or plain_masters):
        if buildbot.scheme == "http":
            key, where = "scheme", "every master not set to https in [masters]"
        else:
            key, where = "masters", "the masters " + ", ".join(plain_masters)
        credential = "the Buildbot masters' basic-auth password"
        found.append(PlainHTTPCredentials("buildbot", key, where, credential, buildbot.allow_plain_http))
    return tuple(found)


def refuse_plain_http(config: Config) -> None:
    """
    Refuse inventory or Bugzilla credentials bound for an http:// URL unless
    their section allows it; masters are only known at run time, so their
    client refuses them there.
    """
    for plain in plain_http_credentials(config):
        if plain.allowed or plain.section == "buildbot":
            continue
        raise ConfigError(
            f"{config.path}: [{plain.section}] {plain.key}: expected an https:// URL, got {plain.where!r}: "
            f"{plain.credential} would be sent over plain http (set allow_plain_http = true in "
            f"[{plain.section}] to accept that)"
        )


def check_redfish_ca_bundle(config: Config) -> None:
    """
    A C{[redfish] ca_bundle} that cannot be read is refused when the
    configuration loads (one line, at start-up or reload), not found out
    when the first BMC is asked.
    """
    bundle = config.redfish.ca_bundle
    if bundle is not None and not os.access(bundle, os.R_OK):
        raise ConfigError(f"{config.path}: [redfish] ca_bundle: expected a readable PEM file, got {bundle!r}")


def _is_plain_http(url: str) -> bool:
    return url.lower().startswith("http://")


def check_host_key_policy(config: Config, *, lab: bool) -> None:
    """
    Refuse C{[ssh] host_keys = off} outside the simulated lab: it offers
    every password to whatever answers at a machine's address.

    @raise ConfigError: C{off} without C{lab}.
    """
    if config.ssh.host_keys == "off" and not lab:
        raise ConfigError(
            f"{config.path}: [ssh] host_keys: off is accepted only with --lab"
            " (it offers passwords to any host); use strict or tofu"
        )
