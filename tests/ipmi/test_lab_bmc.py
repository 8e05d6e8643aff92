"""
The lab's BMCs (slaveapi.lab.bmc) against ipmitool and against slaveapi's own IPMI client.

ipmitool proves the lab speaks IPMI 2.0 as real tools do; the IPMI client
(pyghmi, which proposes SHA-256 first) proves the cipher-suite fix of the
lab's BMC server. Power commands really take lab machines away: their SSH
listener closes, and comes back after the boot time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error as net_error, reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver
from zope.interface import implementer

from slaveapi.clients import BootOverride
from slaveapi.clients.ipmi import IPMIAuthError, IPMITimeout
from slaveapi.config import IPMIConfig
from slaveapi.lab import Lab
from slaveapi.lab.bmc import LabBMCError, LabBMCs
from slaveapi.lab.fleet import build_fleet
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl

from .conftest import Clients, PowerWatcher, bounded, ipmitool, pid_alive

reactor: Any = _reactor

BOOT_TIME = 0.3
DOMAIN = "build.scl3.slaveapi.test"


@dataclass
class LabWithBMCs:
    lab: Lab
    bmcs: LabBMCs
    watcher: PowerWatcher

    @property
    def password(self) -> str:
        return self.lab.ipmi_password

    def config(self, **changes: Any) -> IPMIConfig:
        values: dict[str, Any] = dict(
            port=self.bmcs.port, timeout=5.0, retries=1, workers=2, off_timeout=3.0, poll_interval=0.05,
            power_delay=0.05,
        )
        values.update(changes)
        return IPMIConfig(**values)


@pytest_twisted.async_yield_fixture
async def lab_bmcs(tmp_path: Path, watcher: PowerWatcher) -> AsyncIterator[LabWithBMCs]:
    """A 12-machine lab (4 with a BMC) and its BMC process; both stopped afterwards."""
    lab = Lab.start(reactor, slaves=12, workdir=str(tmp_path / "lab"), boot_time=BOOT_TIME, shutdown_delay=0.05)
    own: LabBMCs | None = None
    pids: list[int] = []
    try:
        # Lab.start starts the lab's BMCs; start them beside it where it does not.
        bmcs = getattr(lab, "bmcs", None)
        if bmcs is None:
            bmcs = own = LabBMCs.start(reactor, lab.fleet.machines, lab.power, 0, lab.ipmi_username, lab.ipmi_password)
        lab.power.add_observer(watcher)
        await bounded(bmcs.ready, 20)
        pids = bmcs.pids
        yield LabWithBMCs(lab, bmcs, watcher)
    finally:
        if own is not None:
            await bounded(own.stop(), 10)
        await bounded(lab.stop(), 10)
        assert not any(pid_alive(pid) for pid in pids)


async def _ssh_port_open(machine: LabMachine, port: int) -> bool:
    """Whether a TCP connection to the machine's SSH port is accepted."""
    endpoint = TCP4ClientEndpoint(reactor, machine.ip, port, timeout=2)
    try:
        protocol = await bounded(connectProtocol(endpoint, Protocol()), 5)
    except net_error.ConnectionRefusedError:
        return False
    protocol.transport.abortConnection()
    return True


