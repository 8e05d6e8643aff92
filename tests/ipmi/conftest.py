"""
Fixtures for the IPMI tests: OpenIPMI's ipmi_sim, ipmitool runs, lab BMCs, IPMI clients.

Every process started here (ipmi_sim, ipmitool, lab BMC processes, IPMI
workers) is started from the reactor and stopped by its PID at teardown;
every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from slaveapi.clients.ipmi import IPMIClient
    from slaveapi.config import IPMIConfig
    from slaveapi.lab.machines import LabMachine

IPMI_SIM = "/usr/bin/ipmi_sim"
IPMITOOL = "/usr/bin/ipmitool"

#: The ipmi_sim user; a throwaway password only a loopback simulator started here accepts.
SIM_USER = "ADMIN"
SIM_PASSWORD = "sim-Test-pw-0815"


def _reactor() -> Any:
    # Imported late: conftests load before pytest-twisted installs the asyncio reactor.
    from twisted.internet import reactor

    return reactor


@dataclass
class ProcessResult:
    """What a finished process left behind."""

    code: int | None
    out: str
    err: str


class _Collect(ProcessProtocol):
    """Collects a process's output and exit code."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def kill_pid(pid: int | None, sig: int = signal.SIGKILL) -> None:
    """Signal a process by PID; gone already is fine."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ipmi_worker_pids() -> set[int]:
    """The live IPMI worker processes of this test process, as the system lists them."""
    found = set()
    parent = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                state, ppid = handle.read().rsplit(")", 1)[-1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and state != "Z" and b"slaveapi.clients._ipmi_worker" in argv:
            found.add(int(entry))
    return found


async def bounded(waiting: Deferred[Any], seconds: float) -> Any:
    """Await C{waiting} for at most C{seconds} (then it fails with TimeoutError)."""
    return await waiting.addTimeout(seconds, _reactor())


async def run_process(argv: list[str], timeout: float = 10.0, env: dict[str, str] | None = None) -> ProcessResult:
    """Run a program to completion from the reactor; killed by PID after C{timeout} seconds."""
    reactor = _reactor()
    protocol = _Collect()
    reactor.spawnProcess(protocol, argv[0], argv, env=env if env is not None else dict(os.environ))
    killer = reactor.callLater(timeout, kill_pid, protocol.pid)
    try:
        code = await protocol.ended
    finally:
        if killer.active():
            killer.cancel()
    return ProcessResult(code, protocol.out.decode("utf-8", "replace"), protocol.err.decode("utf-8", "replace"))


async def ipmitool(host: str, port: int, password: str, *command: str, timeout: float = 10.0) -> ProcessResult:
    """C{ipmitool -I lanplus -C 3} against one BMC; the password travels in IPMI_PASSWORD (C{-E})."""
    env = dict(os.environ, IPMI_PASSWORD=password)
    argv = [IPMITOOL, "-I", "lanplus", "-C", "3", "-N", "1", "-R", "2", "-H", host, "-p", str(port), "-U", SIM_USER,
            "-E", *command]
    return await run_process(argv, timeout, env)


# --- ipmi_sim -----------------------------------------------------------------

_CHASSIS_SCRIPT = """#!/bin/sh
# ipmi_sim chassis_control: "<mc> get power" / "<mc> set power 0|1" / "set reset 1" / "set shutdown 1"
# / "get boot" / "set boot none|pxe|default|bios|cdrom" (ipmi_sim's names of the boot device selectors).
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
shift
case "$1 $2" in
  "get power") if [ -f "$dir/power" ]; then echo "power:$(cat "$dir/power")"; else echo "power:1"; fi ;;
  "set power") echo "$3" > "$dir/power" ;;
  "set shutdown") if [ -f "$dir/refuse_shutdown" ]; then exit 1; fi; echo 0 > "$dir/power" ;;
  "get boot") if [ -f "$dir/boot" ]; then echo "boot:$(cat "$dir/boot")"; else echo "boot:none"; fi ;;
  "set boot") if [ -f "$dir/refuse_boot" ]; then exit 1; fi; echo "$3" > "$dir/boot" ;;
esac
exit 0
"""

_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


@dataclass
class IPMISim:
    """A running ipmi_sim: its port, and the files its chassis script keeps."""

    port: int
    directory: Path
    pid: int | None = None
    ended: Any = None

    @property
    def powered(self) -> bool:
        power = self.directory / "power"
        return not power.exists() or power.read_text().strip() == "1"

    def refuse_soft_off(self) -> None:
        """From now on the chassis script fails C{set shutdown} (ipmi_sim answers an error)."""
        (self.directory / "refuse_shutdown").touch()

    def refuse_boot_device(self) -> None:
        """From now on the chassis script fails C{set boot} (ipmi_sim answers an error)."""
        (self.directory / "refuse_boot").touch()

    @property
    def boot(self) -> str:
        """The boot device ipmi_sim last handed its chassis script (C{none} if none)."""
        boot = self.directory / "boot"
        return boot.read_text().strip() if boot.exists() else "none"

    def set_powered(self, powered: bool) -> None:
        (self.directory / "power").write_text("1\n" if powered else "0\n")

    @property
    def calls(self) -> list[str]:
        calls = self.directory / "calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def control_calls(self) -> list[str]:
        """The chassis script's calls but C{get power}."""
        return [call for call in self.calls if " get " not in call]


