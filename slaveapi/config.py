"""
Configuration: the ini file and the credentials JSON, read into typed records.

The ini keeps the 2015 sample's sections and keys (C{[server]},
C{[secrets]}, C{[slavealloc]}, C{[inventory]}, C{[bugzilla]}, C{[buildapi]},
C{[slaves]}, C{[logging]}) and adds sections with working defaults (C{[dns]},
C{[ssh]}, C{[http]}, C{[devices]}, C{[timeouts]}, C{[auth]}). Anything
missing or malformed raises L{ConfigError}, whose message is one line naming
the file, the section and key, and what was expected.

Secrets are held in L{Secret}, which never shows its value when printed,
logged or put in a repr.

Credentials bound for a plain C{http://} URL (inventory's basic auth,
Bugzilla's API key) are refused unless their section says
C{allow_plain_http = true}; L{plain_http_credentials} lists what such a
configuration sends in clear text, for the start-up warning.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit, urlunsplit

from twisted.conch.ssh.keys import EncryptedKeyError, Key

from slaveapi.hostnames import parse_authority, parse_origin

T = TypeVar("T")

_REQUIRED: Any = object()

_TRUE = ("1", "yes", "true", "on", "y")
_FALSE = ("0", "no", "false", "off", "n")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line saying why."""