@pytest_twisted.ensureDeferred
async def test_ipmitool_status_off_on(lab_bmcs: LabWithBMCs) -> None:
    lab, port, password = lab_bmcs.lab, lab_bmcs.bmcs.port, lab_bmcs.password
    machine = lab.machine("bld-linux64-lab-001")
    host = machine.mgmt_ip
    assert host == "127.1.1.1"
    booted = machine.booted_at

    status = await ipmitool(host, port, password, "power", "status")
    assert (status.code, status.out) == (0, "Chassis Power is on\n")

    down = lab_bmcs.watcher.expect(machine.name, "down")
    off = await ipmitool(host, port, password, "power", "off")
    assert (off.code, off.out) == (0, "Chassis Power Control: Down/Off\n")
    await bounded(down, 5)
    assert (machine.powered, machine.up, lab.ssh.listening(machine)) == (False, False, False)
    assert await _ssh_port_open(machine, lab.ssh_port) is False
    status = await ipmitool(host, port, password, "power", "status")
    assert (status.code, status.out) == (0, "Chassis Power is off\n")

    # How the power on left the machine, noted as it happened: a boot takes BOOT_TIME, and
    # on a busy machine that can pass before the next ipmitool has even started.
    at_power_on: list[tuple[bool, bool, bool]] = []
    power_on = lab.power.power_on

    def noting_power_on(target: LabMachine) -> None:
        power_on(target)
        if target is machine:
            at_power_on.append((target.powered, target.up, lab.power.booting(target)))

    lab.power.power_on = noting_power_on  # type: ignore[method-assign,assignment]  # records each call
    up = lab_bmcs.watcher.expect(machine.name, "up")
    on = await ipmitool(host, port, password, "power", "on")
    assert (on.code, on.out) == (0, "Chassis Power Control: Up/On\n")
    status = await ipmitool(host, port, password, "power", "status")
    assert (status.code, status.out) == (0, "Chassis Power is on\n")
    await bounded(up, 5)
    assert at_power_on == [(True, False, True)]  # powered, not up yet, booting
    assert (machine.powered, machine.up, lab.ssh.listening(machine)) == (True, True, True)
    assert await _ssh_port_open(machine, lab.ssh_port) is True
    assert machine.booted_at > booted


@pytest_twisted.ensureDeferred
async def test_ipmitool_wrong_password_is_refused(lab_bmcs: LabWithBMCs) -> None:
    machine = lab_bmcs.lab.machine("t-w864-lab-004")
    result = await ipmitool(machine.mgmt_ip, lab_bmcs.bmcs.port, "wrong-password", "power", "off")
    assert result.code != 0
    assert "RAKP 2 HMAC is invalid" in result.err or "Unable to establish" in result.err, result.err
    assert machine.powered is True


@pytest_twisted.ensureDeferred
async def test_power_state_follows_the_lab(lab_bmcs: LabWithBMCs, clients: Clients) -> None:
    lab = lab_bmcs.lab
    client = clients.make(lab_bmcs.config(), lab_bmcs.password)
    machine = lab.machine("bld-linux64-lab-006")
    assert await client.power_state(machine.mgmt_ip) is True
    down = lab_bmcs.watcher.expect(machine.name, "down")
    lab.power_off(machine.name)  # the lab cuts the power (a PDU, say), not the BMC
    await bounded(down, 5)
    # The BMC process hears about it over its pipe; poll until it has (bounded).
    assert await Deferred.fromCoroutine(_power_state_becomes(client, machine.mgmt_ip, False))


async def _power_state_becomes(client: Any, host: str, powered: bool) -> bool:
    from twisted.internet.task import deferLater

    for _ in range(50):
        if await client.power_state(host) is powered:
            return True
        await deferLater(reactor, 0.02)
    return False


@pytest_twisted.ensureDeferred
async def test_client_powercycles_a_lab_machine(lab_bmcs: LabWithBMCs, clients: Clients) -> None:
    lab = lab_bmcs.lab
    machine = lab.machine("bld-linux64-lab-001")
    booted = machine.booted_at
    client = clients.make(lab_bmcs.config(), lab_bmcs.password)
    assert await client.available(machine.mgmt_ip) is True
    down = lab_bmcs.watcher.expect(machine.name, "down")
    up = lab_bmcs.watcher.expect(machine.name, "up")
    lines: list[str] = []
    await bounded(Deferred.fromCoroutine(client.powercycle(machine.mgmt_ip, lines.append)), 20)
    assert lines == ["soft power off requested", "powered off", "power on requested", "powered on"]
    assert down.called
    await bounded(up, 5)
    assert [event for event in lab_bmcs.watcher.events if event[0] == machine.name] == [
        (machine.name, "down"),
        (machine.name, "up"),
    ]
    assert (machine.powered, machine.up, lab.ssh.listening(machine)) == (True, True, True)
    assert machine.booted_at > booted
    # A soft off is a clean shutdown: the buildbot logged its SIGTERM before the boot lines.
    sigterm = machine.twistd_log.index(next(line for line in machine.twistd_log if "Received SIGTERM" in line))
    assert any("Server Shut Down." in line for line in machine.twistd_log[sigterm:])


