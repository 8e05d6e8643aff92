"""
SlaveAPI acts only on machines it knows, end to end: POSTs over HTTP to
SlaveAPI serving its lab in this process, with the lab watched from behind
the API (SSH connections, power changes) and a listener of the test's own
standing in for a host a requester controls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread

from slaveapi.clients.dns import DNSClient
from slaveapi.lab.machines import LabMachine
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: A loopback address no lab machine has: the requester's own host.
INTRUDER_IP = "127.0.99.1"
WAIT = "60"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("known")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


class _Recorder(Factory):
    """Counts the connections made to it (and closes them)."""

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connections += 1
        return Protocol()


class _PowerLog:
    """Every machine the lab's power control took down or brought up."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def machine_down(self, machine: LabMachine) -> None:
        self.events.append(("down", machine.name))

    def machine_up(self, machine: LabMachine) -> None:
        self.events.append(("up", machine.name))


@pytest.fixture
def recorder(lab_service: RunningService) -> Any:
    """A listener on the SSH port of an address the lab does not use: the requester's host."""
    from twisted.internet import reactor

    factory = _Recorder()
    port = reactor.listenTCP(lab_service.lab.ssh_port, factory, interface=INTRUDER_IP)  # type: ignore[arg-type]  # Twisted's ServerFactory generics
    yield factory
    port.stopListening()


def _resolver(service: RunningService) -> DNSClient:
    from twisted.internet import reactor

    return DNSClient(reactor, service.lab.domain, (("127.0.0.1", service.lab.dns_port),), 2.0)


async def _post(service: RunningService, slave: str, action: str, waittime: str = WAIT) -> tuple[int, Any]:
    return await request_json("POST", f"{service.url}/slaves/{slave}/actions/{action}", data={"waittime": waittime})


