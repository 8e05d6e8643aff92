"""
Tests for slaveapi.lab.pdu: the lab's PDU agents, driven by net-snmp's
C{snmpget}/C{snmpset}/C{snmpwalk} and by SlaveAPI's own PDU client.

The fleet is the 12-machine lab fleet with a second PDU host added
(C{pdu2}, 127.2.0.2) powering two of its machines: by default the second PDU
host plays an APC, the first a ServerTech Sentry.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver
from zope.interface import implementer

from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.pdu import PDUClient
from slaveapi.config import Secret, SNMPConfig
from slaveapi.lab.fleet import Fleet, build_fleet
from slaveapi.lab.machines import LabHost, LabMachine
from slaveapi.lab.pdu import LabPDUs, default_apc_hosts, free_udp_port, parse_outlet
from slaveapi.lab.power import PowerControl
from tests.pdu.peers import SNMPGET, SNMPSET, ToolResult, run_tool, tool_env

DOMAIN = "lab.pdu.test"
PDU1 = f"pdu1.{DOMAIN}"
PDU2 = f"pdu2.{DOMAIN}"
NOW = 1795821785.0
BOOT_TIME = 0.2
COMMUNITY = "lab-pdu-community"

SENTRY_STATUS = "1.3.6.1.4.1.1718.3.2.3.1.5"
SENTRY_CONTROL = "1.3.6.1.4.1.1718.3.2.3.1.11"
APC_COMMAND = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"
APC_STATE = "1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"


def _fleet() -> Fleet:
    """The lab fleet, with t-linux64-lab-009 and panda-0008 moved to a second PDU."""
    fleet = build_fleet(12, DOMAIN, NOW)
    fleet.hosts.append(LabHost(PDU2, "127.2.0.2"))
    fleet["t-linux64-lab-009"].pdu = f"{PDU2}:AA1"
    fleet["panda-0008"].pdu = f"{PDU2}:BA2"
    return fleet


class _Recorder:
    """A power observer noting every machine going down or coming up."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def machine_down(self, machine: LabMachine) -> None:
        self.events.append(("down", machine.name))

    def machine_up(self, machine: LabMachine) -> None:
        self.events.append(("up", machine.name))


@dataclass
class _Lab:
    fleet: Fleet
    power: PowerControl
    pdus: LabPDUs
    recorder: _Recorder
    env: dict[str, str]

    def machine(self, name: str) -> LabMachine:
        return self.fleet[name]

    async def tool(self, program: str, address: str, *args: str, community: str = COMMUNITY) -> ToolResult:
        argv = [program, "-v2c", "-c", community, "-t", "1", "-r", "0", "-Oqv", f"{address}:{self.pdus.port}"]
        return await run_tool(argv + list(args), self.env)


@pytest_twisted.async_yield_fixture
async def lab(tmp_path: Path) -> AsyncIterator[_Lab]:
    from twisted.internet import reactor

    fleet = _fleet()
    power = PowerControl(reactor, time.time, BOOT_TIME)
    recorder = _Recorder()
    power.add_observer(recorder)
    pdus = LabPDUs.start(reactor, fleet, power, 0, COMMUNITY)
    try:
        yield _Lab(fleet, power, pdus, recorder, tool_env(tmp_path))
    finally:
        power.stop()
        await pdus.stop()