@pytest_twisted.ensureDeferred
async def test_powercycle_falls_back_to_hard_off_and_a_dead_machine_stays_dead(
    lab_bmcs: LabWithBMCs, clients: Clients
) -> None:
    lab = lab_bmcs.lab
    machine = lab.machine("t-w864-lab-004")
    machine.comes_back = False
    lab.reboot(machine.name)  # its OS is gone for good; the chassis stays on
    assert (machine.powered, machine.up) == (True, False)
    client = clients.make(lab_bmcs.config(off_timeout=0.5), lab_bmcs.password)
    lines: list[str] = []
    await bounded(Deferred.fromCoroutine(client.powercycle(machine.mgmt_ip, lines.append)), 20)
    assert lines == [
        "soft power off requested",
        "still on after 0.5s; hard power off",
        "powered off",
        "power on requested",
        "powered on",
    ]
    assert (machine.powered, machine.up, lab.power.booting(machine)) == (True, False, False)


@pytest_twisted.ensureDeferred
async def test_boot_device_is_kept_per_machine_until_it_boots(lab_bmcs: LabWithBMCs, clients: Clients) -> None:
    from slaveapi.clients import poll_until

    lab, port, password = lab_bmcs.lab, lab_bmcs.bmcs.port, lab_bmcs.password
    machine, other = lab.machine("bld-linux64-lab-006"), lab.machine("bld-linux64-lab-001")
    host = machine.mgmt_ip
    assert host is not None and other.mgmt_ip is not None
    client = clients.make(lab_bmcs.config(), password)
    assert await client.boot_device(host) is None
    for device in ("disk", "bios", "pxe"):
        await client.set_boot_device(host, device)
        assert await client.boot_device(host) == BootOverride(device, once=True)
    assert await client.boot_device(other.mgmt_ip) is None

    # The BMC was told to keep the flags valid past its 60 s timeout (parameter 3, bit 3); the other was not.
    get_clearing = ("raw", "0x00", "0x09", "0x03", "0x00", "0x00")
    kept = await ipmitool(host, port, password, *get_clearing)
    assert (kept.code, kept.out.split()) == (0, ["01", "03", "08"]), kept.err
    untouched = await ipmitool(other.mgmt_ip, port, password, *get_clearing)
    assert (untouched.code, untouched.out.split()) == (0, ["01", "03", "00"]), untouched.err

    # ipmitool reads the same boot flags: valid, this boot only, PXE.
    shown = await ipmitool(host, port, password, "chassis", "bootparam", "get", "5")
    assert shown.code == 0, shown.err
    for line in ("Boot Flag Valid", "Options apply to only next boot", "Boot Device Selector : Force PXE"):
        assert line in shown.out, shown.out

    # A device set by someone else is named too.
    cdrom = await ipmitool(host, port, password, "chassis", "bootdev", "cdrom")
    assert cdrom.code == 0, cdrom.err
    assert await client.boot_device(host) == BootOverride("cdrom", once=True)

    # Boot flags without the "valid" bit clear the override.
    clear = ("raw", "0x00", "0x08", "0x05", "0x00", "0x04", "0x00", "0x00", "0x00")
    cleared = await ipmitool(host, port, password, *clear)
    assert cleared.code == 0, cleared.err
    assert await client.boot_device(host) is None

    # A one-time override is used up when the machine next boots.
    await client.set_boot_device(host, "bios")
    up = lab_bmcs.watcher.expect(machine.name, "up")
    lab.reboot(machine.name)
    await bounded(up, 5)

    async def used_up() -> bool:
        return await client.boot_device(host) is None

    # The BMC process hears of the boot over its pipe: poll until it has (bounded).
    assert await poll_until(reactor, used_up, 0.02, 10.0, "boot device used up")