class Secret:
    """A password, key or token: shown as asterisks everywhere but L{reveal}."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ServerConfig:
    """C{[server]}: where to listen and how much to run at once."""

    listen: str = "tcp:9999:interface=127.0.0.1"
    concurrency: int = 50
    daemonize: bool = False
    pidfile: str = "slaveapi.pid"
    #: The largest request body accepted, in bytes; larger ones are a 413.
    max_body: int = 64 * 1024
    #: C{Host} values served besides the listening address (and, on loopback,
    #: the localhost names): C{name}, C{name:port}, C{*.domain} or C{*} for any.
    server_names: tuple[str, ...] = ()
    #: How many of the C{concurrency} slots read-only actions may hold at once;
    #: C{None}: four fifths of them (all of them when C{concurrency} is 1).
    read_concurrency: int | None = None
    #: Pending requests of each kind (read-only, changing) past which a POST is a 503.
    max_queued: int = 10000


@dataclass(frozen=True)
class ServiceURL:
    """
    A remote HTTP API and the user name we log in with, if any.

    C{allow_plain_http}: credentials may be sent to an C{http://} URL
    (C{[inventory]} and C{[bugzilla]} read it; without it such a
    configuration is refused).
    """

    api_url: str
    username: str | None = None
    allow_plain_http: bool = False


@dataclass(frozen=True)
class InventoryConfig(ServiceURL):
    """C{[inventory]}: systems by hostname, and the DNS records API (for AWS loaners)."""

    dns_api_url: str | None = None


@dataclass(frozen=True)
class BuildapiConfig:
    """C{[buildapi]}: recent jobs; C{max_concurrent} limits calls in flight."""

    api_url: str
    max_concurrent: int = 3


@dataclass(frozen=True)
class SlavesConfig:
    """C{[slaves]}: how short names become hosts, and the BMC user."""

    default_domain: str
    ipmi_username: str = "ADMIN"


@dataclass(frozen=True)
class LoggingConfig:
    """C{[logging]}: level and optional rotating file."""

    level: str = "info"
    file: str | None = None
    maxsize: int = 10 * 1024 * 1024
    maxfiles: int = 5


@dataclass(frozen=True)
class DNSConfig:
    """C{[dns]}: resolvers (host, port); none means the system's."""

    servers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class SSHConfig:
    """
    C{[ssh]}: port, timeouts, what to do with host keys, and how many
    sessions to one host at once.

    C{host_keys}: C{strict} accepts only keys already in C{known_hosts};
    C{tofu} records a host's key on first use and refuses a changed one,
    but offers passwords only once a login by key has verified it; C{off}
    checks nothing and is accepted only with C{--lab} (see
    L{check_host_key_policy}).
    """

    port: int = 22
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    host_keys: str = "strict"
    known_hosts: str = "known_hosts"
    per_host: int = 2


@dataclass(frozen=True)
class HTTPConfig:
    """C{[http]}: the limit on every HTTP call to a remote API."""

    timeout: float = 30.0


@dataclass(frozen=True)
class ProbeConfig:
    """
    C{[probes]}: how to tell whether a machine is up, and how long to wait
    for a reboot to take it down and bring it back.

    C{method}: C{tcp} connects to the SSH port; C{icmp} runs the system
    C{ping} (C{ping_count} packets, C{ping_deadline} seconds).
    """

    method: str = "icmp"
    ping_count: int = 3
    ping_deadline: float = 5.0
    tcp_timeout: float = 3.0
    interval: float = 5.0
    down_timeout: float = 300.0
    up_timeout: float = 600.0


@dataclass(frozen=True)
class IPMIConfig:
    """
    C{[ipmi]}: BMC power control through pyghmi worker processes.

    @ivar timeout: the deadline of one IPMI call (pyghmi has none of its own).
    @ivar retries: further attempts when setting up a session fails.
    @ivar workers: how many worker processes serve IPMI calls in parallel.
    @ivar off_timeout: how long a soft power-off may take before a hard one.
    @ivar power_delay: seconds between power off and power on.
    """

    port: int = 623
    timeout: float = 20.0
    retries: int = 2
    workers: int = 8
    off_timeout: float = 60.0
    poll_interval: float = 2.0
    power_delay: float = 5.0


@dataclass(frozen=True)
class SNMPConfig:
    """
    C{[snmp]}: PDU outlet control.

    C{version} C{2c} uses the credentials' C{snmp_community}; C{3} uses USM
    with C{v3_user} and the credentials' C{snmp_v3_auth_key} and
    C{snmp_v3_priv_key}. C{pdu_types} maps a PDU host to C{sentry} or C{apc}
    (from C{[pdus]}); others are C{default_pdu_type}.
    """

    port: int = 161
    timeout: float = 2.0
    retries: int = 1
    version: str = "2c"
    v3_user: str | None = None
    v3_auth_protocol: str = "sha"
    v3_priv_protocol: str = "aes"
    default_pdu_type: str = "sentry"
    pdu_types: Mapping[str, str] = field(default_factory=dict)
    state_timeout: float = 30.0
    poll_interval: float = 1.0
    power_delay: float = 5.0


@dataclass(frozen=True)
class MozpoolConfig:
    """C{[mozpool]}: how to reach the imaging server named in inventory."""

    scheme: str = "http"
    port: int | None = None


@dataclass(frozen=True)
class RebootConfig:
    """
    C{[reboot]}: the Bugzilla hand-off when every reboot method failed.

    Summaries are templates with C{{name}} (the short name).
    """

    bug_product: str = "Infrastructure & Operations"
    bug_component: str = "DCOps"
    bug_summary: str = "{name} is unreachable"
    tracking_product: str = "Release Engineering"
    tracking_component: str = "Buildduty"
    tracking_summary: str = "{name} problem tracking"


@dataclass(frozen=True)
class BuildbotConfig:
    """
    C{[buildbot]} and C{[masters]}: graceful shutdowns through Buildbot masters.

    C{flavour} says how to ask a master: C{0.8} (POST to the old web
    status's C{/buildslaves/<name>/shutdown}), C{modern} (the data API's
    JSON-RPC C{stop} on the worker, Buildbot >= 1.0) or C{auto} (ask the
    data API first, fall back to 0.8). C{[masters]} overrides it per master
    (by fqdn or nickname). C{username} (with the credentials'
    C{buildbot_master}) is sent as HTTP basic auth to masters that need it.
    The shutdown is confirmed from twistd.log, polled every
    C{poll_interval} for at most C{max_wait} seconds.

    C{scheme} (C{http} or C{https}) is how masters are reached;
    C{master_schemes} overrides it per master (C{[masters]}, by fqdn or
    nickname). Basic auth goes to an C{http} master only with
    C{allow_plain_http}.
    """

    flavour: str = "auto"
    username: str | None = None
    masters: Mapping[str, str] = field(default_factory=dict)
    poll_interval: float = 30.0
    max_wait: float = 5 * 3600.0
    scheme: str = "http"
    master_schemes: Mapping[str, str] = field(default_factory=dict)
    allow_plain_http: bool = False


@dataclass(frozen=True)
class AWSConfig:
    """
    C{[aws]}: EC2 instances, through boto3 in a bounded thread pool.

    Credentials come from the credentials file (C{aws_access_key_id},
    C{aws_secret_access_key}) or else boto3's standard chain. C{endpoint_url}
    points at another EC2 endpoint (the lab's moto server). Loaners are
    launched from the AMI or launch template of their type into C{subnet_id}
    and named in C{build_domain} / C{test_domain}.
    """

    region: str = "us-east-1"
    endpoint_url: str | None = None
    timeout: float = 30.0
    retries: int = 3
    threads: int = 10
    poll_interval: float = 5.0
    state_timeout: float = 600.0
    dns_timeout: float = 1200.0
    subnet_id: str | None = None
    key_name: str | None = None
    build_ami: str | None = None
    test_ami: str | None = None
    build_launch_template: str | None = None
    test_launch_template: str | None = None
    build_instance_type: str = "c5.2xlarge"
    test_instance_type: str = "m5.large"
    build_domain: str | None = None
    test_domain: str | None = None
    #: Short names of build and test loaners (shell-style, C{*} and C{?}): the
    #: only names aws_create_instance creates, and machines SlaveAPI knows
    #: even when slavealloc does not.
    build_loaner_names: tuple[str, ...] = ("dev-linux64-ec2-*",)
    test_loaner_names: tuple[str, ...] = ("tst-linux32-ec2-*", "tst-linux64-ec2-*")


@dataclass(frozen=True)
class StoreConfig:
    """C{[store]}: how long finished results are kept (0 days: for ever)."""

    keep_days: float = 90.0


@dataclass(frozen=True)
class AuthConfig:
    """
    C{[auth]}: whether reads need a token too (writes do whenever tokens
    exist), which other web origins may call the API from a browser, and
    whether SlaveAPI may listen beyond loopback without tokens.
    """

    protect_reads: bool = False
    #: Normalised origins, e.g. C{"https://dashboard.example.com:443"}.
    allowed_origins: tuple[str, ...] = ()
    allow_anonymous: bool = False


#: What a token may be allowed to do: C{read} (GETs under C{protect_reads}),
#: C{inspect} (uptime, last activity), C{reboot} (reboot, shutdown_buildslave),
#: C{disable}, C{aws} (AWS instances).
API_SCOPES = ("read", "inspect", "reboot", "disable", "aws")

#: Letters, digits and C{. _ @ + -}: client names go into logs and bug comments.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


@dataclass(frozen=True)
class ApiToken:
    """One API client's bearer token and the scopes it grants."""

    token: Secret
    scopes: frozenset[str] = frozenset(API_SCOPES)


@dataclass(frozen=True)
class Credentials:
    """
    The credentials JSON.

    @ivar ssh: user name to the passwords tried in order.
    @ivar ssh_keys: user name to the absolute paths of its unencrypted private
        key files, offered before its passwords; each was read and checked
        when the credentials were loaded.
    @ivar api_tokens: client name to its bearer token and scopes; empty
        turns authentication off.
    """

    ssh: Mapping[str, tuple[Secret, ...]]
    ssh_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    inventory: Secret | None = None
    ipmi: Secret | None = None
    bugzilla: Secret | None = None
    snmp_community: Secret | None = None
    snmp_v3_auth_key: Secret | None = None
    snmp_v3_priv_key: Secret | None = None
    buildbot_master: Secret | None = None
    aws_access_key_id: Secret | None = None
    aws_secret_access_key: Secret | None = None
    api_tokens: Mapping[str, ApiToken] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """Everything the service is configured with."""

    path: str
    server: ServerConfig
    slavealloc: ServiceURL
    inventory: InventoryConfig
    bugzilla: ServiceURL
    buildapi: BuildapiConfig
    slaves: SlavesConfig
    credentials: Credentials
    logging: LoggingConfig = LoggingConfig()
    dns: DNSConfig = DNSConfig()
    ssh: SSHConfig = SSHConfig()
    http: HTTPConfig = HTTPConfig()
    auth: AuthConfig = AuthConfig()
    probes: ProbeConfig = ProbeConfig()
    ipmi: IPMIConfig = IPMIConfig()
    snmp: SNMPConfig = SNMPConfig()
    mozpool: MozpoolConfig = MozpoolConfig()
    reboot: RebootConfig = RebootConfig()
    buildbot: BuildbotConfig = BuildbotConfig()
    aws: AWSConfig = AWSConfig()
    store: StoreConfig = StoreConfig()
    devices_url: str | None = None
    timeouts: Mapping[str, float] = field(default_factory=dict)


class _Section:
    """Typed reads from one ini section, with errors that name the key."""

    def __init__(self, parser: configparser.RawConfigParser, path: str, name: str) -> None:
        self._parser = parser
        self._path = path
        self.name = name

    def _fail(self, key: str, expected: str, got: str | None = None) -> ConfigError:
        found = f", got {got!r}" if got is not None else ""
        return ConfigError(f"{self._path}: [{self.name}] {key}: expected {expected}{found}")

    def _raw(self, key: str, default: Any, expected: str) -> str | None:
        if self._parser.has_option(self.name, key):
            return self._parser.get(self.name, key).strip()
        if default is _REQUIRED:
            raise ConfigError(f"{self._path}: [{self.name}] {key}: missing; expected {expected}")
        return None

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        raw = self._raw(key, default, "a value")
        if raw is None:
            return default
        if raw == "" and default is _REQUIRED:
            raise self._fail(key, "a non-empty value", raw)
        return raw

    def url(self, key: str, default: Any = _REQUIRED) -> Any:
        raw = self._raw(key, default, "an http:// or https:// URL")
        if raw is None:
            return default
        if not raw.startswith(("http://", "https://")):
            raise self._fail(key, "an http:// or https:// URL", raw)
        return raw.rstrip("/")

    def number(self, key: str, default: Any, convert: Callable[[str], T], minimum: float) -> T:
        kind = "an integer" if convert is int else "a number"
        raw = self._raw(key, default, f"{kind} >= {minimum:g}")
        if raw is None:
            return default  # type: ignore[no-any-return]
        try:
            value = convert(raw)
        except ValueError:
            raise self._fail(key, f"{kind} >= {minimum:g}", raw) from None
        if value != value or value < minimum:  # type: ignore[operator]  # NaN is not a number here
            raise self._fail(key, f"{kind} >= {minimum:g}", raw)
        return value

    def boolean(self, key: str, default: Any = _REQUIRED) -> Any:
        raw = self._raw(key, default, "true or false")
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._fail(key, "true or false", raw)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(key, default, " or ".join(choices))
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise self._fail(key, "one of " + ", ".join(choices), raw)
        return raw.lower()

    def host_ports(self, key: str, default_port: int) -> tuple[tuple[str, int], ...]:
        raw = self._raw(key, "", "host:port pairs separated by spaces or commas")
        pairs = []
        for item in (raw or "").replace(",", " ").split():
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else (str(default_port) if not rest else "x")
            elif item.count(":") > 1:
                host, port = item, str(default_port)  # a bare IPv6 address
            else:
                host, _, port = item.rpartition(":")
                if not host:
                    host, port = item, str(default_port)
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise self._fail(key, "host:port pairs separated by spaces or commas", item)
            pairs.append((host, int(port)))
        return tuple(pairs)


_MASTER_FLAVOURS = ("auto", "0.8", "modern")
_MASTER_SCHEMES = ("http", "https")


def _master_setting(masters: _Section, key: str) -> tuple[str | None, str | None]:
    """One C{[masters]} value: a flavour, a scheme, or both (C{modern https}); either may be absent."""
    expected = "a flavour (auto, 0.8 or modern) and/or a scheme (http or https), e.g. 'modern https'"
    raw = masters.string(key)
    flavour = scheme = None
    for word in raw.replace(",", " ").lower().split():
        if word in _MASTER_FLAVOURS and flavour is None:
            flavour = word
        elif word in _MASTER_SCHEMES and scheme is None:
            scheme = word
        else:
            raise masters._fail(key, expected, raw)
    return flavour, scheme


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
                found.append(PlainHTTPCredentials("inventory", key, _shown(url), credential, inventory.allow_plain_http))
                break
    bugzilla = config.bugzilla
    if credentials.bugzilla is not None and _is_plain_http(bugzilla.api_url):
        found.append(
            PlainHTTPCredentials(
                "bugzilla", "api_url", _shown(bugzilla.api_url), "the Bugzilla API key", bugzilla.allow_plain_http
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


def _refuse_plain_http(config: Config) -> None:
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


def _is_plain_http(url: str) -> bool:
    return url.lower().startswith("http://")


def _shown(url: str) -> str:
    """C{url} without any user info (a password may hide there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _read_concurrency(server: _Section) -> int | None:
    """C{[server] read_concurrency}: 1 to C{concurrency}, or C{None} for the default share."""
    concurrency = server.number("concurrency", 50, int, 1)
    value: int | None = server.number("read_concurrency", None, int, 1)
    if value is not None and value > concurrency:
        raise server._fail("read_concurrency", f"an integer from 1 to concurrency ({concurrency})", str(value))
    return value


_NAME_PATTERN = re.compile(r"^[a-z0-9*?][a-z0-9*?-]*$")


def _name_patterns(section: _Section, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma- or space-separated short-name patterns (letters, digits, '-', '*' and '?')."""
    raw = section.string(key, None)
    if raw is None:
        return default
    patterns = tuple(part.lower() for part in re.split(r"[\s,]+", raw) if part)
    for pattern in patterns:
        if not _NAME_PATTERN.match(pattern) or pattern.strip("*?") == "":
            raise section._fail(
                key, "short-name patterns of letters, digits, '-', '*' and '?' (not only wildcards)", raw
            )
    return patterns


def _words(section: _Section, key: str) -> list[str]:
    """A list setting: items separated by spaces or commas."""
    raw = section.string(key, "")
    return raw.replace(",", " ").split()


def _server_names(server: _Section) -> tuple[str, ...]:
    """C{[server] server_names}: C{*}, C{*.domain}, C{host} or C{host:port}, lowered."""
    expected = "host names (name, name:port, *.domain or *) separated by spaces or commas"
    names = []
    for item in _words(server, "server_names"):
        try:
            if item != "*":
                parse_authority(item[2:] if item.startswith("*.") else item)
        except ValueError:
            raise server._fail("server_names", expected, item) from None
        names.append(item.lower())
    return tuple(names)


def _allowed_origins(auth: _Section) -> tuple[str, ...]:
    """C{[auth] allowed_origins}: web origins, normalised to C{scheme://host:port}."""
    expected = "origins (http://host[:port] or https://host[:port]) separated by spaces or commas"
    origins = []
    for item in _words(auth, "allowed_origins"):
        try:
            origins.append(str(parse_origin(item.rstrip("/"))))
        except ValueError:
            raise auth._fail("allowed_origins", expected, item) from None
    return tuple(origins)


def _listen_endpoint(server: _Section) -> str:
    if server._parser.has_option("server", "endpoint"):
        return server.string("endpoint")
    interface = server.string("listen", "127.0.0.1")
    port = server.number("port", 9999, int, 0)
    return f"tcp:{port}:interface={interface}"


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


def load_ssh_key(path: str) -> Key:
    """
    Read the unencrypted SSH private key (OpenSSH or PEM format) at C{path}.

    Used when the credentials are loaded, so that a bad key stops start-up,
    and by the SSH client, which reads its keys once.

    @raise ConfigError: the file is missing, unreadable, not a private key,
        or encrypted; the one-line message names the file and never shows
        any of its content.
    """
    try:
        key = Key.fromFile(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: SSH key file not found") from None
    except EncryptedKeyError:
        raise ConfigError(f"{path}: SSH key is encrypted; only unencrypted keys can be used") from None
    except OSError as error:
        raise ConfigError(f"{path}: SSH key file not readable ({error.strerror or type(error).__name__})") from None
    except Exception as error:
        # Never the error's text: conch's parse errors quote the file's content.
        raise ConfigError(f"{path}: not an SSH private key in OpenSSH or PEM format ({type(error).__name__})") from None
    if key.isPublic():
        raise ConfigError(f"{path}: a public key; expected a private key")
    return key


def _api_token(path: str, client: str, entry: Any) -> ApiToken:
    """
    One C{api_tokens} entry: C{"token"} (every scope, the 2015 form) or
    C{{"token": "...", "scopes": ["read", ...]}}.
    """
    if _CLIENT_NAME.fullmatch(client) is None:
        raise ConfigError(
            f"{path}: api_tokens: client name {client[:80]!r}: expected letters, digits and . _ @ + - "
            "(at most 64 characters)"
        )
    where = f"{path}: api_tokens.{client}"
    scopes = frozenset(API_SCOPES)
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"token", "scopes"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected token and scopes")
        raw_scopes = entry.get("scopes")
        if not isinstance(raw_scopes, list) or not all(isinstance(scope, str) for scope in raw_scopes):
            raise ConfigError(f"{where}.scopes: expected a list of scopes from {', '.join(API_SCOPES)}")
        wrong = [scope for scope in raw_scopes if scope not in API_SCOPES]
        if wrong:
            raise ConfigError(f"{where}.scopes: unknown scope {wrong[0]!r}; expected some of {', '.join(API_SCOPES)}")
        scopes = frozenset(raw_scopes)
        entry = entry.get("token")
        where += ".token"
    if not isinstance(entry, str) or len(entry) < 16:
        raise ConfigError(f"{where}: expected a token of at least 16 characters")
    return ApiToken(Secret(entry), scopes)


def load_credentials(path: str) -> Credentials:
    """
    Read the credentials JSON; errors name the file and the key.

    Key files named in C{ssh_keys} are taken relative to the credentials
    file's directory, and each is read once here to check it.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: credentials file not found") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")

    def secret(key: str) -> Secret | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key}: expected a string")
        return Secret(value)

    def mapping(key: str, required: bool) -> dict[str, Any]:
        if key not in data:
            if required:
                raise ConfigError(f"{path}: {key}: missing; expected an object")
            return {}
        value = data[key]
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key}: expected an object")
        return value

    ssh: dict[str, tuple[Secret, ...]] = {}
    for user, passwords in mapping("ssh", required=True).items():
        if isinstance(passwords, str):
            passwords = [passwords]
        if not isinstance(passwords, list) or not all(isinstance(p, str) for p in passwords):
            raise ConfigError(f"{path}: ssh.{user}: expected a list of passwords")
        ssh[user] = tuple(Secret(p) for p in passwords)
    base = os.path.dirname(os.path.abspath(path))
    ssh_keys: dict[str, tuple[str, ...]] = {}
    for user, key_files in mapping("ssh_keys", required=False).items():
        if isinstance(key_files, str):
            key_files = [key_files]
        if not isinstance(key_files, list) or not all(isinstance(k, str) and k for k in key_files):
            raise ConfigError(f"{path}: ssh_keys.{user}: expected a list of private key file paths")
        paths = tuple(os.path.normpath(os.path.join(base, k)) for k in key_files)
        for key_file in paths:
            try:
                load_ssh_key(key_file)
            except ConfigError as error:
                raise ConfigError(f"{path}: ssh_keys.{user}: {error}") from None
        ssh_keys[user] = paths
    tokens = {
        client: _api_token(path, client, entry) for client, entry in mapping("api_tokens", required=False).items()
    }
    return Credentials(
        ssh=ssh,
        ssh_keys=ssh_keys,
        inventory=secret("inventory"),
        ipmi=secret("ipmi"),
        bugzilla=secret("bugzilla"),
        snmp_community=secret("snmp_community"),
        snmp_v3_auth_key=secret("snmp_v3_auth_key"),
        snmp_v3_priv_key=secret("snmp_v3_priv_key"),
        buildbot_master=secret("buildbot_master"),
        aws_access_key_id=secret("aws_access_key_id"),
        aws_secret_access_key=secret("aws_secret_access_key"),
        api_tokens=tokens,
    )


def load_config(path: str) -> Config:
    """
    Read the ini at C{path} and the credentials file it names.

    Relative paths in the ini are taken relative to the ini's directory.
    """
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, configparser.Error) as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"{path}: not a readable ini file ({first_line})") from None

    base = os.path.dirname(os.path.abspath(path))

    def section(name: str, required: bool = True) -> _Section:
        if required and not parser.has_section(name):
            raise ConfigError(f"{path}: [{name}]: missing section")
        return _Section(parser, path, name)

    def relative(value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(base, value)

    server = section("server", required=False)
    secrets = section("secrets")
    slavealloc = section("slavealloc")
    inventory = section("inventory")
    bugzilla = section("bugzilla")
    buildapi = section("buildapi")
    slaves = section("slaves")
    logging = section("logging", required=False)
    dns = section("dns", required=False)
    ssh = section("ssh", required=False)
    http = section("http", required=False)
    auth = section("auth", required=False)
    devices = section("devices", required=False)
    probes = section("probes", required=False)
    ipmi = section("ipmi", required=False)
    snmp = section("snmp", required=False)
    mozpool = section("mozpool", required=False)
    reboot = section("reboot", required=False)
    buildbot = section("buildbot", required=False)
    store = section("store", required=False)
    aws = section("aws", required=False)
    master_flavours = {}
    master_schemes = {}
    if parser.has_section("masters"):
        masters = section("masters")
        for master in parser.options("masters"):
            flavour, scheme = _master_setting(masters, master)
            if flavour is not None:
                master_flavours[master] = flavour
            if scheme is not None:
                master_schemes[master] = scheme
    pdu_types = {}
    if parser.has_section("pdus"):
        pdus = section("pdus")
        for host in parser.options("pdus"):
            pdu_types[host] = pdus.choice(host, "sentry", ("sentry", "apc"))

    log_file = logging.string("file", None)
    timeouts = {}
    if parser.has_section("timeouts"):
        timeouts_section = section("timeouts")
        for key in parser.options("timeouts"):
            timeouts[key] = timeouts_section.number(key, _REQUIRED, float, 1)

    config = Config(
        path=os.path.abspath(path),
        server=ServerConfig(
            listen=_listen_endpoint(server),
            concurrency=server.number("concurrency", 50, int, 1),
            daemonize=server.boolean("daemonize", False),
            pidfile=server.string("pidfile", "slaveapi.pid"),
            max_body=server.number("max_body", 64 * 1024, int, 1024),
            server_names=_server_names(server),
            read_concurrency=_read_concurrency(server),
            max_queued=server.number("max_queued", 10000, int, 1),
        ),
        slavealloc=ServiceURL(slavealloc.url("api_url")),
        inventory=InventoryConfig(
            inventory.url("api_url"),
            inventory.string("username", None),
            allow_plain_http=inventory.boolean("allow_plain_http", False),
            dns_api_url=inventory.url("dns_api_url", None) or inventory.url("api_url") + "/mozdns/api/v1_dns",
        ),
        bugzilla=ServiceURL(
            bugzilla.url("api_url"),
            bugzilla.string("username", None),
            allow_plain_http=bugzilla.boolean("allow_plain_http", False),
        ),
        buildapi=BuildapiConfig(buildapi.url("api_url"), buildapi.number("max_concurrent", 3, int, 1)),
        slaves=SlavesConfig(
            default_domain=slaves.string("default_domain").strip("."),
            ipmi_username=slaves.string("ipmi_username", "ADMIN"),
        ),
        credentials=load_credentials(relative(secrets.string("credentials_file"))),
        logging=LoggingConfig(
            level=logging.choice("level", "info", ("debug", "info", "warn", "warning", "error", "critical")),
            file=relative(log_file) if log_file else None,
            maxsize=logging.number("maxsize", 10 * 1024 * 1024, int, 1024),
            maxfiles=logging.number("maxfiles", 5, int, 1),
        ),
        dns=DNSConfig(servers=dns.host_ports("servers", 53), timeout=dns.number("timeout", 5.0, float, 0.1)),
        ssh=SSHConfig(
            port=ssh.number("port", 22, int, 1),
            connect_timeout=ssh.number("connect_timeout", 30.0, float, 0.1),
            command_timeout=ssh.number("command_timeout", 60.0, float, 0.1),
            host_keys=ssh.choice("host_keys", "strict", ("tofu", "strict", "off")),
            known_hosts=ssh.string("known_hosts", "known_hosts"),
            per_host=ssh.number("per_host", 2, int, 1),
        ),
        http=HTTPConfig(timeout=http.number("timeout", 30.0, float, 0.1)),
        auth=AuthConfig(
            protect_reads=auth.boolean("protect_reads", False),
            allowed_origins=_allowed_origins(auth),
            allow_anonymous=auth.boolean("allow_anonymous", False),
        ),
        probes=ProbeConfig(
            method=probes.choice("method", "icmp", ("icmp", "tcp")),
            ping_count=probes.number("ping_count", 3, int, 1),
            ping_deadline=probes.number("ping_deadline", 5.0, float, 1),
            tcp_timeout=probes.number("tcp_timeout", 3.0, float, 0.1),
            interval=probes.number("interval", 5.0, float, 0.05),
            down_timeout=probes.number("down_timeout", 300.0, float, 0.1),
            up_timeout=probes.number("up_timeout", 600.0, float, 0.1),
        ),
        ipmi=IPMIConfig(
            port=ipmi.number("port", 623, int, 1),
            timeout=ipmi.number("timeout", 20.0, float, 0.1),
            retries=ipmi.number("retries", 2, int, 0),
            workers=ipmi.number("workers", 8, int, 1),
            off_timeout=ipmi.number("off_timeout", 60.0, float, 0),
            poll_interval=ipmi.number("poll_interval", 2.0, float, 0.05),
            power_delay=ipmi.number("power_delay", 5.0, float, 0),
        ),
        snmp=SNMPConfig(
            port=snmp.number("port", 161, int, 1),
            timeout=snmp.number("timeout", 2.0, float, 0.1),
            retries=snmp.number("retries", 1, int, 0),
            version=snmp.choice("version", "2c", ("2c", "3")),
            v3_user=snmp.string("v3_user", None),
            v3_auth_protocol=snmp.choice("v3_auth_protocol", "sha", ("md5", "sha", "sha256")),
            v3_priv_protocol=snmp.choice("v3_priv_protocol", "aes", ("none", "des", "aes")),
            default_pdu_type=snmp.choice("default_pdu_type", "sentry", ("sentry", "apc")),
            pdu_types=pdu_types,
            state_timeout=snmp.number("state_timeout", 30.0, float, 0.1),
            poll_interval=snmp.number("poll_interval", 1.0, float, 0.05),
            power_delay=snmp.number("power_delay", 5.0, float, 0),
        ),
        mozpool=MozpoolConfig(
            scheme=mozpool.choice("scheme", "http", ("http", "https")),
            port=mozpool.number("port", None, int, 1),
        ),
        reboot=RebootConfig(
            bug_product=reboot.string("bug_product", RebootConfig.bug_product),
            bug_component=reboot.string("bug_component", RebootConfig.bug_component),
            bug_summary=reboot.string("bug_summary", RebootConfig.bug_summary),
            tracking_product=reboot.string("tracking_product", RebootConfig.tracking_product),
            tracking_component=reboot.string("tracking_component", RebootConfig.tracking_component),
            tracking_summary=reboot.string("tracking_summary", RebootConfig.tracking_summary),
        ),
        buildbot=BuildbotConfig(
            flavour=buildbot.choice("flavour", "auto", ("auto", "0.8", "modern")),
            username=buildbot.string("username", None),
            masters=master_flavours,
            poll_interval=buildbot.number("poll_interval", 30.0, float, 0.05),
            max_wait=buildbot.number("max_wait", 5 * 3600.0, float, 0.1),
            scheme=buildbot.choice("scheme", "http", _MASTER_SCHEMES),
            master_schemes=master_schemes,
            allow_plain_http=buildbot.boolean("allow_plain_http", False),
        ),
        aws=AWSConfig(
            region=aws.string("region", "us-east-1"),
            endpoint_url=aws.url("endpoint_url", None),
            timeout=aws.number("timeout", 30.0, float, 0.1),
            retries=aws.number("retries", 3, int, 0),
            threads=aws.number("threads", 10, int, 1),
            poll_interval=aws.number("poll_interval", 5.0, float, 0.05),
            state_timeout=aws.number("state_timeout", 600.0, float, 0.1),
            dns_timeout=aws.number("dns_timeout", 1200.0, float, 0.1),
            subnet_id=aws.string("subnet_id", None),
            key_name=aws.string("key_name", None),
            build_ami=aws.string("build_ami", None),
            test_ami=aws.string("test_ami", None),
            build_launch_template=aws.string("build_launch_template", None),
            test_launch_template=aws.string("test_launch_template", None),
            build_instance_type=aws.string("build_instance_type", "c5.2xlarge"),
            test_instance_type=aws.string("test_instance_type", "m5.large"),
            build_domain=aws.string("build_domain", None),
            test_domain=aws.string("test_domain", None),
            build_loaner_names=_name_patterns(aws, "build_loaner_names", AWSConfig.build_loaner_names),
            test_loaner_names=_name_patterns(aws, "test_loaner_names", AWSConfig.test_loaner_names),
        ),
        store=StoreConfig(keep_days=store.number("keep_days", 90.0, float, 0)),
        devices_url=devices.url("url", None),
        timeouts=timeouts,
    )
    _refuse_plain_http(config)
    return config
