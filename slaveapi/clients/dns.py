"""
DNS client: a machine's canonical name, address and colo, its C{-mgmt} name.

Like the 2015 resolver, a short slave name is qualified with the default
domain, CNAMEs are followed to the canonical name, and the colo is read from
the canonical name (C{b-1.build.scl3.mozilla.com} is in C{scl3}). Lookups go
through twisted.names, so they never block the reactor, and every call is
bounded: a server that does not answer raises L{DNSError}, which callers can
tell apart from "this name does not exist" (C{None}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError, DomainError
from zope.interface import implementer

from slaveapi.clients._errors import ClientError
from slaveapi.interfaces import IDNS

# How many CNAMEs we follow before deciding the chain is a loop.
_MAX_CNAME_HOPS = 8

# resolv.conf lists at most this many servers; the system resolver's overall
# bound allows one try of each.
_SYSTEM_SERVERS = 3


class DNSError(ClientError):
    """A lookup failed (no answer in time, server failure), as opposed to a name that does not exist."""


@dataclass(frozen=True)
class HostInfo:
    """
    What DNS says about one machine.

    @ivar name: the first label of the name looked up (the slave's short name).
    @ivar fqdn: the canonical name, after following CNAMEs, without a trailing dot.
    @ivar domain: C{fqdn} without its first label.
    @ivar ip: the (first) IPv4 address of C{fqdn}.
    @ivar colo: the third label from the right of C{fqdn}; C{None} when it has
        fewer than three labels.
    """

    name: str
    fqdn: str
    domain: str
    ip: str
    colo: str | None


def host_info(asked: str, fqdn: str, ip: str) -> HostInfo:
    """What DNS says of C{fqdn} at C{ip}, asked as C{asked} (its colo: the third label from the right)."""
    labels = fqdn.split(".")
    return HostInfo(
        name=asked.split(".", 1)[0],
        fqdn=fqdn,
        domain=".".join(labels[1:]),
        ip=ip,
        colo=labels[-3] if len(labels) >= 3 else None,
    )


def _text(name: dns.Name) -> str:
    return name.name.decode("ascii", errors="replace").rstrip(".")


def _payload(record: dns.RRHeader) -> Any:
    """The record data (Record_A, Record_CNAME, Record_PTR...) of an answer."""
    return record.payload


@implementer(IDNS)
class DNSClient:
    """
    Name lookups against the configured servers, or the system's resolver.

    @param reactor: the reactor the overall per-call bounds are timed on.
    @param default_domain: appended to names without a dot.
    @param servers: (host, port) of the servers to ask, in order; empty means
        the system's C{resolv.conf} (and C{/etc/hosts}).
    @param timeout: seconds to wait for each server's answer; each server is
        tried once.
    """

    _log = Logger()

    def __init__(
        self, reactor: Any, default_domain: str, servers: tuple[tuple[str, int], ...], timeout: float
    ) -> None:
        self._reactor = reactor
        self._default_domain = default_domain.strip(".")
        self._timeout = timeout
        if servers:
            self._resolver: Any = client.Resolver(servers=list(servers), reactor=reactor)
            self._server_text = ", ".join(f"{host}:{port}" for host, port in servers)
            server_count = len(servers)
        else:
            self._resolver = client.createResolver()
            self._server_text = "the system resolver"
            server_count = _SYSTEM_SERVERS
        # twisted.names tries each server once for `timeout`; a truncated
        # answer retried over TCP gets one more `timeout` on top.
        self._bound = timeout * (server_count + 1)

    def qualify(self, name: str) -> str:
        """C{name} itself if it has a dot, else C{name.<default_domain>}."""
        if "." in name:
            return name
        return f"{name}.{self._default_domain}"

    async def _query(
        self, kind: str, name: str, lookup: Callable[..., Deferred[Any]]
    ) -> list[dns.RRHeader] | None:
        """
        One query, bounded; the answer section, or C{None} if the name does not exist.

        @raise DNSError: no answer in time, or the server failed or refused.
        """
        deferred = lookup(name, timeout=(self._timeout,))
        deferred.addTimeout(self._bound, self._reactor)
        try:
            answers, _authority, _additional = await deferred
        except (DNSNameError, AuthoritativeDomainError):
            return None
        except DomainError as error:
            if type(error) is DomainError:
                # A resolver chain's "nobody knows this name".
                return None
            raise DNSError(
                f"DNS {kind} query for {name} to {self._server_text} failed: {type(error).__name__}"
            ) from None
        except (DeferredTimeoutError, TimeoutError):
            self._log.warn(
                "DNS {kind} query for {name} to {servers} timed out", kind=kind, name=name, servers=self._server_text
            )
            raise DNSError(
                f"DNS {kind} query for {name} to {self._server_text} timed out after {self._timeout:g}s"
            ) from None
        except CancelledError:
            raise
        except Exception as error:
            first_line = (str(error).splitlines() or [""])[0]
            raise DNSError(
                f"DNS {kind} query for {name} to {self._server_text} failed: "
                f"{type(error).__name__} {first_line}".rstrip()
            ) from None
        return list(answers)

    async def lookup_host(self, name: str) -> HostInfo | None:
        """
        The canonical name and address of C{name} (qualified first).

        @return: C{None} when the name does not exist or has no A record.
        @raise DNSError: no answer in time, or the server failed.
        """
        target = self.qualify(name).rstrip(".")
        seen = set()
        for _hop in range(_MAX_CNAME_HOPS):
            seen.add(target.lower())
            answers = await self._query("A", target, self._resolver.lookupAddress)
            if answers is None:
                return None
            canonical, ip = self._follow(target, answers)
            if ip is not None:
                self._log.debug("DNS {name} is {fqdn} at {ip}", name=name, fqdn=canonical, ip=ip)
                return host_info(name, canonical, ip)
            if canonical.lower() == target.lower() or canonical.lower() in seen:
                # No address, and no CNAME leading anywhere new.
                return None
            # The server gave the CNAME but not its target's address (the
            # target is outside its zone): ask for the target itself.
            target = canonical
        raise DNSError(
            f"DNS A query for {name} to {self._server_text} failed: CNAME chain longer than {_MAX_CNAME_HOPS}"
        )

    @staticmethod
    def _follow(name: str, answers: list[dns.RRHeader]) -> tuple[str, str | None]:
        """Follow the CNAMEs in one answer from C{name}: (canonical name, its address or None)."""
        current = name
        for _hop in range(_MAX_CNAME_HOPS):
            key = current.lower()
            for record in answers:
                if record.type == dns.A and _text(record.name).lower() == key:
                    return current, _payload(record).dottedQuad()
            cnames = [r for r in answers if r.type == dns.CNAME and _text(r.name).lower() == key]
            if not cnames:
                break
            current = _text(_payload(cnames[0]).name)
        return current, None

    async def resolves(self, name: str) -> bool:
        """Whether C{name} (qualified) has an address."""
        return await self.lookup_host(name) is not None

    async def reverse(self, ip: str) -> str | None:
        """
        The name a PTR record gives for C{ip} (IPv4 or IPv6), without a trailing dot.

        @raise ValueError: C{ip} is not an IP address.
        """
        pointer = ipaddress.ip_address(ip).reverse_pointer
        answers = await self._query("PTR", pointer, self._resolver.lookupPointer)
        for record in answers or ():
            if record.type == dns.PTR:
                return _text(_payload(record).name)
        return None

    async def ipmi_name(self, name: str) -> str | None:
        """C{<short name>-mgmt.<default domain>} when that name resolves, else C{None}."""
        short = name.split(".", 1)[0]
        mgmt = f"{short}-mgmt.{self._default_domain}"
        if await self.resolves(mgmt):
            return mgmt
        return None