async def _until_up(machine: LabMachine, seconds: float = 3.0) -> None:
    """Wait (bounded) for the machine to finish booting."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + seconds
    while not machine.up:
        assert reactor.seconds() < deadline, f"{machine.name} did not come up within {seconds}s"
        await deferLater(reactor, 0.02, lambda: None)


def test_types_addresses_and_defaults() -> None:
    fleet = _fleet()
    assert default_apc_hosts(fleet) == {PDU2}
    assert parse_outlet(f"{PDU1}:ba12") == (PDU1, "BA12", 2, 1, 12)
    with pytest.raises(ValueError, match="is not <pdu host>"):
        parse_outlet("pdu1:12")
    # Two machines on APC outlet number 1 (AA1 and BA1) cannot be told apart.
    fleet["panda-0008"].pdu = f"{PDU2}:BA1"
    assert default_apc_hosts(fleet) == set()
    with pytest.raises(ValueError, match="are the same outlet"):
        LabPDUs(fleet, PowerControl(None, time.time, 1.0), COMMUNITY, apc_hosts={PDU2})
    port = free_udp_port(["127.2.0.1", "127.2.0.2"])
    assert 0 < port < 65536


@pytest_twisted.ensureDeferred
async def test_lab_serves_types_and_addresses(lab: _Lab) -> None:
    assert lab.pdus.types == {PDU1: "sentry", PDU2: "apc"}
    assert lab.pdus.addresses == {PDU1: "127.2.0.1", PDU2: "127.2.0.2"}
    assert [o.outlet for o in lab.pdus.outlets[PDU1]] == ["AA1", "AA2", "AA3"]
    assert [o.machine.name for o in lab.pdus.outlets[PDU2]] == ["panda-0008", "t-linux64-lab-009"]
    assert lab.pdus.port > 0


@pytest_twisted.ensureDeferred
async def test_snmpset_sentry_off_and_on(lab: _Lab) -> None:
    machine = lab.machine("tst-linux64-lab-002")  # pdu1:AA1
    assert (await lab.tool(SNMPGET, "127.2.0.1", f"{SENTRY_STATUS}.1.1.1")) == ToolResult(0, "1\n")

    off = await lab.tool(SNMPSET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.1", "i", "2")
    assert off == ToolResult(0, "2\n")
    assert (machine.powered, machine.up) == (False, False)
    assert (await lab.tool(SNMPGET, "127.2.0.1", f"{SENTRY_STATUS}.1.1.1")) == ToolResult(0, "0\n")

    on = await lab.tool(SNMPSET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.1", "i", "1")
    assert on == ToolResult(0, "1\n")
    assert (machine.powered, machine.up) == (True, False)  # booting
    assert (await lab.tool(SNMPGET, "127.2.0.1", f"{SENTRY_STATUS}.1.1.1")) == ToolResult(0, "1\n")
    await _until_up(machine)
    assert lab.recorder.events == [("down", machine.name), ("up", machine.name)]
    # The control column reads "none".
    assert (await lab.tool(SNMPGET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.1")) == ToolResult(0, "0\n")


@pytest_twisted.ensureDeferred
async def test_snmpset_apc_off_on_and_reboot(lab: _Lab) -> None:
    machine = lab.machine("panda-0008")  # pdu2:BA2 -> APC outlet 2
    assert (await lab.tool(SNMPGET, "127.2.0.2", f"{APC_STATE}.2")) == ToolResult(0, "1\n")

    assert (await lab.tool(SNMPSET, "127.2.0.2", f"{APC_COMMAND}.2", "i", "2")) == ToolResult(0, "2\n")
    assert (machine.powered, machine.up) == (False, False)
    assert (await lab.tool(SNMPGET, "127.2.0.2", f"{APC_STATE}.2", f"{APC_COMMAND}.2")) == ToolResult(0, "2\n2\n")

    assert (await lab.tool(SNMPSET, "127.2.0.2", f"{APC_COMMAND}.2", "i", "1")) == ToolResult(0, "1\n")
    assert machine.powered is True
    await _until_up(machine)

    assert (await lab.tool(SNMPSET, "127.2.0.2", f"{APC_COMMAND}.2", "i", "3")) == ToolResult(0, "3\n")
    assert (machine.powered, machine.up) == (True, False)
    await _until_up(machine)
    assert (await lab.tool(SNMPGET, "127.2.0.2", f"{APC_STATE}.2")) == ToolResult(0, "1\n")
    assert lab.recorder.events == [("down", machine.name), ("up", machine.name)] * 2


@pytest_twisted.ensureDeferred
async def test_agent_refusals(lab: _Lab) -> None:
    machine = lab.machine("tst-linux64-lab-002")
    not_writable = await lab.tool(SNMPSET, "127.2.0.1", f"{SENTRY_STATUS}.1.1.1", "i", "0")
    assert not_writable.code == 2
    assert "Reason: notWritable" in not_writable.stderr
    wrong_value = await lab.tool(SNMPSET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.1", "i", "7")
    assert wrong_value.code == 2
    assert "Reason: wrongValue" in wrong_value.stderr
    wrong_type = await lab.tool(SNMPSET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.1", "s", "off")
    assert wrong_type.code == 2
    assert "Reason: wrongType" in wrong_type.stderr
    no_creation = await lab.tool(SNMPSET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.9", "i", "2")
    assert "Reason: noCreation" in no_creation.stderr
    # An all-or-nothing SET: the good binding is not applied either.
    mixed = await lab.tool(
        SNMPSET, "127.2.0.1", f"{SENTRY_CONTROL}.1.1.1", "i", "2", f"{SENTRY_CONTROL}.1.1.2", "i", "9"
    )
    assert "Reason: wrongValue" in mixed.stderr
    assert machine.powered is True and lab.recorder.events == []

    assert (await lab.tool(SNMPGET, "127.2.0.1", f"{SENTRY_STATUS}.1.1.9")) == ToolResult(
        0, "No Such Instance currently exists at this OID\n"
    )
    assert (await lab.tool(SNMPGET, "127.2.0.2", f"{SENTRY_STATUS}.1.1.1")) == ToolResult(
        0, "No Such Object available on this agent at this OID\n"
    )
    silent = await lab.tool(SNMPGET, "127.2.0.1", f"{SENTRY_STATUS}.1.1.1", community="wrong-community")
    assert silent == ToolResult(1, "", f"Timeout: No Response from 127.2.0.1:{lab.pdus.port}.\n")
    v1 = await run_tool(
        [SNMPGET, "-v1", "-c", COMMUNITY, "-t", "1", "-r", "0", f"127.2.0.1:{lab.pdus.port}", f"{SENTRY_STATUS}.1.1.9"],
        lab.env,
    )
    assert v1.code == 2 and "(noSuchName)" in v1.stderr


@pytest_twisted.ensureDeferred
async def test_walks_list_the_outlets(lab: _Lab) -> None:
    walk = await run_tool(
        ["/usr/bin/snmpwalk", "-v2c", "-c", COMMUNITY, "-On", f"127.2.0.1:{lab.pdus.port}", SENTRY_STATUS],
        lab.env,
    )
    assert walk == ToolResult(
        0,
        f".{SENTRY_STATUS}.1.1.1 = INTEGER: 1\n"
        f".{SENTRY_STATUS}.1.1.2 = INTEGER: 1\n"
        f".{SENTRY_STATUS}.1.1.3 = INTEGER: 0\n",  # t-linux64-lab-007 is off for good
    )
    bulk = await run_tool(
        ["/usr/bin/snmpbulkwalk", "-v2c", "-c", COMMUNITY, "-On", f"127.2.0.2:{lab.pdus.port}", "1.3.6.1.4.1.318"],
        lab.env,
    )
    assert bulk.code == 0
    assert bulk.stdout.splitlines() == [
        '.1.3.6.1.4.1.318.1.1.12.3.3.1.1.2.1 = STRING: "t-linux64-lab-009"',
        '.1.3.6.1.4.1.318.1.1.12.3.3.1.1.2.2 = STRING: "panda-0008"',
        f".{APC_COMMAND}.1 = INTEGER: 1",
        f".{APC_COMMAND}.2 = INTEGER: 1",
        '.1.3.6.1.4.1.318.1.1.12.3.5.1.1.2.1 = STRING: "t-linux64-lab-009"',
        '.1.3.6.1.4.1.318.1.1.12.3.5.1.1.2.2 = STRING: "panda-0008"',
        f".{APC_STATE}.1 = INTEGER: 1",
        f".{APC_STATE}.2 = INTEGER: 1",
        # The APC branch is the end of this agent's MIB (as with any agent whose last object it is).
        f".{APC_STATE}.2 = No more variables left in this MIB View (It is past the end of the MIB tree)",
    ]


@pytest_twisted.ensureDeferred
async def test_pdu_client_powercycles_lab_machines(lab: _Lab) -> None:
    from twisted.internet import reactor

    addresses = lab.pdus.addresses

    async def resolve(host: str) -> str | None:
        return addresses.get(host.lower())

    config = SNMPConfig(
        port=lab.pdus.port, timeout=1.0, retries=1, pdu_types=lab.pdus.types,
        state_timeout=2.0, poll_interval=0.05, power_delay=0.05,
    )
    client = PDUClient(reactor, config, Secret(COMMUNITY), None, None, resolve=resolve)
    sentry_machine = lab.machine("t-yosemite-r7-lab-003")  # pdu1:AA2, Sentry
    apc_machine = lab.machine("t-linux64-lab-009")  # pdu2:AA1, APC; powered but hung
    steps: list[str] = []
    try:
        sentry_outlet = PDUOutlet.parse(sentry_machine.pdu or "")
        apc_outlet = PDUOutlet.parse(apc_machine.pdu or "")
        assert await client.outlet_state(sentry_outlet) is True
        assert await client.outlet_state(apc_outlet) is True
        await client.powercycle(sentry_outlet, steps.append)
        await client.powercycle(apc_outlet)
        assert await client.outlet_state(apc_outlet) is True
    finally:
        await client.close()
    assert steps[0] == f"switching PDU outlet {PDU1}:AA2 off"
    await _until_up(sentry_machine)
    await _until_up(apc_machine)
    events: Any = lab.recorder.events
    assert sorted(events) == sorted(
        [("down", sentry_machine.name), ("up", sentry_machine.name), ("up", apc_machine.name)]
    )
    assert apc_machine.uptime(time.time()) < 5


class _UpWaiter:
    """A power observer whose Deferred fires when one machine comes up."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.up: Deferred[None] = Deferred()

    def machine_down(self, machine: LabMachine) -> None:
        pass

    def machine_up(self, machine: LabMachine) -> None:
        if machine.name == self._name and not self.up.called:
            self.up.callback(None)


