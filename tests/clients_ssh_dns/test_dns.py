"""
Tests for slaveapi.clients.dns against a real DNS server on loopback.

The server is twisted.names' own authoritative server (DNSServerFactory over
UDP) with in-memory zones built here, so queries and answers cross a real UDP
socket exactly as they would with BIND.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import DatagramProtocol
from twisted.names import authority, common, dns, server
from twisted.names.error import DomainError

from slaveapi.clients.dns import DNSClient, DNSError, HostInfo

reactor: Any = _reactor

DOMAIN = "build.scl3.lab.example"
OTHER = "other.example"


class _MemoryAuthority(authority.FileAuthority):
    """An authoritative zone whose records are given in memory instead of a file."""

    def __init__(self, origin: str, records: dict[str, list[Any]]) -> None:
        self._origin = origin
        self._given = records
        super().__init__(origin)

    soa: Any
    records: Any

    def loadFile(self, filename: str) -> None:
        origin = self._origin.encode("ascii")
        soa = dns.Record_SOA(
            mname=b"ns." + origin, rname=b"hostmaster." + origin, serial=1, refresh=60, retry=60, expire=60, minimum=60
        )
        self.soa = (origin, soa)
        self.records = {origin: [soa]}
        for name, records in self._given.items():
            self.records.setdefault(name.lower().encode("ascii"), []).extend(records)


class _BrokenAuthority(common.ResolverBase):
    """Fails internally for C{broken.<DOMAIN>} (the server answers SERVFAIL); knows no other name."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        if name.lower() == f"broken.{DOMAIN}".encode():
            return fail(RuntimeError("zone data unavailable"))
        return fail(DomainError(name))


def _zones() -> list[Any]:
    lab = _MemoryAuthority(
        DOMAIN,
        {
            f"b-1.{DOMAIN}": [dns.Record_A("127.0.1.1")],
            f"b-1-mgmt.{DOMAIN}": [dns.Record_A("127.0.2.1")],
            f"b-2.{DOMAIN}": [dns.Record_A("127.0.1.2")],
            f"alias.{DOMAIN}": [dns.Record_CNAME(f"b-1.{DOMAIN}".encode())],
            f"outside.{DOMAIN}": [dns.Record_CNAME(f"far.{OTHER}".encode())],
            f"dangling.{DOMAIN}": [dns.Record_CNAME(f"missing.{OTHER}".encode())],
            f"loop-a.{DOMAIN}": [dns.Record_CNAME(f"loop-b.{OTHER}".encode())],
            f"textonly.{DOMAIN}": [dns.Record_TXT(b"no address here")],
        },
    )
    other = _MemoryAuthority(
        OTHER,
        {
            f"far.{OTHER}": [dns.Record_A("127.0.3.1")],
            f"loop-b.{OTHER}": [dns.Record_CNAME(f"loop-a.{DOMAIN}".encode())],
            OTHER: [dns.Record_A("127.0.3.9")],
        },
    )
    reverse = _MemoryAuthority(
        "127.in-addr.arpa",
        {
            "1.1.0.127.in-addr.arpa": [dns.Record_PTR(f"b-1.{DOMAIN}".encode())],
            "1.3.0.127.in-addr.arpa": [dns.Record_PTR(f"far.{OTHER}.".encode())],
        },
    )
    return [_BrokenAuthority(), lab, other, reverse]


