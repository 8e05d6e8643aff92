"""The lab's SSH servers, driven by conch's command endpoint (and OpenSSH where installed)."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
from dataclasses import dataclass
from typing import cast

import pytest
import pytest_twisted
from twisted.conch.client.knownhosts import ConsoleUI, KnownHostsFile
from twisted.conch.endpoints import AuthenticationFailed, SSHCommandClientEndpoint
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from slaveapi.lab import Lab, LabMachine, shell
from slaveapi.uptime import parse_net_statistics

from .conftest import BOOT_TIME, NOW

UTC = datetime.UTC


@dataclass
class _Outcome:
    exit_code: int
    stdout: str


class _Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None
        self.finished: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # narrower than the base
        self.reason = reason
        self.finished.callback(None)


def _reactor():
    from twisted.internet import reactor

    return reactor


async def _ssh(
    lab: Lab, machine: LabMachine, command: str, password: str | None = None, user: str = "cltbld"
) -> _Outcome:
    """Run one command over a fresh conch connection; the exit code and stdout."""
    known = KnownHostsFile(FilePath(os.path.join(lab.workdir, "conch_known_hosts")))
    known.addHostKey(machine.ip.encode(), lab.host_key.public())
    endpoint = SSHCommandClientEndpoint.newConnection(
        _reactor(),
        command.encode(),
        user.encode(),
        machine.ip.encode(),
        lab.ssh_port,
        password=(password if password is not None else lab.ssh_password).encode(),
        knownHosts=known,  # type: ignore[arg-type]  # Twisted documents a KnownHostsFile here
        ui=ConsoleUI(lambda: open(os.devnull, "r+b")),  # noqa: SIM115  # ConsoleUI closes what it opens
    )
    collector = await endpoint.connect(protocol.Factory.forProtocol(_Collector))
    await collector.finished
    reason = collector.reason
    assert reason is not None
    code = 0 if reason.check(ConnectionDone) else reason.value.exitCode
    return _Outcome(code, collector.received.decode())


async def _port_open(machine: LabMachine, port: int) -> bool:
    endpoint = TCP4ClientEndpoint(_reactor(), machine.ip, port, timeout=2)
    try:
        connected = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
    except ConnectionRefusedError:
        return False
    cast(protocol.Protocol, connected).transport.loseConnection()
    return True


class _PowerEvents:
    """
    Follows one machine through the lab's power control: a Deferred for each
    of its next "down" and "up", and what its SSH server did at each.
    """

    def __init__(self, lab: Lab, machine: LabMachine) -> None:
        self._lab = lab
        self._machine = machine
        self.down: defer.Deferred[None] = defer.Deferred()
        self.up: defer.Deferred[None] = defer.Deferred()
        #: (event, machine up, machine powered, its SSH server listening) as each happened.
        self.seen: list[tuple[str, bool, bool, bool]] = []
        lab.power.add_observer(self)

    def _happened(self, machine: LabMachine, event: str, fired: defer.Deferred[None]) -> None:
        if machine is not self._machine:
            return
        # The SSH server, an earlier observer, has already opened or closed the listener.
        self.seen.append((event, machine.up, machine.powered, self._lab.ssh.listening(machine)))
        if not fired.called:
            fired.callback(None)

    def machine_down(self, machine: LabMachine) -> None:
        self._happened(machine, "down", self.down)

    def machine_up(self, machine: LabMachine) -> None:
        self._happened(machine, "up", self.up)


async def _bounded(event: defer.Deferred[None]) -> None:
    """A safety net for an event that must come, not a claim about how fast."""
    await event.addTimeout(60, _reactor())


@pytest_twisted.ensureDeferred
async def test_linux_commands(lab: Lab) -> None:
    machine = lab.machine("bld-linux64-lab-001")
    uptime = await _ssh(lab, machine, "uptime")
    load = ", ".join(f"{value:.2f}" for value in machine.load)
    assert uptime == _Outcome(0, f" 23:23:05 up 78 days, 21:57,  1 user,  load average: {load}\n")
    assert await _ssh(lab, machine, "cat /proc/uptime") == _Outcome(0, "6818232.00 11590994.40\n")
    tail = await _ssh(lab, machine, "tail -n 5 /builds/slave/twistd.log")
    assert tail == _Outcome(0, "".join(line + "\n" for line in machine.twistd_log[-5:]))
    tail = await _ssh(lab, machine, "tail -3 /builds/slave/twistd.log.1")
    assert tail == _Outcome(0, "".join(line + "\n" for line in machine.twistd_log_1[-3:]))
    assert await _ssh(lab, machine, "tail -n 5 /builds/slave/missing.log") == _Outcome(1, "")
    assert await _ssh(lab, machine, "net statistics server") == _Outcome(127, "")
    assert await _ssh(lab, machine, "frobnicate --now") == _Outcome(127, "")


@pytest_twisted.ensureDeferred
async def test_a_long_log_tail_arrives_whole(lab: Lab) -> None:
    machine = lab.machine("bld-linux64-lab-001")
    machine.twistd_log.extend(f"2026-11-27 23:00:00+0000 [-] filler line {n:06d} " + "x" * 80 for n in range(5000))
    tail = await _ssh(lab, machine, "tail -n 5000 /builds/slave/twistd.log")
    assert tail == _Outcome(0, "".join(line + "\n" for line in machine.twistd_log[-5000:]))


@pytest_twisted.ensureDeferred
async def test_macos_commands(lab: Lab) -> None:
    machine = lab.machine("t-yosemite-r7-lab-003")
    load = " ".join(f"{value:.2f}" for value in machine.load)
    assert await _ssh(lab, machine, "uptime") == _Outcome(0, f" 16:23  up 2 mins, 3 users, load averages: {load}\n")
    assert await _ssh(lab, machine, "cat /proc/uptime") == _Outcome(1, "")
    tail = await _ssh(lab, machine, "tail -n 2 /builds/slave/twistd.log")
    assert tail.stdout.endswith("[Broker,client] Connected to buildmaster; worker is ready\n")


@pytest_twisted.ensureDeferred
async def test_windows_commands(lab: Lab) -> None:
    machine = lab.machine("t-w864-lab-004")
    statistics = await _ssh(lab, machine, "net statistics server")
    assert statistics == _Outcome(0, shell.net_statistics_server("t-w864-lab-004", machine.booted_at))
    assert statistics.stdout.startswith(
        "Server Statistics for \\\\T-W864-LAB-004\r\n\r\n\r\nStatistics since 11/22/2026"
    )
    assert parse_net_statistics(statistics.stdout, datetime.datetime.fromtimestamp(NOW, UTC)) == machine.uptime(NOW)
    tail = await _ssh(lab, machine, "tail -n 4 /c/slave/twistd.log")
    assert tail == _Outcome(0, "".join(line + "\n" for line in machine.twistd_log[-4:]))
    assert await _ssh(lab, machine, "uptime") == _Outcome(127, "")


@pytest_twisted.ensureDeferred
async def test_a_foopy_serves_its_devices_logs(lab: Lab) -> None:
    device = lab.machine("panda-0008")
    foopy = lab.machine(device.foopy or "")
    tail = await _ssh(lab, foopy, "tail -n 2 /builds/panda-0008/twistd.log")
    assert tail == _Outcome(0, "".join(line + "\n" for line in device.twistd_log[-2:]))
    assert await _ssh(lab, foopy, "uptime") == _Outcome(
        0, " 16:23:05 up 33 min,  1 user,  load average: 0.35, 0.40, 0.42\n")


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_and_refused_logins(lab: Lab) -> None:
    healthy = lab.machine("bld-linux64-lab-001")
    with pytest.raises(AuthenticationFailed):
        await _ssh(lab, healthy, "uptime", password="wrong-first")
    with pytest.raises(AuthenticationFailed):
        await _ssh(lab, healthy, "uptime", user="root")
    refusing = lab.machine("bld-linux64-lab-006")
    assert await _port_open(refusing, lab.ssh_port)
    with pytest.raises(AuthenticationFailed):
        await _ssh(lab, refusing, "uptime")


@pytest_twisted.ensureDeferred
async def test_dead_machine_has_no_ssh_and_device_lets_nobody_in(lab: Lab) -> None:
    dead = lab.machine("t-linux64-lab-007")
    assert not await _port_open(dead, lab.ssh_port)
    with pytest.raises(ConnectionRefusedError):
        await _ssh(lab, dead, "uptime")
    # A device answers on its port (so probes see it) but its buildbot is on the foopy.
    device = lab.machine("panda-0008")
    assert await _port_open(device, lab.ssh_port)
    with pytest.raises(AuthenticationFailed):
        await _ssh(lab, device, "uptime")
    # Powering the dead one on or resetting it does not bring it back: no boot is even scheduled.
    lab.power_on(dead.name)
    assert (dead.powered, dead.up, lab.power.booting(dead)) == (True, False, False)
    lab.reboot(dead.name)
    assert (dead.powered, dead.up, lab.power.booting(dead)) == (True, False, False)


@pytest_twisted.ensureDeferred
async def test_reboot_command_takes_the_machine_away_then_back(lab: Lab) -> None:
    machine = lab.machine("tst-linux64-lab-002")
    lines = len(machine.twistd_log)
    events = _PowerEvents(lab, machine)
    assert await _ssh(lab, machine, "sudo reboot") == _Outcome(0, "")
    await _bounded(events.down)
    assert machine.twistd_log[lines : lines + 3] == [
        "2026-11-27 15:23:05-0800 [-] Received SIGTERM, shutting down.",
        "2026-11-27 15:23:05-0800 [-] Main loop terminated.",
        "2026-11-27 15:23:05-0800 [-] Server Shut Down.",
    ]
    await _bounded(events.up)
    # Down first, powered all along, SSH closed while down and open again once up.
    assert events.seen == [("down", False, True, False), ("up", True, True, True)]
    assert await _port_open(machine, lab.ssh_port)
    assert machine.booted_at == NOW
    assert await _ssh(lab, machine, "cat /proc/uptime") == _Outcome(0, "0.00 0.00\n")
    boot = machine.twistd_log[lines + 3 :]
    assert boot[0] == "2026-11-27 15:23:05-0800 [-] Log opened."
    assert (
        boot[3] == "2026-11-27 15:23:05-0800 [-] Starting BuildSlave -- version: 0.8.2-hg-41f0fbee10f4-production-0.8"
    )
    assert boot[-1] == (
        "2026-11-27 15:23:06-0800 [Broker,client] Connected to bm02.build.scl3.slaveapi.test:9002; slave is ready")


@pytest_twisted.ensureDeferred
async def test_windows_shutdown_command_reboots(lab: Lab) -> None:
    machine = lab.machine("t-w864-lab-004")
    events = _PowerEvents(lab, machine)
    assert await _ssh(lab, machine, "shutdown -f -t 3 -r") == _Outcome(0, "")
    await _bounded(events.up)
    assert events.seen == [("down", False, True, False), ("up", True, True, True)]
    assert await _port_open(machine, lab.ssh_port)
    statistics = await _ssh(lab, machine, "net statistics server")
    assert "Statistics since 11/27/2026 11:23:05 PM\r\n" in statistics.stdout


@pytest_twisted.ensureDeferred
async def test_power_off_and_on(lab: Lab) -> None:
    machine = lab.machine("bld-linux64-lab-001")
    lab.power_off(machine.name)
    assert not await _port_open(machine, lab.ssh_port)
    assert (machine.up, machine.powered) == (False, False)
    events = _PowerEvents(lab, machine)
    lab.power_on(machine.name)
    assert lab.power.booting(machine)
    await _bounded(events.up)
    assert events.seen == [("up", True, True, True)]
    assert await _port_open(machine, lab.ssh_port)
    assert (machine.up, machine.powered, machine.booted_at) == (True, True, NOW)
    assert machine.twistd_log[-1].endswith("Connected to buildmaster; worker is ready")


@pytest_twisted.ensureDeferred
async def test_a_hung_machine_stops_answering_powered_until_rebooted(lab: Lab) -> None:
    machine = lab.machine("bld-linux64-lab-001")
    events = _PowerEvents(lab, machine)
    lab.hang(machine.name)
    await _bounded(events.down)
    assert not await _port_open(machine, lab.ssh_port)
    # Powered all along: a power-on changes nothing, a reset (or power cycle) boots it.
    lab.power_on(machine.name)
    assert (machine.up, machine.powered, lab.power.booting(machine)) == (False, True, False)
    lab.reboot(machine.name)
    await _bounded(events.up)
    assert events.seen == [("down", False, True, False), ("up", True, True, True)]
    assert await _port_open(machine, lab.ssh_port)


@pytest_twisted.ensureDeferred
async def test_stop_closes_every_listener_and_cancels_pending_boots(tmp_path) -> None:
    lab = Lab.start(_reactor(), slaves=4, workdir=str(tmp_path), boot_time=BOOT_TIME)
    machine = lab.machine("bld-linux64-lab-001")
    assert await _port_open(machine, lab.ssh_port)
    lab.reboot("tst-linux64-lab-002")
    await lab.stop()
    assert not await _port_open(machine, lab.ssh_port)
    assert not any(lab.ssh.listening(host) for host in lab.fleet.all_hosts())
    assert not lab.power.booting(lab.machine("tst-linux64-lab-002"))


# --- OpenSSH as the client ------------------------------------------------------------


def _askpass(directory: str, password: str) -> str:
    path = os.path.join(directory, "askpass.sh")
    with open(path, "w", encoding="ascii") as handle:
        handle.write(f"#!/bin/sh\necho '{password}'\n")
    os.chmod(path, stat.S_IRWXU)
    return path


@pytest_twisted.ensureDeferred
async def test_openssh_client_sees_stdout_stderr_and_exit_status(lab: Lab, tmp_path) -> None:
    ssh = shutil.which("ssh")
    assert ssh, "OpenSSH's ssh client is part of the test environment"
    machine = lab.machine("bld-linux64-lab-001")
    env = {
        "SSH_ASKPASS": _askpass(str(tmp_path), lab.ssh_password),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    options = [
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", "-o", "BatchMode=no",
        "-o", "ConnectTimeout=5", "-p", str(lab.ssh_port), f"cltbld@{machine.ip}",
    ]
    out, err, code = await getProcessOutputAndValue(ssh, options + ["tail -n 1 /nope"], env=env)
    assert (out, err, code) == (b"", b"tail: cannot open '/nope' for reading: No such file or directory\n", 1)
    out, err, code = await getProcessOutputAndValue(ssh, options + ["cat /proc/uptime"], env=env)
    assert (out, err, code) == (b"6818232.00 11590994.40\n", b"", 0)


@pytest_twisted.ensureDeferred
async def test_ssh_keyscan_sees_the_lab_host_key(lab: Lab) -> None:
    keyscan = shutil.which("ssh-keyscan")
    assert keyscan, "OpenSSH's ssh-keyscan is part of the test environment"
    machine = lab.machine("t-w864-lab-004")
    out, _, code = await getProcessOutputAndValue(
        keyscan, ["-T", "5", "-t", "ed25519", "-p", str(lab.ssh_port), machine.ip], env={})
    public = lab.host_key.public().toString("openssh").decode()
    assert (code, out.decode()) == (0, f"[{machine.ip}]:{lab.ssh_port} {public}\n")