@pytest_twisted.ensureDeferred
async def test_client_wrong_password_and_unknown_user(lab_bmcs: LabWithBMCs, clients: Clients) -> None:
    host = lab_bmcs.lab.machine("bld-linux64-lab-001").mgmt_ip
    wrong = clients.make(lab_bmcs.config(), "wrong-password")
    with pytest.raises(IPMIAuthError) as caught:
        await bounded(Deferred.fromCoroutine(wrong.power_state(host)), 15)
    assert str(caught.value) == "IPMI power status on 127.1.1.1: credentials refused (Incorrect password provided)"
    # pyghmi's server never answers an unknown user, and pyghmi never gives up on
    # its own then: only our deadline can end the call, so a short one is safe.
    stranger = clients.make(lab_bmcs.config(timeout=1.0), lab_bmcs.password, username="nobody")
    with pytest.raises(IPMITimeout) as timed_out:
        await bounded(Deferred.fromCoroutine(stranger.power_state(host)), 30)
    assert str(timed_out.value) == "IPMI power status on 127.1.1.1: no answer within 1s"


@pytest_twisted.ensureDeferred
async def test_ready_fails_when_the_bmc_process_cannot_listen() -> None:
    fleet = build_fleet(1, DOMAIN, time.time())
    [machine] = fleet.machines
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        taken.bind((machine.mgmt_ip, 0))
        bmcs = LabBMCs.start(
            reactor, fleet.machines, PowerControl(reactor, time.time, BOOT_TIME), taken.getsockname()[1], "ADMIN",
            "pw-123456"
        )
        with pytest.raises(
            LabBMCError, match=r"^lab BMC process exited before it was ready: bmc_server: cannot listen"
        ):
            await bounded(bmcs.ready, 20)
        await bounded(bmcs.stop(), 10)
        assert bmcs.pids == []
    finally:
        taken.close()


@pytest_twisted.ensureDeferred
async def test_stopping_before_ready_ends_the_process_and_fails_ready() -> None:
    fleet = build_fleet(1, DOMAIN, time.time())
    bmcs = LabBMCs.start(reactor, fleet.machines, PowerControl(reactor, time.time, BOOT_TIME), 0, "ADMIN", "pw-1")
    [pid] = bmcs.pids
    await bounded(bmcs.stop(), 10)
    assert not pid_alive(pid)
    with pytest.raises(LabBMCError, match=r"^lab BMC process exited before it was ready: "):
        await bounded(bmcs.ready, 1)


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_powercycles_on_four_workers(clients: Clients, watcher: PowerWatcher) -> None:
    fleet = build_fleet(120, DOMAIN, time.time())
    machines = [m for m in fleet.machines if m.bmc][:50]
    assert len(machines) == 50
    power = PowerControl(reactor, time.time, 0.2)
    power.add_observer(watcher)
    # Two BMC processes (30 BMCs at most in each) to cover sharding too.
    bmcs = LabBMCs.start(
        reactor, fleet.machines, power, 0, "ADMIN", "load-pw-314159", shutdown_delay=0.05, per_process=30
    )
    pids: list[int] = []
    try:
        await bounded(bmcs.ready, 20)
        pids = bmcs.pids
        assert len(pids) == 2
        client = clients.make(
            IPMIConfig(port=bmcs.port, timeout=10.0, retries=1, workers=4, off_timeout=5.0, poll_interval=0.05,
                       power_delay=0.05),
            "load-pw-314159",
        )
        ups = [watcher.expect(m.name, "up") for m in machines]
        cycles = [Deferred.fromCoroutine(client.powercycle(m.mgmt_ip)) for m in machines]
        results = await bounded(DeferredList(cycles, consumeErrors=True), 45)
        failures = [
            (m.name, outcome.getErrorMessage()) for m, (ok, outcome) in zip(machines, results, strict=True) if not ok
        ]
        assert failures == []
        await bounded(gatherResults(ups), 10)
        assert all(m.up and m.powered for m in machines)
        assert len(clients.workers()) == 4
        assert client._pool.spawned == 4  # no deadline was hit, no worker died
    finally:
        await bounded(bmcs.stop(), 10)
        power.stop()
    assert not any(pid_alive(pid) for pid in pids)


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