@pytest.fixture
def dns_port() -> Iterator[int]:
    """A twisted.names authoritative server for the test zones on a free loopback UDP port."""
    factory = server.DNSServerFactory(authorities=_zones())
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1")
    yield port.getHost().port
    port.stopListening()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback UDP port that swallows every datagram: a DNS server that never answers."""
    port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    yield port.getHost().port
    port.stopListening()


@pytest.fixture
def resolver(dns_port: int) -> DNSClient:
    # Generous: the server is in this process and answers at once; a busy machine must not make it "time out".
    return DNSClient(reactor, DOMAIN, (("127.0.0.1", dns_port),), timeout=30.0)


def test_qualify_adds_default_domain_only_to_short_names() -> None:
    client = DNSClient(reactor, DOMAIN + ".", (("127.0.0.1", 53),), timeout=1.0)
    assert client.qualify("b-1") == f"b-1.{DOMAIN}"
    assert client.qualify(f"b-1.{OTHER}") == f"b-1.{OTHER}"
    assert client.qualify("b-1.") == "b-1."


@pytest_twisted.ensureDeferred
async def test_lookup_host_short_name(resolver: DNSClient) -> None:
    info = await resolver.lookup_host("b-1")
    assert info == HostInfo(name="b-1", fqdn=f"b-1.{DOMAIN}", domain=DOMAIN, ip="127.0.1.1", colo="scl3")


@pytest_twisted.ensureDeferred
async def test_lookup_host_fully_qualified(resolver: DNSClient) -> None:
    info = await resolver.lookup_host(f"b-2.{DOMAIN}")
    assert info == HostInfo(name="b-2", fqdn=f"b-2.{DOMAIN}", domain=DOMAIN, ip="127.0.1.2", colo="scl3")


@pytest_twisted.ensureDeferred
async def test_lookup_host_follows_cname_in_zone(resolver: DNSClient) -> None:
    info = await resolver.lookup_host("alias")
    assert info == HostInfo(name="alias", fqdn=f"b-1.{DOMAIN}", domain=DOMAIN, ip="127.0.1.1", colo="scl3")


@pytest_twisted.ensureDeferred
async def test_lookup_host_follows_cname_out_of_zone(resolver: DNSClient) -> None:
    # The server answers only the CNAME (its target is another zone): the
    # client asks for the target itself.
    info = await resolver.lookup_host("outside")
    assert info == HostInfo(name="outside", fqdn=f"far.{OTHER}", domain=OTHER, ip="127.0.3.1", colo="far")


@pytest_twisted.ensureDeferred
async def test_colo_is_none_for_two_labels(resolver: DNSClient) -> None:
    info = await resolver.lookup_host(OTHER)
    assert info == HostInfo(name="other", fqdn=OTHER, domain="example", ip="127.0.3.9", colo=None)


@pytest_twisted.ensureDeferred
async def test_missing_names_are_none(resolver: DNSClient) -> None:
    assert await resolver.lookup_host("nope") is None  # NXDOMAIN
    assert await resolver.lookup_host("textonly") is None  # exists, no A record
    assert await resolver.lookup_host("dangling") is None  # CNAME to a missing name
    assert await resolver.lookup_host("loop-a") is None  # CNAME loop
    assert await resolver.resolves("nope") is False
    assert await resolver.resolves("b-2") is True


@pytest_twisted.ensureDeferred
async def test_ipmi_name(resolver: DNSClient) -> None:
    assert await resolver.ipmi_name("b-1") == f"b-1-mgmt.{DOMAIN}"
    assert await resolver.ipmi_name(f"b-1.{DOMAIN}") == f"b-1-mgmt.{DOMAIN}"
    assert await resolver.ipmi_name("b-2") is None


@pytest_twisted.ensureDeferred
async def test_reverse(resolver: DNSClient) -> None:
    assert await resolver.reverse("127.0.1.1") == f"b-1.{DOMAIN}"
    assert await resolver.reverse("127.0.3.1") == f"far.{OTHER}"
    assert await resolver.reverse("127.0.9.9") is None
    with pytest.raises(ValueError):
        await resolver.reverse("not-an-ip")


@pytest_twisted.ensureDeferred
async def test_timeout_is_an_error_not_a_missing_name(silent_port: int) -> None:
    client = DNSClient(reactor, DOMAIN, (("127.0.0.1", silent_port),), timeout=0.2)
    with pytest.raises(DNSError) as caught:
        await client.lookup_host("b-1")
    # An error, not the None of a missing name: the silent server can only time out.
    assert str(caught.value) == f"DNS A query for b-1.{DOMAIN} to 127.0.0.1:{silent_port} timed out after 0.2s"
    with pytest.raises(DNSError) as caught_ptr:
        await client.reverse("127.0.1.1")
    assert str(caught_ptr.value) == (
        f"DNS PTR query for 1.1.0.127.in-addr.arpa to 127.0.0.1:{silent_port} timed out after 0.2s"
    )


@pytest_twisted.ensureDeferred
async def test_server_failure_is_an_error(resolver: DNSClient, dns_port: int) -> None:
    with pytest.raises(DNSError) as caught:
        await resolver.lookup_host("broken")
    assert str(caught.value) == f"DNS A query for broken.{DOMAIN} to 127.0.0.1:{dns_port} failed: DNSServerError"


@pytest_twisted.ensureDeferred
async def test_second_server_answers_when_first_is_silent(silent_port: int, dns_port: int) -> None:
    # The timeout is per server, so the answering one gets it too: long enough for a busy machine.
    client = DNSClient(reactor, DOMAIN, (("127.0.0.1", silent_port), ("127.0.0.1", dns_port)), timeout=1.0)
    info = await client.lookup_host("b-1")
    assert info is not None and info.ip == "127.0.1.1"
