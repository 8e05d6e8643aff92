"""
What counts as a hostname, for names from requests and from remote systems
alike; and how the authority of an HTTP C{Host} header or an C{Origin} reads.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_valid_hostname(name: str) -> bool:
    """Letters, digits, dots and dashes, at most 253 characters, no empty label; matched in full."""
    return _HOSTNAME.fullmatch(name) is not None and ".." not in name


@dataclass(frozen=True)
class Authority:
    """
    A host and optional port, as in C{Host: example.com:9999}.

    @ivar host: a hostname in lower case, an IPv4 address, or an IPv6
        address without its brackets.
    @ivar port: C{None} when not given.
    """

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class Origin:
    """A web origin, C{scheme://host:port}, its port always filled in."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{Authority(self.host, self.port)}"


def parse_authority(text: str) -> Authority:
    """
    C{host}, C{host:port}, C{[v6]} or C{[v6]:port}; names are lowered.

    @raise ValueError: for anything else (empty, bad port, not a hostname or address).
    """
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"expected a closing ']' in {text!r}")
        host = _ipv6(inside, text)
    else:
        host, colon, rest = text.partition(":")
        rest = colon + rest
        host = host.lower()
        if not is_valid_hostname(host):
            raise ValueError(f"expected a hostname or address, got {text!r}")
    if not rest:
        return Authority(host)
    digits = rest[1:] if rest.startswith(":") else ""
    if not digits.isascii() or not digits.isdigit() or not 0 < int(digits) < 65536:
        raise ValueError(f"expected a port from 1 to 65535 after the host, got {text!r}")
    return Authority(host, int(digits))


def parse_origin(text: str) -> Origin:
    """
    An C{Origin} header's value, C{http://host[:port]} or C{https://...}.

    @raise ValueError: for anything else (C{null}, paths, other schemes).
    """
    scheme, separator, rest = text.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _DEFAULT_PORTS:
        raise ValueError(f"expected http://host[:port] or https://host[:port], got {text!r}")
    authority = parse_authority(rest)
    return Origin(scheme, authority.host, authority.port or _DEFAULT_PORTS[scheme])


def default_port(scheme: str) -> int:
    """80 for http, 443 for https."""
    return _DEFAULT_PORTS[scheme]


def is_loopback(host: str) -> bool:
    """Whether C{host} (an address or C{localhost}) is this machine only."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ipv6(inside: str, text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(inside))
    except ValueError:
        raise ValueError(f"expected an IPv6 address inside [], got {text!r}") from None