def _write_sim_files(directory: Path, port: int) -> None:
    script = directory / "chassis.sh"
    script.write_text(_CHASSIS_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (directory / "sim.emu").write_text(_EMU)
    (directory / "state").mkdir()
    (directory / "lan.conf").write_text(
        'name "slaveapi-test"\n'
        "set_working_mc 0x20\n"
        "  startlan 1\n"
        f"    addr 127.0.0.1 {port}\n"
        "    priv_limit admin\n"
        "    allowed_auths_callback none md2 md5 straight\n"
        "    allowed_auths_user none md2 md5 straight\n"
        "    allowed_auths_operator none md2 md5 straight\n"
        "    allowed_auths_admin none md2 md5 straight\n"
        "    guid a123456789abcdefa123456789abcdef\n"
        "  endlan\n"
        f'  chassis_control "{script} 0x20"\n'
        f'  user 2 true "{SIM_USER}" "{SIM_PASSWORD}" admin 10 none md2 md5 straight\n'
    )


@pytest_twisted.async_yield_fixture
async def ipmi_sim(tmp_path: Path) -> AsyncIterator[IPMISim]:
    """OpenIPMI's simulator on a free 127.0.0.1 UDP port, chassis on; killed by PID afterwards."""
    from twisted.internet.task import deferLater

    from slaveapi.lab.bmc import free_udp_port

    reactor = _reactor()
    directory = tmp_path / "ipmi_sim"
    directory.mkdir()
    port = free_udp_port("127.0.0.1")
    _write_sim_files(directory, port)
    sim = IPMISim(port, directory)
    protocol = _Collect()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        argv = [IPMI_SIM, "-c", str(directory / "lan.conf"), "-f", str(directory / "sim.emu"),
                "-s", str(directory / "state"), "-n"]
        reactor.spawnProcess(protocol, IPMI_SIM, argv, env=dict(os.environ), path=str(directory),
                             childFDs={0: devnull, 1: "r", 2: "r"})
    finally:
        os.close(devnull)
    sim.pid, sim.ended = protocol.pid, protocol.ended
    try:
        for _ in range(50):  # ready in well under a second
            result = await ipmitool("127.0.0.1", port, SIM_PASSWORD, "power", "status", timeout=3)
            if result.code == 0:
                break
            if protocol.ended.called:
                raise AssertionError(f"ipmi_sim exited: {protocol.err.decode(errors='replace')[-500:]}")
            await deferLater(reactor, 0.1)
        else:
            raise AssertionError("ipmi_sim did not answer within 5 s")
        (directory / "calls").unlink(missing_ok=True)
        yield sim
    finally:
        kill_pid(sim.pid, signal.SIGTERM)
        killer = reactor.callLater(3, kill_pid, sim.pid)
        await bounded(protocol.ended, 6)
        if killer.active():
            killer.cancel()


# --- IPMI clients -------------------------------------------------------------


@dataclass
class Clients:
    """Makes IPMI clients and closes them all at teardown (no worker left behind)."""

    made: list[IPMIClient] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    #: Workers alive before the test (none, unless another test leaked one): not this test's.
    before: set[int] = field(default_factory=ipmi_worker_pids)

    def make(self, config: IPMIConfig, password: str | None, username: str = SIM_USER) -> IPMIClient:
        from slaveapi.clients.ipmi import IPMIClient
        from slaveapi.config import Secret

        client = IPMIClient(_reactor(), config, username, Secret(password) if password is not None else None)
        self.made.append(client)
        return client

    def workers(self) -> list[int]:
        """The PIDs of the IPMI worker processes the test's clients have running now."""
        return sorted(ipmi_worker_pids() - self.before)

    def remember_pids(self) -> None:
        self.pids.update(self.workers())


@pytest_twisted.async_yield_fixture
async def clients() -> AsyncIterator[Clients]:
    """IPMI clients for one test; every worker process is gone after it."""
    made = Clients()
    yield made
    made.remember_pids()
    for client in made.made:
        await bounded(Deferred.fromCoroutine(client.close()), 15)
    for pid in made.pids:
        assert not pid_alive(pid), f"IPMI worker {pid} outlived its client"


# --- lab BMCs -----------------------------------------------------------------


class PowerWatcher:
    """A power observer that hands out Deferreds for a machine's next down or up."""

    def __init__(self) -> None:
        self._waiting: list[tuple[str, str, Deferred[None]]] = []
        self.events: list[tuple[str, str]] = []

    def expect(self, name: str, event: str) -> Deferred[None]:
        """Fires the next time machine C{name} goes C{event} ("down" or "up")."""
        waiting: Deferred[None] = Deferred()
        self._waiting.append((name, event, waiting))
        return waiting

    def _happened(self, machine: LabMachine, event: str) -> None:
        self.events.append((machine.name, event))
        for entry in list(self._waiting):
            if entry[0] == machine.name and entry[1] == event:
                self._waiting.remove(entry)
                entry[2].callback(None)

    def machine_down(self, machine: LabMachine) -> None:
        self._happened(machine, "down")

    def machine_up(self, machine: LabMachine) -> None:
        self._happened(machine, "up")


@pytest.fixture
def watcher() -> PowerWatcher:
    return PowerWatcher()
