"""
The reboot escalation end to end: POSTs over HTTP to SlaveAPI serving its
lab in this process, so the tests can also see what happened in the lab
(machines down and up, bugs filed) and prepare it between requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from slaveapi.lab.bugzilla import LabBug
from slaveapi.lab.machines import SSH_OK, SSH_REFUSE_LOGIN, LabMachine
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: How SlaveAPI names the requester in Bugzilla when authentication is off.
ANONYMOUS = "an anonymous client (authentication is off)"
REBOOT_BUG = ("Infrastructure & Operations", "DCOps")
#: Long enough for any path in the lab (boot time 1 s, short probe bounds).
WAIT = "120"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("reboot")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


async def reboot(service: RunningService, slave: str, waittime: str = WAIT) -> tuple[int, Any]:
    return await request_json(
        "POST", f"{service.url}/slaves/{slave}/actions/reboot", data={"waittime": waittime}
    )


def reboot_bugs(service: RunningService, slave: str) -> list[LabBug]:
    tracking = service.lab.bugzilla.find(slave)
    return [
        bug
        for bug in service.lab.bugzilla.bugs.values()
        if (bug.product, bug.component) == REBOOT_BUG
        and bug.summary == f"{slave} is unreachable"
        and tracking is not None
        and tracking.id in bug.blocks
    ]


@pytest_twisted.ensureDeferred
async def test_a_healthy_machine_reboots_over_ssh(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("bld-linux64-lab-001")
    booted_before = machine.booted_at
    code, result = await reboot(lab_service, machine.name)
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == "Attempting SSH reboot...Success!"
    assert machine.up and machine.booted_at > booted_before
    code, uptime = await request_json(
        "POST", f"{lab_service.url}/slaves/{machine.name}/actions/buildslave_uptime", data={"waittime": "30"}
    )
    assert uptime["state"] == 2 and uptime["text"] < 60


@pytest_twisted.ensureDeferred
async def test_ssh_refusing_logins_escalates_to_ipmi(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("bld-linux64-lab-006")
    booted_before = machine.booted_at
    comments_before = len(lab_service.lab.bugzilla.find(machine.name).comments)
    code, result = await reboot(lab_service, machine.name)
    assert (code, result["state"]) == (200, 2), result
    lines = result["text"].split("\n")
    assert lines[0].startswith("Attempting SSH reboot...Failed (")
    assert "rejected" in lines[0]
    assert lines[1:] == [
        "Skipping Mozpool reboot: no imaging server in inventory.",
        f"Skipping Redfish reboot: the BMC at {machine.mgmt_fqdn} does not speak Redfish.",
        "Attempting IPMI reboot...Success!",
    ]
    assert machine.up and machine.booted_at > booted_before
    # A reboot that worked leaves the problem-tracking bug alone.
    assert len(lab_service.lab.bugzilla.find(machine.name).comments) == comments_before


class _PowerEvents:
    """What the lab's power control saw happen to the machines."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def machine_down(self, machine: LabMachine) -> None:
        self.events.append((machine.name, "down"))

    def machine_up(self, machine: LabMachine) -> None:
        self.events.append((machine.name, "up"))


