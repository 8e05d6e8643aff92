"""
Readers for the ini values no plain kind describes: lists of names,
origins and patterns, the listening endpoint, C{[masters]} values, the
credentials file, and the checks that involve two keys of a section.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from slaveapi._text import shown_url
from slaveapi.hostnames import is_loopback, parse_authority, parse_origin

from ._credentials import Credentials, load_credentials
from ._schema import REQUIRED, IniSection, Integer, Path, Text

#: Where SlaveAPI listens by default: C{[server]} C{listen} and C{port}.
DEFAULT_INTERFACE: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9999

MASTER_FLAVOURS: Final = ("auto", "0.8", "modern")
MASTER_SCHEMES: Final = ("http", "https")

_NAME_PATTERN: Final = re.compile(r"^[a-z0-9*?][a-z0-9*?-]*$")


def read_listen(server: IniSection, key: str, default: Any) -> str:
    """C{[server]} C{endpoint}, or else C{listen} and C{port} as a TCP endpoint string."""
    if server.has("endpoint"):
        return str(Text().read(server, "endpoint", REQUIRED))
    interface = Text().read(server, "listen", DEFAULT_INTERFACE)
    port = Integer(0).read(server, "port", DEFAULT_PORT)
    return f"tcp:{port}:interface={interface}"


def _words(section: IniSection, key: str) -> list[str]:
    """A list setting: items separated by spaces or commas."""
    raw = Text().read(section, key, "")
    return str(raw).replace(",", " ").split()


def read_server_names(server: IniSection, key: str, default: Any) -> tuple[str, ...]:
    """C{[server] server_names}: C{*}, C{*.domain}, C{host} or C{host:port}, lowered."""
    expected = "host names (name, name:port, *.domain or *) separated by spaces or commas"
    names = []
    for item in _words(server, key):
        try:
            if item != "*":
                parse_authority(item[2:] if item.startswith("*.") else item)
        except ValueError:
            raise server.fail(key, expected, item) from None
        names.append(item.lower())
    return tuple(names)


def read_origins(auth: IniSection, key: str, default: Any) -> tuple[str, ...]:
    """C{[auth] allowed_origins}: web origins, normalised to C{scheme://host:port}."""
    expected = "origins (http://host[:port] or https://host[:port]) separated by spaces or commas"
    origins = []
    for item in _words(auth, key):
        try:
            origins.append(str(parse_origin(item.rstrip("/"))))
        except ValueError:
            raise auth.fail(key, expected, item) from None
    return tuple(origins)


def read_name_patterns(section: IniSection, key: str, default: Any) -> Any:
    """Comma- or space-separated short-name patterns (letters, digits, '-', '*' and '?')."""
    raw = Text().read(section, key, None)
    if raw is None:
        return default
    patterns = tuple(part.lower() for part in re.split(r"[\s,]+", raw) if part)
    expected = "short-name patterns of letters, digits, '-', '*' and '?' (not only wildcards)"
    for pattern in patterns:
        if not _NAME_PATTERN.match(pattern) or pattern.strip("*?") == "":
            raise section.fail(key, expected, raw)
    return patterns


def read_domain(section: IniSection, key: str, default: Any) -> Any:
    """A domain name; leading and trailing dots are dropped."""
    value = Text().read(section, key, default)
    return value.strip(".") if isinstance(value, str) else value


def read_credentials_file(section: IniSection, key: str, default: Any) -> Credentials:
    """C{[secrets] credentials_file}, relative to the ini file, loaded."""
    return load_credentials(Path().read(section, key, REQUIRED))


def read_master_flavour(masters: IniSection, key: str, default: Any) -> str | None:
    """The flavour of one C{[masters]} value, if it names one."""
    return _master_setting(masters, key)[0]


def read_master_scheme(masters: IniSection, key: str, default: Any) -> str | None:
    """The scheme of one C{[masters]} value, if it names one."""
    return _master_setting(masters, key)[1]


def _master_setting(masters: IniSection, key: str) -> tuple[str | None, str | None]:
    """One C{[masters]} value: a flavour, a scheme, or both (C{modern https}); either may be absent."""
    expected = "a flavour (auto, 0.8 or modern) and/or a scheme (http or https), e.g. 'modern https'"
    raw = str(Text().read(masters, key, REQUIRED))
    flavour = scheme = None
    for word in raw.replace(",", " ").lower().split():
        if word in MASTER_FLAVOURS and flavour is None:
            flavour = word
        elif word in MASTER_SCHEMES and scheme is None:
            scheme = word
        else:
            raise masters.fail(key, expected, raw)
    return flavour, scheme


def read_webhook_urls(webhooks: IniSection, key: str, default: Any) -> tuple[str, ...]:
    """C{[webhooks] urls}: http:// or https:// URLs separated by spaces or commas."""
    expected = "http:// or https:// URLs with a host, separated by spaces or commas"
    urls = []
    for item in _words(webhooks, key):
        parts = urlsplit(item)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise webhooks.fail(key, expected, shown_url(item[:200], whole=False))
        urls.append(item)
    return tuple(urls)


def check_webhook_urls(webhooks: IniSection, values: dict[str, Any]) -> None:
    """
    C{[webhooks] urls}: a plain http:// URL only to this machine, unless
    C{allow_plain_http}: the signed results would travel in clear text.
    """
    if values["allow_plain_http"]:
        return
    for url in values["urls"]:
        parts = urlsplit(url)
        if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or ""):
            raise webhooks.fail(
                "urls",
                "https:// URLs (plain http:// only to this machine, or with allow_plain_http = true)",
                shown_url(url, whole=False),
            )


def read_store_url(store: IniSection, key: str, default: Any) -> str:
    """
    C{[store] url}: C{sqlite:} (the default) or a C{postgresql://} URL
    without a password (the credentials file holds it).
    """
    raw = store.raw(key, default, "sqlite: or a postgresql:// URL")
    if raw is None or raw.strip() in ("", "sqlite:"):
        return "sqlite:"
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise store.fail(key, "sqlite: or a postgresql://[user@]host[:port]/database URL", shown_url(value[:200]))
    if parts.password is not None:
        raise store.fail(
            key,
            "a URL without a password (put it in the credentials file as postgresql_password)",
            shown_url(value[:200]),
        )
    return value


def check_read_concurrency(server: IniSection, values: dict[str, Any]) -> None:
    """C{[server] read_concurrency}: at most C{concurrency}."""
    read, concurrency = values["read_concurrency"], values["concurrency"]
    if read is not None and read > concurrency:
        raise server.fail("read_concurrency", f"an integer from 1 to concurrency ({concurrency})", str(read))


def default_dns_api_url(inventory: IniSection, values: dict[str, Any]) -> None:
    """C{[inventory] dns_api_url} defaults to the records API under C{api_url}."""
    if values["dns_api_url"] is None:
        values["dns_api_url"] = values["api_url"] + "/mozdns/api/v1_dns"
