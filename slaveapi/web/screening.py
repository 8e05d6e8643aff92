"""
What a request must show in its headers before SlaveAPI reads anything else.

A C{Host} this service answers to (so that a DNS-rebinding page cannot reach
it through a name it never claimed), an C{Origin} it trusts (so that a web
page elsewhere cannot make it act), and a body no larger than
C{[server] max_body}. Every check is a pure function of header values, the
local address the request arrived on and the configuration; each returns the
L{HTTPProblem} to answer, or C{None}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slaveapi.hostnames import Authority, Origin, default_port, is_loopback, parse_authority, parse_origin
from slaveapi.web.errors import HTTPProblem

#: The names of this machine a browser on it may use, whichever loopback address was dialled.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Arrival:
    """
    Where a request arrived: the local address and port of its connection
    (C{None} for a UNIX socket, which no browser can reach), and whether it
    came over TLS.
    """

    host: str | None
    port: int | None
    secure: bool

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"


def check_host(
    raw: Sequence[bytes] | None, arrival: Arrival, server_names: Sequence[str]
) -> tuple[Authority | None, HTTPProblem | None]:
    """
    The request's C{Host}, and the problem if this service does not answer to it.

    Served are: the local address the connection arrived on, with its port;
    on loopback also C{localhost}, C{127.0.0.1} and C{[::1]} with that port;
    and every C{[server] server_names} entry (C{*} for any host, C{*.domain}
    for its subdomains, C{name} on any port, C{name:port} on that port). A
    request without C{Host} (HTTP/1.0) is served: browsers always send one.
    """
    if not raw:
        return None, None
    if len(raw) > 1:
        return None, HTTPProblem(400, "bad_request", "Host: expected one Host header, got several")
    text = raw[0].decode("latin-1")
    try:
        authority = parse_authority(text)
    except ValueError:
        return None, HTTPProblem(400, "bad_request", f"Host: expected host[:port], got {text[:80]!r}")
    if arrival.host is None or _is_served(authority, arrival, server_names):
        return authority, None
    return authority, HTTPProblem(
        421,
        "misdirected_request",
        f"Host: this service does not answer to {str(authority)[:80]!r}; "
        "expected its listening address or a name in [server] server_names",
    )


def check_origin(
    raw: Sequence[bytes] | None, host: Authority | None, arrival: Arrival, allowed_origins: Sequence[str]
) -> tuple[Origin | None, HTTPProblem | None]:
    """
    A foreign origin the configuration trusts (for CORS answers), and the
    problem if the request comes from an origin it does not.

    No C{Origin} is fine (not a browser, or a plain navigation). This
    service's own origin (its scheme and the C{Host} asked for) and the
    origins in C{[auth] allowed_origins} are trusted; any other, C{null}
    included, is refused.
    """
    if not raw:
        return None, None
    text = raw[-1].decode("latin-1")
    refused = HTTPProblem(
        403,
        "forbidden_origin",
        f"Origin: requests from {text[:80]!r} are not accepted; "
        "expected this service's own origin or one in [auth] allowed_origins",
    )
    if len(raw) > 1:
        return None, refused
    try:
        origin = parse_origin(text)
    except ValueError:
        return None, refused
    if origin == _own_origin(host, arrival):
        return None, None
    if str(origin) in allowed_origins:
        return origin, None
    return None, refused


def check_length(length: int | None, received: int, max_body: int) -> HTTPProblem | None:
    """
    A 413 when the body announced (C{length}, C{None} when chunked) or
    received so far is larger than C{max_body} bytes.
    """
    size = max(length or 0, received)
    if size <= max_body:
        return None
    said = f"Content-Length {length}" if length is not None and length > max_body else "more"
    return HTTPProblem(413, "payload_too_large", f"request body: expected at most {max_body} bytes, got {said}")


def _is_served(authority: Authority, arrival: Arrival, server_names: Sequence[str]) -> bool:
    port = authority.port if authority.port is not None else default_port(arrival.scheme)
    if port == arrival.port:
        own = {arrival.host, *(LOOPBACK_NAMES if arrival.host and is_loopback(arrival.host) else ())}
        if authority.host in own:
            return True
    return any(_matches(entry, authority.host, port) for entry in server_names)


def _matches(entry: str, host: str, port: int) -> bool:
    if entry == "*":
        return True
    wildcard = entry.startswith("*.")
    pattern = parse_authority(entry[2:] if wildcard else entry)
    if pattern.port is not None and pattern.port != port:
        return False
    if wildcard:
        return host.endswith("." + pattern.host)
    return host == pattern.host


def _own_origin(host: Authority | None, arrival: Arrival) -> Origin | None:
    scheme = arrival.scheme
    if host is not None:
        return Origin(scheme, host.host, host.port if host.port is not None else default_port(scheme))
    if arrival.host is None or arrival.port is None:
        return None
    return Origin(scheme, arrival.host, arrival.port)
