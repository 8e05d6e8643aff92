"""The lab's DNS server, queried over UDP and TCP with twisted.names' own client."""

from __future__ import annotations

from typing import cast

import pytest
import pytest_twisted
from twisted.names import client, dns, error

from slaveapi.lab import Lab

DOMAIN = "build.scl3.slaveapi.test"


def _resolver(lab: Lab) -> client.Resolver:
    return client.Resolver(servers=[("127.0.0.1", lab.dns_port)], timeout=(2,))


def _payloads(answers: list[dns.RRHeader], kind: int) -> list[str]:
    found = []
    for record in answers:
        if record.type == kind == dns.A:
            found.append(cast(dns.Record_A, record.payload).dottedQuad())
        elif record.type == kind:
            found.append(cast(dns.Record_PTR, record.payload).name.name.decode())
    return found


@pytest_twisted.ensureDeferred
async def test_a_records_for_machines_bmcs_masters_and_others(lab: Lab) -> None:
    resolver = _resolver(lab)
    expected = {
        f"bld-linux64-lab-001.{DOMAIN}": "127.0.1.1",
        f"t-w864-lab-004.{DOMAIN}": "127.0.1.4",
        f"panda-0008.{DOMAIN}": "127.0.1.8",
        f"t-linux64-lab-007.{DOMAIN}": "127.0.1.7",  # off, but still in DNS
        f"bld-linux64-lab-001-mgmt.{DOMAIN}": "127.1.1.1",
        f"bld-linux64-lab-006-mgmt.{DOMAIN}": "127.1.1.6",
        f"bm01.{DOMAIN}": "127.0.0.1",
        f"bm04.{DOMAIN}": "127.0.0.1",
        f"pdu1.{DOMAIN}": "127.2.0.1",
        f"foopy01.{DOMAIN}": "127.3.0.1",
        f"mobile-imaging-001.{DOMAIN}": "127.0.0.1",
        lab.fleet.machines[11].fqdn.upper(): "127.0.1.12",
    }
    for name, address in expected.items():
        answers, _authority, _additional = await resolver.lookupAddress(name)
        assert _payloads(answers, dns.A) == [address], name
        assert all(record.auth for record in answers)


@pytest_twisted.ensureDeferred
async def test_tcp_answers_too(lab: Lab) -> None:
    resolver = _resolver(lab)
    query = dns.Query(f"t-yosemite-r7-lab-003.{DOMAIN}".encode(), dns.A, dns.IN)
    message = await resolver.queryTCP([query], timeout=2)
    assert [record.payload.dottedQuad() for record in message.answers] == ["127.0.1.3"]


@pytest_twisted.ensureDeferred
async def test_ptr_records(lab: Lab) -> None:
    resolver = _resolver(lab)
    expected = {
        "1.1.0.127.in-addr.arpa": f"bld-linux64-lab-001.{DOMAIN}",
        "4.1.0.127.in-addr.arpa": f"t-w864-lab-004.{DOMAIN}",
        "1.1.1.127.in-addr.arpa": f"bld-linux64-lab-001-mgmt.{DOMAIN}",
        "1.0.2.127.in-addr.arpa": f"pdu1.{DOMAIN}",
        "1.0.0.127.in-addr.arpa": f"ns1.{DOMAIN}",
    }
    for name, target in expected.items():
        answers, _, _ = await resolver.lookupPointer(name)
        assert _payloads(answers, dns.PTR) == [target], name


@pytest_twisted.ensureDeferred
async def test_cname_and_ns(lab: Lab) -> None:
    resolver = _resolver(lab)
    answers, _, _ = await resolver.lookupAddress(f"buildbot-canary.{DOMAIN}")
    assert _payloads(answers, dns.CNAME) == [f"bld-linux64-lab-001.{DOMAIN}"]
    assert _payloads(answers, dns.A) == ["127.0.1.1"]
    assert await resolver.getHostByName(f"buildbot-canary.{DOMAIN}") == "127.0.1.1"
    answers, _, _ = await resolver.lookupNameservers(DOMAIN)
    assert _payloads(answers, dns.NS) == [f"ns1.{DOMAIN}"]


@pytest_twisted.ensureDeferred
async def test_unknown_names_are_nxdomain(lab: Lab) -> None:
    resolver = _resolver(lab)
    for name in (
        f"bld-linux64-lab-999.{DOMAIN}",
        f"tst-linux64-lab-002-mgmt.{DOMAIN}",  # no BMC
        "99.99.0.127.in-addr.arpa",
        "www.example.com",
    ):
        with pytest.raises(error.DNSNameError):
            await resolver.lookupAddress(name)


@pytest_twisted.ensureDeferred
async def test_no_data_for_a_known_name(lab: Lab) -> None:
    answers, authority, _ = await _resolver(lab).lookupMailExchange(f"bld-linux64-lab-001.{DOMAIN}")
    assert answers == []
    assert [record.type for record in authority] == [dns.SOA]


@pytest_twisted.ensureDeferred
async def test_records_added_and_removed_at_run_time(lab: Lab) -> None:
    name = f"dev-linux64-ec2-loaner1.{DOMAIN}"
    lab.dns.add_address(name, "127.0.9.9")
    answers, _, _ = await _resolver(lab).lookupAddress(name)
    assert _payloads(answers, dns.A) == ["127.0.9.9"]
    answers, _, _ = await _resolver(lab).lookupPointer("9.9.0.127.in-addr.arpa")
    assert _payloads(answers, dns.PTR) == [name]
    lab.dns.remove_address(name, "127.0.9.9")
    with pytest.raises(error.DNSNameError):
        await _resolver(lab).lookupAddress(name)
    with pytest.raises(error.DNSNameError):
        await _resolver(lab).lookupPointer("9.9.0.127.in-addr.arpa")
