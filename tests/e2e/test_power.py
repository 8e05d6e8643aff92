"""
The power actions end to end: POSTs over HTTP to SlaveAPI serving its lab
in this process, on the lab's Redfish machine (bld-linux64-lab-010) and an
IPMI one (bld-linux64-lab-001), checking behind the API that the machine
really went off (its SSH port closed) and came back (it booted, and its SSH
port answers), and what the lab's BMCs remember of the next boot device.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError

from slaveapi.lab import Lab
from slaveapi.lab.machines import LabMachine
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

REDFISH = "bld-linux64-lab-010"
IPMI = "bld-linux64-lab-001"
#: Long enough for any power action in the lab (boot time 1 s, reads every [power] poll_interval).
WAIT = "120"
#: A safety net for a lab event that must come, not a claim about how fast.
EVENT_BOUND = 60.0

MACHINES = [pytest.param(REDFISH, "redfish", "Redfish", id="redfish"), pytest.param(IPMI, "ipmi", "IPMI", id="ipmi")]


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("power")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _act(service: RunningService, slave: str, action: str, **fields: str) -> tuple[int, Any]:
    return await request_json(
        "POST", f"{service.url}/slaves/{slave}/actions/{action}", data={"waittime": WAIT, **fields}
    )


async def _ssh_answers(lab: Lab, machine: LabMachine) -> bool:
    """Whether a TCP connection to the machine's SSH port is accepted now."""
    endpoint = TCP4ClientEndpoint(_reactor(), machine.ip, lab.ssh_port, timeout=5)
    try:
        connected = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
    except ConnectError:
        return False
    cast(protocol.Protocol, connected).transport.loseConnection()
    return True


class _Booted:
    """Fires C{booted} at the machine's next boot in the lab."""

    def __init__(self, lab: Lab, machine: LabMachine) -> None:
        self._machine = machine
        self.booted: Deferred[None] = Deferred()
        lab.power.add_observer(self)

    def machine_down(self, machine: LabMachine) -> None:
        """Not followed."""

    def machine_up(self, machine: LabMachine) -> None:
        if machine is self._machine and not self.booted.called:
            self.booted.callback(None)

    async def wait(self) -> None:
        await self.booted.addTimeout(EVENT_BOUND, _reactor())


async def _status(service: RunningService, slave: str) -> Any:
    code, result = await _act(service, slave, "power_status")
    assert (code, result["state"]) == (200, 2), result
    return result["text"]


@pytest_twisted.ensureDeferred
async def test_slaves_show_their_power_channels(lab_service: RunningService) -> None:
    expected = {
        REDFISH: ["redfish"],
        IPMI: ["ipmi"],
        "t-linux64-lab-009": ["pdu"],
        "panda-0008": ["pdu", "mozpool"],
        "tst-linux64-ec2-012": [],
    }
    for name, channels in expected.items():
        code, slave = await request_json("GET", f"{lab_service.url}/slaves/{name}")
        assert code == 200 and slave["power_channels"] == channels, (name, slave)


@pytest.mark.parametrize(("name", "via", "label"), MACHINES)
@pytest_twisted.ensureDeferred
async def test_power_off_stops_the_machine_and_power_on_boots_it(
    lab_service: RunningService, name: str, via: str, label: str
) -> None:
    lab = lab_service.lab
    machine = lab.machine(name)
    assert await _status(lab_service, name) == {"power": "on", "via": via}

    code, result = await _act(lab_service, name, "power_off")
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == f"Powering off via {label}...Success! (power is off)"
    assert not machine.up and not machine.powered
    assert not await _ssh_answers(lab, machine)
    assert await _status(lab_service, name) == {"power": "off", "via": via}

    booted = _Booted(lab, machine)
    code, result = await _act(lab_service, name, "power_on")
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == f"Powering on via {label}...Success! (power is on)"
    await booted.wait()
    assert machine.up and await _ssh_answers(lab, machine)
    assert await _status(lab_service, name) == {"power": "on", "via": via}