@pytest_twisted.ensureDeferred
async def test_a_hung_machine_without_bmc_comes_back_by_its_pdu(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("t-linux64-lab-009")
    assert not machine.up
    code, result = await reboot(lab_service, machine.name)
    assert (code, result["state"]) == (200, 2), result
    assert result["text"].split("\n") == [
        "Skipping SSH reboot: the machine does not answer.",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Skipping Redfish reboot: no -mgmt interface in DNS.",
        "Skipping IPMI reboot: no -mgmt interface in DNS.",
        "Attempting PDU reboot...Success!",
    ]
    assert machine.up


@pytest_twisted.ensureDeferred
async def test_a_device_is_power_cycled_by_mozpool(lab_service: RunningService) -> None:
    device = lab_service.lab.machine("panda-0008")
    booted_before = device.booted_at
    code, result = await reboot(lab_service, device.name)
    assert (code, result["state"]) == (200, 2), result
    lines = result["text"].split("\n")
    assert lines[0].startswith("Attempting SSH reboot...Failed (")
    assert lines[1] == "Attempting Mozpool reboot...Success!"
    assert len(lines) == 2
    assert device.up and device.booted_at > booted_before


@pytest_twisted.ensureDeferred
async def test_a_dead_machine_gets_exactly_one_reboot_bug(lab_service: RunningService) -> None:
    name = "t-linux64-lab-007"
    tracking = lab_service.lab.bugzilla.find(name)
    assert tracking is not None and reboot_bugs(lab_service, name) == []
    comments_before = len(tracking.comments)

    code, result = await reboot(lab_service, name)
    assert (code, result["state"]) == (200, 3), result
    lines = result["text"].split("\n")
    assert lines[:5] == [
        "Skipping SSH reboot: the machine does not answer.",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Skipping Redfish reboot: no -mgmt interface in DNS.",
        "Skipping IPMI reboot: no -mgmt interface in DNS.",
        "Attempting PDU reboot...Failed (it did not come back).",
    ]
    filed = reboot_bugs(lab_service, name)
    assert len(filed) == 1
    assert lines[5:] == [f"Filed reboot bug {filed[0].id}."]
    assert len(tracking.comments) == comments_before + 1
    assert tracking.comments[-1].text == (
        result["text"] + f"\n\n(SlaveAPI reboot request {result['requestid']}, requested by {ANONYMOUS}.)"
    )

    code, again = await reboot(lab_service, name)
    assert (code, again["state"]) == (200, 3)
    assert again["text"].endswith(f"{name} already has reboot bug ({filed[0].id}), nothing to do.")
    assert len(reboot_bugs(lab_service, name)) == 1
    assert len(tracking.comments) == comments_before + 1


@pytest_twisted.ensureDeferred
async def test_a_dead_machine_without_tracking_bug_gets_one_and_a_closed_one_is_reopened(
    lab_service: RunningService,
) -> None:
    name = "t-linux64-lab-007"
    bugzilla = lab_service.lab.bugzilla
    # Forget the earlier reboot bug and the tracking bug, as if neither existed.
    for bug in list(bugzilla.bugs.values()):
        if name in bug.alias or bug.summary == f"{name} is unreachable":
            del bugzilla.bugs[bug.id]
    _code, result = await reboot(lab_service, name)
    assert result["state"] == 3
    tracking = bugzilla.find(name)
    assert tracking is not None
    assert (tracking.product, tracking.component, tracking.summary) == (
        "Release Engineering",
        "Buildduty",
        f"{name} problem tracking",
    )
    assert len(reboot_bugs(lab_service, name)) == 1

    # The datacenter closes both; the next failed reboot files anew and reopens tracking.
    for bug in [tracking, *reboot_bugs(lab_service, name)]:
        bug.status, bug.resolution = "RESOLVED", "FIXED"
    _code, result = await reboot(lab_service, name)
    assert result["state"] == 3
    assert tracking.status == "REOPENED"
    assert tracking.comments[-1].text == (
        result["text"] + f"\n\n(SlaveAPI reboot request {result['requestid']}, requested by {ANONYMOUS}.)"
    )
    open_bugs = [bug for bug in reboot_bugs(lab_service, name) if bug.is_open]
    assert len(open_bugs) == 1 and result["text"].endswith(f"Filed reboot bug {open_bugs[0].id}.")


@pytest_twisted.ensureDeferred
async def test_concurrent_reboots_of_one_machine_share_one_request(lab_service: RunningService) -> None:
    name = "bld-linux64-lab-010"
    answers = await gatherResults([Deferred.fromCoroutine(reboot(lab_service, name, waittime="0")) for _ in range(5)])
    assert {code for code, _result in answers} == {202}
    requestids = {result["requestid"] for _code, result in answers}
    assert len(requestids) == 1
    first = requestids.pop()
    # Joining the running reboot and waiting for it.
    code, done = await reboot(lab_service, name)
    assert (code, done["requestid"], done["state"]) == (200, first, 2)
    code, listing = await request_json("GET", f"{lab_service.url}/slaves/{name}/actions/reboot")
    assert list(listing["reboot"]) == [str(first)]
    # Once it finished, a new request is a new reboot.
    code, again = await reboot(lab_service, name)
    assert again["requestid"] != first and again["state"] == 2


@pytest_twisted.ensureDeferred
async def test_a_machine_with_a_redfish_bmc_refusing_ssh_is_rebooted_by_redfish(lab_service: RunningService) -> None:
    # Last in the module: the concurrent-reboot test above expects bld-linux64-lab-010 not rebooted before.
    machine = lab_service.lab.machine("bld-linux64-lab-010")
    assert machine.redfish and machine.up and machine.ssh == SSH_OK
    booted_before = machine.booted_at
    seen = _PowerEvents()
    lab_service.lab.power.add_observer(seen)
    machine.ssh = SSH_REFUSE_LOGIN
    try:
        code, result = await reboot(lab_service, machine.name)
    finally:
        machine.ssh = SSH_OK
    assert (code, result["state"]) == (200, 2), result
    lines = result["text"].split("\n")
    assert lines[0].startswith("Attempting SSH reboot...Failed (") and "rejected" in lines[0]
    assert lines[1:] == [
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Attempting Redfish reboot...Success!",
    ]
    assert lab_service.lab.redfish is not None
    assert lab_service.lab.redfish.resets == [(machine.name, "GracefulRestart")]
    assert [event for name, event in seen.events if name == machine.name] == ["down", "up"]
    assert machine.up and machine.booted_at > booted_before