@implementer(ILogObserver)
class _LogWaiter:
    """Fires a Deferred when a log event whose format contains C{text} is emitted with C{fields}."""

    def __init__(self, text: str, **fields: Any) -> None:
        self._text = text
        self._fields = fields
        self.seen: Deferred[dict[str, Any]] = Deferred()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.seen.called or self._text not in (event.get("log_format") or ""):
            return
        if all(event.get(key) == value for key, value in self._fields.items()):
            self.seen.callback(event)


def _bounded(waiting: Deferred[Any], seconds: float) -> Deferred[Any]:
    from twisted.internet import reactor

    return waiting.addTimeout(seconds, reactor)


def _client(lab: _Lab, **changes: Any) -> PDUClient:
    from twisted.internet import reactor

    addresses = lab.pdus.addresses

    async def resolve(host: str) -> str | None:
        return addresses.get(host.lower())

    values: dict[str, Any] = dict(
        port=lab.pdus.port, timeout=1.0, retries=1, pdu_types=lab.pdus.types,
        state_timeout=2.0, poll_interval=0.05, power_delay=0.5,
    )
    values.update(changes)
    return PDUClient(reactor, SNMPConfig(**values), Secret(COMMUNITY), None, None, resolve=resolve)


async def _cancel_during_the_pause(
    client: PDUClient, machine: LabMachine
) -> tuple[list[str], Deferred[None]]:
    """Start a power cycle, cancel it in its pause once the outlet is off; the progress lines, the caller."""
    from twisted.internet import reactor

    outlet = PDUOutlet.parse(machine.pdu or "")
    lines: list[str] = []
    off: Deferred[None] = Deferred()

    def progress(line: str) -> None:
        lines.append(line)
        if " is off; " in line:
            # On the next reactor turn, when the power cycle has gone into its pause.
            reactor.callLater(0, off.callback, None)

    cycle = Deferred.fromCoroutine(client.powercycle(outlet, progress))
    await _bounded(off, 10)
    assert (machine.powered, machine.up) == (False, False)
    cycle.cancel()
    return lines, cycle