async def _instance_ids(service: RunningService) -> set[str]:
    """Every instance the lab's EC2 has, in any state, straight from EC2."""
    ec2 = service.lab.ec2
    assert ec2 is not None

    def look() -> set[str]:
        client = boto3.client(
            "ec2", region_name=ec2.region, endpoint_url=ec2.endpoint_url,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        return {i["InstanceId"] for r in client.describe_instances()["Reservations"] for i in r["Instances"]}

    return await deferToThread(look)


def _unknown(name: str) -> dict[str, str]:
    return {
        "error": "not_found",
        "msg": f"slave: no machine named {name} is known to slavealloc, devices or the loaner patterns",
    }


@pytest_twisted.ensureDeferred
async def test_a_name_only_dns_knows_is_404_and_nothing_is_contacted(
    lab_service: RunningService, recorder: _Recorder
) -> None:
    lab = lab_service.lab
    fqdn = f"intruder.{lab.domain}"
    lab.dns.add_address(fqdn, INTRUDER_IP)
    try:
        found = await _resolver(lab_service).lookup_host(fqdn)
        assert found is not None and found.ip == INTRUDER_IP
        for name in ("intruder", fqdn):
            for action in ("buildslave_uptime", "buildslave_last_activity", "reboot", "shutdown_buildslave", "disable"):
                assert await _post(lab_service, name, action) == (404, _unknown(name))
            code, body = await request_json("GET", f"{lab_service.url}/slaves/{name}")
            assert (code, body) == (404, _unknown(name))
    finally:
        lab.dns.remove_address(fqdn, INTRUDER_IP)
    assert recorder.connections == 0
    # Nothing was recorded for it either.
    code, everything = await request_json("GET", f"{lab_service.url}/results")
    assert code == 200 and not {"intruder", fqdn} & set(everything)


@pytest_twisted.ensureDeferred
async def test_reboot_of_a_known_short_name_in_another_domain_is_404_and_touches_nothing(
    lab_service: RunningService,
) -> None:
    lab = lab_service.lab
    # This machine's SSH refuses logins: a reboot would power-cycle it through its BMC.
    machine = lab.machine("bld-linux64-lab-006")
    power = _PowerLog()
    lab.power.add_observer(power)
    booted_at = machine.booted_at
    connections = dict(lab.ssh.connections_made)
    for name in (f"{machine.name}.other.example", f"{machine.name}.{lab.domain}.other.example"):
        assert await _post(lab_service, name, "reboot") == (404, _unknown(name))
    assert power.events == []
    assert machine.up and machine.booted_at == booted_at
    assert lab.ssh.connections_made == connections
    code, listing = await request_json("GET", f"{lab_service.url}/slaves/{machine.name}/actions/reboot")
    assert (code, listing) == (200, {"reboot": {}})


@pytest_twisted.ensureDeferred
async def test_a_machine_asked_for_in_its_own_domain_is_filed_under_its_slavealloc_name(
    lab_service: RunningService,
) -> None:
    lab = lab_service.lab
    machine = lab.machine("bld-linux64-lab-001")
    asked = f"BLD-Linux64-Lab-001.{lab.domain}"
    code, result = await _post(lab_service, asked, "buildslave_uptime")
    assert (code, result["state"]) == (200, 2), result
    assert isinstance(result["text"], int)
    requestid = str(result["requestid"])
    for name in (machine.name, asked, machine.fqdn):
        code, listing = await request_json("GET", f"{lab_service.url}/slaves/{name}/actions/buildslave_uptime")
        assert code == 200 and requestid in listing["buildslave_uptime"]
    code, everything = await request_json("GET", f"{lab_service.url}/results")
    assert requestid in everything[machine.name]["buildslave_uptime"]
    assert asked not in everything and machine.fqdn not in everything


@pytest_twisted.ensureDeferred
async def test_address_style_names_are_404_and_share_nothing(
    lab_service: RunningService, recorder: _Recorder
) -> None:
    names = ["127.0.99.1", "127.0.99.2", "10.1.2.3", "10.9.8.7"]
    answers = await gatherResults([Deferred.fromCoroutine(_post(lab_service, name, "reboot", "0")) for name in names])
    assert answers == [(404, _unknown(name)) for name in names]
    code, everything = await request_json("GET", f"{lab_service.url}/results")
    assert code == 200 and not set(names) & set(everything) and "127" not in everything and "10" not in everything
    assert recorder.connections == 0


@pytest_twisted.ensureDeferred
async def test_create_for_a_name_that_is_no_loaners_is_404_and_asks_ec2_and_inventory_nothing(
    lab_service: RunningService,
) -> None:
    lab = lab_service.lab
    records_before = list(lab.inventory_dns.find())
    instances_before = await _instance_ids(lab_service)
    assert instances_before
    for name in ("wpad", f"wpad.{lab.domain}", "bld-linux64-lab-001", "dev-linux64-ec2-x.other.example"):
        code, body = await request_json(
            "POST",
            f"{lab_service.url}/slaves/{name}/actions/aws_create_instance",
            data={"email": "mallory@example.com", "bug": "1", "instance_type": "build", "waittime": WAIT},
        )
        assert code == 404, body
        assert body["error"] == "not_found"
        assert body["msg"].startswith(f"slave: {name} is not a loaner name; expected 'default' or a name matching")
        code, listing = await request_json("GET", f"{lab_service.url}/slaves/{name}/actions/aws_create_instance")
        assert (code, listing) == (200, {"aws_create_instance": {}})
    assert list(lab.inventory_dns.find()) == records_before
    assert await _instance_ids(lab_service) == instances_before


@pytest_twisted.ensureDeferred
async def test_concurrent_disables_of_one_machine_share_one_request(lab_service: RunningService) -> None:
    lab = lab_service.lab
    name = "bld-linux64-lab-010"
    # Hold its commands: the disable cannot finish until the test lets it.
    lab.ssh.hold(name)
    try:
        answers = await gatherResults(
            [Deferred.fromCoroutine(_post(lab_service, name, "disable", "0")) for _ in range(4)]
        )
        assert {code for code, _ in answers} == {202}
        assert len({result["requestid"] for _, result in answers}) == 1
    finally:
        lab.ssh.release(name)
    requestid = answers[0][1]["requestid"]
    # Joining the running disable and waiting for its end.
    code, done = await _post(lab_service, name, "disable", "120")
    assert (code, done["requestid"]) == (200, requestid), done
    code, listing = await request_json("GET", f"{lab_service.url}/slaves/{name}/actions/disable")
    assert list(listing["disable"]) == [str(requestid)]
    assert not lab.machine(name).enabled


@pytest_twisted.ensureDeferred
async def test_reads_of_one_machine_share_a_running_request(lab_service: RunningService) -> None:
    lab = lab_service.lab
    name = "tst-linux64-lab-002"
    lab.ssh.hold(name)
    try:
        for action in ("buildslave_uptime", "buildslave_last_activity"):
            answers = await gatherResults(
                [Deferred.fromCoroutine(_post(lab_service, name, action, "0")) for _ in range(3)]
            )
            assert {code for code, _ in answers} == {202}
            assert len({result["requestid"] for _, result in answers}) == 1
    finally:
        lab.ssh.release(name)
    for action in ("buildslave_uptime", "buildslave_last_activity"):
        code, done = await _post(lab_service, name, action)
        assert (code, done["state"]) == (200, 2), done