async def _cancel_during_the_pause(
    lab_bmcs: LabWithBMCs, clients: Clients, machine: LabMachine
) -> tuple[Any, list[str], Deferred[None]]:
    """Start a power cycle with a 0.5 s pause, cancel it once the machine is off; the client, lines, caller."""
    client = clients.make(lab_bmcs.config(power_delay=0.5), lab_bmcs.password)
    lines: list[str] = []
    off: Deferred[None] = Deferred()

    def progress(line: str) -> None:
        lines.append(line)
        if line == "powered off":
            # On the next reactor turn, when the power cycle has gone into its pause.
            reactor.callLater(0, off.callback, None)

    down = lab_bmcs.watcher.expect(machine.name, "down")
    cycle = Deferred.fromCoroutine(client.powercycle(machine.mgmt_ip, progress))
    await bounded(off, 10)
    await bounded(down, 5)
    assert (machine.powered, machine.up) == (False, False)
    cycle.cancel()
    return client, lines, cycle


@pytest_twisted.ensureDeferred
async def test_cancelled_powercycle_still_powers_the_machine_on(lab_bmcs: LabWithBMCs, clients: Clients) -> None:
    from twisted.internet.defer import CancelledError
    from twisted.logger import globalLogPublisher

    machine = lab_bmcs.lab.machine("bld-linux64-lab-001")
    finished = _LogWaiter("finished the power-on despite the cancellation", host=machine.mgmt_ip)
    globalLogPublisher.addObserver(finished)
    try:
        up = lab_bmcs.watcher.expect(machine.name, "up")
        client, lines, cycle = await _cancel_during_the_pause(lab_bmcs, clients, machine)
        # The caller fails at once; the power-on goes on without it.
        assert cycle.called
        with pytest.raises(CancelledError):
            await cycle
        assert machine.powered is False
        await bounded(up, 10)
        await bounded(finished.seen, 10)
    finally:
        globalLogPublisher.removeObserver(finished)
    assert (machine.powered, machine.up, lab_bmcs.lab.ssh.listening(machine)) == (True, True, True)
    assert await client.power_state(machine.mgmt_ip) is True
    # The cancelled caller hears nothing more.
    assert lines == ["soft power off requested", "powered off"]
    assert [event for event in lab_bmcs.watcher.events if event[0] == machine.name] == [
        (machine.name, "down"),
        (machine.name, "up"),
    ]


@pytest_twisted.ensureDeferred
async def test_close_waits_for_a_cancelled_powercycle(lab_bmcs: LabWithBMCs, clients: Clients) -> None:
    from twisted.internet.defer import CancelledError

    machine = lab_bmcs.lab.machine("t-w864-lab-004")
    up = lab_bmcs.watcher.expect(machine.name, "up")
    client, _, cycle = await _cancel_during_the_pause(lab_bmcs, clients, machine)
    with pytest.raises(CancelledError):
        await cycle
    # A service stop cancels its actions, then closes the clients: the power-on is confirmed first.
    await bounded(Deferred.fromCoroutine(client.close()), 20)
    assert machine.powered is True
    await bounded(up, 10)
    assert machine.up is True
