"""
Inventory's DNS records API: the client's A/PTR create and delete against the
lab's fake (mounted in the lab's HTTP server), whose records really resolve
through the lab's DNS server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.web.client import HTTPConnectionPool

from slaveapi.clients.dns import DNSClient
from slaveapi.clients.http import JSONClient, NotFound, RemoteError, make_http_client
from slaveapi.clients.inventory import DNSRecord, InventoryClient
from slaveapi.config import Secret
from slaveapi.lab.bugzilla import BugzillaFake
from slaveapi.lab.dns import LabDNS
from slaveapi.lab.fleet import build_fleet
from slaveapi.lab.http import LabHTTP
from slaveapi.lab.inventory_dns import InventoryDNSFake

DOMAIN = "build.scl3.slaveapi.test"
USER = "lab-inventory"
PASSWORD = "lab-dns-Pässword-1"
FQDN = f"dev-linux64-ec2-jdoe.{DOMAIN}"
IP = "127.0.0.4"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@dataclass
class DNSLab:
    fake: InventoryDNSFake
    url: str
    resolver: DNSClient
    pool: HTTPConnectionPool

    def client(self, password: str = PASSWORD) -> InventoryClient:
        http = JSONClient("inventory", make_http_client(_reactor(), self.pool), 5.0, _reactor())
        return InventoryClient(f"{self.url}/inventory/api", USER, Secret(password), http)


@pytest_twisted.async_yield_fixture
async def lab() -> AsyncIterator[DNSLab]:
    reactor = _reactor()
    fleet = build_fleet(2, DOMAIN, time.time())
    dns = LabDNS(reactor, fleet)
    fake = InventoryDNSFake(dns, USER, PASSWORD)
    http = LabHTTP(reactor, fleet, BugzillaFake(fleet, "k" * 32, "u@example.test", time.time), USER, PASSWORD,
                   inventory_dns=fake)
    port = http.start()
    dns_port = dns.start()
    pool = HTTPConnectionPool(reactor, persistent=False)
    resolver = DNSClient(reactor, DOMAIN, (("127.0.0.1", dns_port),), 2.0)
    yield DNSLab(fake, f"http://127.0.0.1:{port}", resolver, pool)
    await pool.closeCachedConnections()
    await http.stop()
    await dns.stop()


@pytest_twisted.ensureDeferred
async def test_a_and_ptr_records_are_made_and_resolve(lab: DNSLab) -> None:
    client = lab.client()
    assert await lab.resolver.lookup_host(FQDN) is None
    assert await lab.resolver.reverse(IP) is None
    a = await client.create_address_record(FQDN, IP, "bug 123: loaner for jdoe")
    ptr = await client.create_ptr_record(FQDN, IP, "bug 123: loaner for jdoe")
    assert (a, ptr) == (DNSRecord("A", 1, FQDN, IP), DNSRecord("PTR", 2, FQDN, IP))
    assert a.resource == "addressrecord" and ptr.resource == "ptr"
    host = await lab.resolver.lookup_host(FQDN)
    assert host is not None and (host.fqdn, host.ip) == (FQDN, IP)
    assert await lab.resolver.reverse(IP) == FQDN
    # What went over the wire, as the API keeps it.
    assert lab.fake.records[1].to_json() == {
        "id": 1, "fqdn": FQDN, "ip_str": IP, "ip_type": "4", "views": ["private"],
        "description": "bug 123: loaner for jdoe", "ttl": None,
        "resource_uri": "/en-US/mozdns/api/v1_dns/addressrecord/1/",
    }
    assert lab.fake.records[2].to_json()["name"] == FQDN


@pytest_twisted.ensureDeferred
async def test_deleting_the_records_takes_the_name_away(lab: DNSLab) -> None:
    client = lab.client()
    a = await client.create_address_record(FQDN, IP, "bug 1: loaner for jdoe")
    ptr = await client.create_ptr_record(FQDN, IP, "bug 1: loaner for jdoe")
    await client.delete_dns_record(ptr)
    # The A record alone still publishes the name.
    assert (await lab.resolver.lookup_host(FQDN)) is not None
    await client.delete_dns_record(a)
    assert await lab.resolver.lookup_host(FQDN) is None
    assert await lab.resolver.reverse(IP) is None
    assert lab.fake.records == {}
    with pytest.raises(NotFound) as gone:
        await client.delete_dns_record(a)
    assert str(gone.value) == (
        f"inventory: DELETE {lab.url}/inventory/api/mozdns/api/v1_dns/addressrecord/1/?format=json failed: "
        "HTTP 404 Not Found"
    )


@pytest_twisted.ensureDeferred
async def test_refusals_quote_the_apis_error_messages(lab: DNSLab) -> None:
    client = lab.client()
    await client.create_address_record(FQDN, IP, "first")
    with pytest.raises(RemoteError) as duplicate:
        await client.create_address_record(FQDN, IP, "again")
    assert str(duplicate.value) == (
        f"inventory: POST {lab.url}/inventory/api/mozdns/api/v1_dns/addressrecord/ failed: "
        f"HTTP 400 Bad Request: __all__: An A record for {FQDN} with address {IP} already exists."
    )
    with pytest.raises(RemoteError) as outside:
        await client.create_ptr_record("loaner.elsewhere.example", "127.0.0.9", "x")
    assert str(outside.value).endswith(
        "HTTP 400 Bad Request: name: Could not find an existing domain for loaner.elsewhere.example."
    )


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_refused_without_showing_them(lab: DNSLab) -> None:
    with pytest.raises(RemoteError) as refused:
        await lab.client(password="not-the-password").create_address_record(FQDN, IP, "x")
    assert str(refused.value) == (
        f"inventory: POST {lab.url}/inventory/api/mozdns/api/v1_dns/addressrecord/ failed: HTTP 401 Unauthorized: "
        "bad or missing credentials"
    )
    assert "not-the-password" not in str(refused.value) and PASSWORD not in str(refused.value)
    assert lab.fake.records == {}


@pytest_twisted.ensureDeferred
async def test_records_are_listed_and_filtered(lab: DNSLab) -> None:
    client = lab.client()
    await client.create_address_record(FQDN, IP, "one")
    await client.create_address_record(f"other.{DOMAIN}", "127.0.0.5", "two")
    base = f"{lab.url}/inventory/api/mozdns/api/v1_dns/addressrecord/"
    response = await treq.get(base, params={"fqdn": FQDN}, auth=(USER, PASSWORD), pool=lab.pool)
    body = await response.json()
    assert response.code == 200
    assert body["meta"]["total_count"] == 1
    assert [(o["fqdn"], o["ip_str"]) for o in body["objects"]] == [(FQDN, IP)]
    response = await treq.get(base, auth=(USER, PASSWORD), pool=lab.pool)
    assert [o["id"] for o in (await response.json())["objects"]] == [1, 2]
    response = await treq.get(f"{base}2/", auth=(USER, PASSWORD), pool=lab.pool)
    assert (await response.json())["fqdn"] == f"other.{DOMAIN}"