@pytest_twisted.ensureDeferred
async def test_cancelled_powercycle_still_switches_the_outlet_on(lab: _Lab) -> None:
    from twisted.logger import globalLogPublisher

    machine = lab.machine("t-yosemite-r7-lab-003")  # pdu1:AA2, Sentry
    waiter = _UpWaiter(machine.name)
    lab.power.add_observer(waiter)
    finished = _LogWaiter("finished the power-on despite the cancellation", outlet=f"{PDU1}:AA2")
    globalLogPublisher.addObserver(finished)
    client = _client(lab)
    try:
        lines, cycle = await _cancel_during_the_pause(client, machine)
        # The caller fails at once; the outlet goes back on without it.
        assert cycle.called
        with pytest.raises(CancelledError):
            await cycle
        assert machine.powered is False
        await _bounded(waiter.up, 10)
        await _bounded(finished.seen, 10)
        assert await client.outlet_state(PDUOutlet.parse(machine.pdu or "")) is True
    finally:
        globalLogPublisher.removeObserver(finished)
        await client.close()
    assert (machine.powered, machine.up) == (True, True)
    # The cancelled caller hears nothing more.
    assert lines == [f"switching PDU outlet {PDU1}:AA2 off", f"PDU outlet {PDU1}:AA2 is off; switching it on in 0.5s"]
    assert lab.recorder.events == [("down", machine.name), ("up", machine.name)]


@pytest_twisted.ensureDeferred
async def test_close_waits_for_a_cancelled_powercycle(lab: _Lab) -> None:
    machine = lab.machine("panda-0008")  # pdu2:BA2, APC
    waiter = _UpWaiter(machine.name)
    lab.power.add_observer(waiter)
    client = _client(lab)
    try:
        _, cycle = await _cancel_during_the_pause(client, machine)
        with pytest.raises(CancelledError):
            await cycle
    finally:
        # A service stop cancels its actions, then closes the clients: the outlet is confirmed on first.
        await _bounded(Deferred.fromCoroutine(client.close()), 20)
    assert machine.powered is True
    await _bounded(waiter.up, 10)
    assert machine.up is True
    assert lab.recorder.events == [("down", machine.name), ("up", machine.name)]