@pytest.mark.parametrize(("name", "via", "label"), MACHINES)
@pytest_twisted.ensureDeferred
async def test_power_cycle_reboots_the_machine(lab_service: RunningService, name: str, via: str, label: str) -> None:
    lab = lab_service.lab
    machine = lab.machine(name)
    booted_before = machine.booted_at
    booted = _Booted(lab, machine)
    code, result = await _act(lab_service, name, "power_cycle")
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == f"Power-cycling via {label}...Success! (power is on)"
    await booted.wait()
    assert machine.up and machine.booted_at > booted_before
    assert await _ssh_answers(lab, machine)


@pytest.mark.parametrize(("name", "via", "label"), MACHINES)
@pytest_twisted.ensureDeferred
async def test_boot_device_is_set_and_read_back(lab_service: RunningService, name: str, via: str, label: str) -> None:
    code, result = await _act(lab_service, name, "boot_device", device="pxe")
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == f"Setting the next boot device to pxe via {label}...Success! (next boot: pxe)"
    if via == "redfish":
        redfish = lab_service.lab.redfish
        assert redfish is not None
        assert (redfish.bmcs[name].boot_target, redfish.bmcs[name].boot_enabled) == ("Pxe", "Once")


@pytest_twisted.ensureDeferred
async def test_a_boot_device_the_bmc_keeps_for_every_boot_says_so(lab_service: RunningService) -> None:
    redfish = lab_service.lab.redfish
    assert redfish is not None
    bmc = redfish.bmcs[REDFISH]
    bmc.ignores_once = True
    try:
        code, result = await _act(lab_service, REDFISH, "boot_device", device="disk")
        assert (code, result["state"]) == (200, 2), result
        assert result["text"] == (
            "Setting the next boot device to disk via Redfish...Success! (next boot: disk; the BMC keeps it for"
            " every boot, not only the next)"
        )
        assert (bmc.boot_target, bmc.boot_enabled) == ("Hdd", "Continuous")
    finally:
        # The module's other tests share this lab.
        bmc.ignores_once = False
        bmc.boot_target, bmc.boot_enabled = None, "Disabled"


@pytest_twisted.ensureDeferred
async def test_a_pdu_cannot_set_a_boot_device(lab_service: RunningService) -> None:
    code, result = await _act(lab_service, "t-linux64-lab-009", "boot_device", device="bios")
    assert (code, result["state"]) == (200, 3), result
    assert result["text"].split("\n")[0] == "PDU: cannot set a boot device."


@pytest_twisted.ensureDeferred
async def test_bad_fields_are_400_naming_them(lab_service: RunningService) -> None:
    code, body = await _act(lab_service, IPMI, "boot_device", device="floppy")
    assert code == 400 and body["msg"] == "device: expected one of pxe, disk, bios, got 'floppy'", body
    code, body = await _act(lab_service, IPMI, "boot_device")
    assert code == 400 and body["msg"] == "device: required: one of pxe, disk, bios", body
    code, body = await _act(lab_service, IPMI, "power_off", soft="perhaps")
    assert code == 400 and body["msg"].startswith("soft: expected one of "), body


@pytest.mark.parametrize(("name", "via", "label"), MACHINES)
@pytest_twisted.ensureDeferred
async def test_a_graceful_shutdown_then_power_on(lab_service: RunningService, name: str, via: str, label: str) -> None:
    lab = lab_service.lab
    machine = lab.machine(name)
    code, result = await _act(lab_service, name, "power_off", soft="yes")
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == f"Shutting down gracefully via {label}...Success! (power is off)"
    assert not machine.powered and not await _ssh_answers(lab, machine)

    booted = _Booted(lab, machine)
    code, result = await _act(lab_service, name, "power_on")
    assert (code, result["state"]) == (200, 2), result
    await booted.wait()
    assert machine.up and await _ssh_answers(lab, machine)
