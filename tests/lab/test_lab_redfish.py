"""The lab's Redfish BMCs (slaveapi.lab.redfish) against SlaveAPI's own Redfish client, on the real reactor."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from slaveapi.clients.redfish import RedfishAuthError, RedfishClient
from slaveapi.config import RedfishConfig, Secret
from slaveapi.lab._lab import _redfish_bmcs
from slaveapi.lab.fleet import build_fleet
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl
from slaveapi.lab.redfish import RESET_TYPES, LabRedfish

DOMAIN = "build.scl3.slaveapi.test"
PASSWORD = "lab-redfish-pw"


class _Watcher:
    """Fires a Deferred when a machine goes down or comes up."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._waiting: dict[tuple[str, str], Deferred[None]] = {}

    def expect(self, name: str, event: str) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self._waiting[(name, event)] = waiting
        return waiting

    def _happened(self, machine: LabMachine, event: str) -> None:
        self.events.append((machine.name, event))
        waiting = self._waiting.pop((machine.name, event), None)
        if waiting is not None:
            waiting.callback(None)

    def machine_down(self, machine: LabMachine) -> None:
        self._happened(machine, "down")

    def machine_up(self, machine: LabMachine) -> None:
        self._happened(machine, "up")


@dataclass
class _Running:
    machine: LabMachine
    service: LabRedfish
    client: RedfishClient
    watcher: _Watcher


def _bounded(waiting: Deferred[None], seconds: float = 10.0) -> Deferred[None]:
    from twisted.internet import reactor

    return waiting.addTimeout(seconds, reactor)


@pytest_twisted.async_yield_fixture
async def running() -> AsyncIterator[_Running]:
    from twisted.internet import reactor

    fleet = build_fleet(12, DOMAIN, time.time())
    _redfish_bmcs(fleet, 0.25)
    machines = [m for m in fleet.machines if m.redfish]
    power = PowerControl(reactor, time.time, 0.2)
    watcher = _Watcher()
    power.add_observer(watcher)
    service = LabRedfish.start(reactor, machines, power, "ADMIN", PASSWORD)
    config = RedfishConfig(scheme="http", port=service.port, timeout=5.0, retries=0)
    client = RedfishClient(config, "ADMIN", Secret(PASSWORD), reactor)
    try:
        yield _Running(machines[0], service, client, watcher)
    finally:
        power.stop()
        await client.close()
        await service.stop()


def test_a_quarter_of_the_twelve_machine_labs_bmcs_speak_redfish() -> None:
    fleet = build_fleet(12, DOMAIN, time.time())
    _redfish_bmcs(fleet, 0.25)
    assert [m.name for m in fleet.machines if m.redfish] == ["bld-linux64-lab-010"]
    _redfish_bmcs(fleet := build_fleet(12, DOMAIN, time.time()), 0.0)
    assert not any(m.redfish for m in fleet.machines)


@pytest_twisted.ensureDeferred
async def test_the_client_reads_the_lab_bmc(running: _Running) -> None:
    host = running.machine.mgmt_ip
    assert host is not None
    assert await running.client.available(host) is True
    assert await running.client.power_state(host) == "on"
    assert await running.client.health(host) == "OK"
    assert await running.client.reset_types(host) == RESET_TYPES


@pytest_twisted.ensureDeferred
async def test_a_force_restart_takes_the_machine_down_and_it_boots(running: _Running) -> None:
    machine, host = running.machine, running.machine.mgmt_ip
    assert host is not None and machine.up
    booted_before = machine.booted_at
    up = running.watcher.expect(machine.name, "up")
    await running.client.reset(host, "ForceRestart")
    assert not machine.up
    await _bounded(up)
    assert running.watcher.events == [(machine.name, "down"), (machine.name, "up")]
    assert machine.up and machine.booted_at >= booted_before
    assert running.service.resets == [(machine.name, "ForceRestart")]


@pytest_twisted.ensureDeferred
async def test_force_off_cuts_the_power_and_on_brings_it_back(running: _Running) -> None:
    machine, host = running.machine, running.machine.mgmt_ip
    assert host is not None
    await running.client.reset(host, "ForceOff")
    assert not machine.powered and not machine.up
    assert await running.client.power_state(host) == "off"
    up = running.watcher.expect(machine.name, "up")
    await running.client.reset(host, "On")
    await _bounded(up)
    assert machine.powered and machine.up


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_refused_and_nothing_happens(running: _Running) -> None:
    from twisted.internet import reactor

    host = running.machine.mgmt_ip
    assert host is not None
    config = RedfishConfig(scheme="http", port=running.service.port, timeout=5.0, retries=0)
    intruder = RedfishClient(config, "ADMIN", Secret("wrong"), reactor)
    try:
        with pytest.raises(RedfishAuthError):
            await intruder.reset(host, "ForceOff")
    finally:
        await intruder.close()
    assert running.machine.powered and running.service.resets == []


@pytest_twisted.ensureDeferred
async def test_a_machine_without_a_redfish_bmc_does_not_answer(running: _Running) -> None:
    # bld-linux64-lab-001's BMC (127.1.1.1) speaks IPMI: nothing listens there for Redfish.
    assert await running.client.available("127.1.1.1") is False
