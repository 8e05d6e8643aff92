"""
The lab's BMCs, seen from the lab: starts their process and keeps it in step with the fleet.

The BMCs themselves (pyghmi's IPMI server) run in a child process,
L{slaveapi.lab.bmc_server}, because pyghmi's server must not share a
process with the reactor or with pyghmi clients. L{LabBMCs} spawns it (more
than one for very large fleets: one process serves at most
C{per_process} BMCs, select() limits it to about a thousand), relays the
chassis commands clients send to the lab's L{PowerControl}, and, as a
power observer, tells the BMCs each machine's power state so that
C{power status} answers the lab's truth, and when it has booted, so that
a one-time boot device a client set (kept by the BMC) is used up:

  - C{off}: power cut at once (L{PowerControl.power_off});
  - C{soft}: an ACPI shutdown request; a running OS stops its buildbot and
    powers off after C{shutdown_delay} seconds and stays off; a machine
    whose OS is not running ignores it (a real one does too), so a power
    cycle has to fall back on a hard off;
  - C{on}: power on; it boots after the lab's boot time, unless it is a
    machine that never comes back (powered, but its OS never starts);
  - C{reset} / C{cycle}: a hard reboot (L{PowerControl.reboot}).

Every BMC listens on its machine's C{mgmt_ip} (127.1.X.Y) and one UDP port,
the same for all (IPMI clients are configured with one port).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

import slaveapi
from slaveapi.lab import logs
from slaveapi.lab._child import ChildProcess, Readiness
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl

_log = Logger(namespace="slaveapi.lab.bmc")

_ACTIONS = ("off", "on", "soft", "reset", "cycle")
# After SIGTERM, how long until SIGKILL.
_KILL_GRACE = 3.0
# Stderr lines of a child kept for the error when it dies early.


class LabBMCError(Exception):
    """The BMC process could not be started (the message says why, in one line)."""


def free_udp_port(ip: str, *others: str) -> int:
    """
    A UDP port free on C{ip} and on every address in C{others} right now.

    The port is one the OS picks on C{ip}; if it is taken on another
    address, another is tried. Someone else may take it before it is used.
    """
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((ip, 0))
            port: int = probe.getsockname()[1]
        finally:
            probe.close()
        held: list[socket.socket] = []
        try:
            for other in others:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind((other, port))
            return port
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise LabBMCError(f"no UDP port free on all of {1 + len(others)} addresses")


def _first_failure(failure: Failure) -> Failure:
    """The failure inside a L{defer.FirstError}, or the failure itself."""
    if failure.check(defer.FirstError):
        inner: Failure = cast(defer.FirstError, failure.value).subFailure
        return inner
    return failure


class _BMCProcess(ChildProcess):
    """One child process serving some of the BMCs."""

    def __init__(self, owner: LabBMCs, names: list[str]) -> None:
        super().__init__("BMC", LabBMCError, lambda: owner.stopping, self._message)
        self._owner = owner
        self.names = names

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("event") == "power":
            self._owner._power_command(str(message.get("machine")), str(message.get("action")))
        elif message.get("event") == "boot":
            _log.info(
                "lab: BMC of {machine}: next boot from {device}",
                machine=str(message.get("machine")),
                device=str(message.get("device")),
            )


class LabBMCs:
    """
    The running BMCs of a lab (see the module docstring); a L{PowerObserver}.

    @ivar port: the UDP port every BMC listens on.
    @ivar machines: the machines that have a BMC here, by name.
    """

    def __init__(
        self,
        reactor: Any,
        machines: list[LabMachine],
        power: PowerControl,
        port: int,
        clock: Callable[[], float] = time.time,
        shutdown_delay: float = 0.2,
    ) -> None:
        """Set up without starting; L{start} is the way in."""
        self._reactor = reactor
        self._power = power
        self._clock = clock
        self.shutdown_delay = shutdown_delay
        self.port = port
        self.machines: dict[str, LabMachine] = {m.name: m for m in machines if m.bmc and m.mgmt_ip}
        self._children: list[_BMCProcess] = []
        self._child_of: dict[str, _BMCProcess] = {}
        self._shutdowns: dict[str, IDelayedCall] = {}
        self.stopping = False
        self._stopped: Deferred[None] | None = None
        self._readiness = Readiness()

    @classmethod
    def start(
        cls,
        reactor: Any,
        machines: list[LabMachine],
        power: PowerControl,
        port: int,
        username: str,
        password: str,
        *,
        clock: Callable[[], float] = time.time,
        shutdown_delay: float = 0.2,
        per_process: int = 500,
    ) -> LabBMCs:
        """
        Spawn the BMC process(es) for the machines that have a BMC; returns at once.

        @param port: the UDP port of every BMC; 0 picks one free on every
            management address.
        @param username: the only IPMI user; C{password} its password (sent
            to the child over its stdin, never on its command line).
        @param shutdown_delay: seconds from a soft-off request until a
            running machine is off.
        @param per_process: at most this many BMCs in one child process.
        """
        bmcs = cls(reactor, machines, power, port, clock, shutdown_delay)
        names = sorted(bmcs.machines, key=lambda name: bmcs.machines[name].mgmt_ip or "")
        if bmcs.port == 0 and names:
            ips = [bmcs.machines[name].mgmt_ip or "" for name in names]
            bmcs.port = free_udp_port(ips[0], *ips[1:])
        power.add_observer(bmcs)
        for first in range(0, len(names), max(1, per_process)):
            bmcs._spawn(names[first : first + per_process], username, password)
        waits = [child.ready for child in bmcs._children]
        ready = defer.gatherResults(waits, consumeErrors=True) if waits else defer.succeed([])
        ready.addCallbacks(lambda _: bmcs._readiness.settle(None), lambda f: bmcs._readiness.settle(_first_failure(f)))
        _log.info("lab: {count} BMCs on UDP port {port}", count=len(names), port=bmcs.port)
        return bmcs

    @property
    def ready(self) -> Deferred[None]:
        """
        A new Deferred on each access: fires once every BMC listens.

        It fails with L{LabBMCError} if a BMC process exits first (or
        L{stop} came first). Nobody asking means nobody is told: a lab
        stopped before its BMCs were up logs no unhandled error.
        """
        return self._readiness.wait()

    @property
    def pids(self) -> list[int]:
        """The PIDs of the BMC processes still running."""
        return [c.pid for c in self._children if c.pid is not None and not c.exited]

    def _spawn(self, names: list[str], username: str, password: str) -> None:
        child = _BMCProcess(self, names)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(slaveapi.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self._reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-m", "slaveapi.lab.bmc_server"],
            env=env,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self._children.append(child)
        for name in names:
            self._child_of[name] = child
        config = {
            "machines": [
                {"name": name, "ip": self.machines[name].mgmt_ip, "powered": self.machines[name].powered}
                for name in names
            ],
            "port": self.port,
            "username": username,
            "password": password,
        }
        child.send(config)

    # Commands from the BMCs

    def _power_command(self, name: str, action: str) -> None:
        machine = self.machines.get(name)
        if machine is None or action not in _ACTIONS or self.stopping:
            _log.warn("lab: ignoring BMC command {action} for {machine}", action=action, machine=name)
            return
        _log.info("lab: BMC of {machine}: {action}", machine=name, action=action)
        if action == "off":
            self._cancel_shutdown(name)
            self._power.power_off(machine)
        elif action == "on":
            self._cancel_shutdown(name)
            self._power.power_on(machine)
        elif action == "soft":
            if machine.up and name not in self._shutdowns:
                self._shutdowns[name] = self._reactor.callLater(self.shutdown_delay, self._soft_off, machine)
        else:
            self._cancel_shutdown(name)
            self._power.reboot(machine, graceful=False)
        self._tell(machine)

    def _soft_off(self, machine: LabMachine) -> None:
        """The OS finished shutting down: its buildbot stopped, then the power went."""
        self._shutdowns.pop(machine.name, None)
        if not (machine.up and machine.powered):
            return
        if machine.twistd_log and not machine.twistd_log[-1].endswith("Server Shut Down."):
            machine.twistd_log.extend(logs.sigterm_lines(self._clock(), machine.tz_offset))
        self._power.power_off(machine)
        self._tell(machine)

    def _cancel_shutdown(self, name: str) -> None:
        call = self._shutdowns.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _tell(self, machine: LabMachine, booted: bool = False) -> None:
        child = self._child_of.get(machine.name)
        if child is not None and not self.stopping:
            child.send({"machine": machine.name, "powered": machine.powered, "booted": booted})

    # PowerObserver

    def machine_down(self, machine: LabMachine) -> None:
        """Tell the machine's BMC its power state (it may have been cut)."""
        self._tell(machine)

    def machine_up(self, machine: LabMachine) -> None:
        """Tell the machine's BMC its power state (on), and that it booted (its one-time boot device is used)."""
        self._tell(machine, booted=True)

    def stop(self) -> Deferred[None]:
        """End the BMC processes (SIGTERM by PID, SIGKILL if they linger); fires when all are gone."""
        if self._stopped is None:
            self.stopping = True
            for name in list(self._shutdowns):
                self._cancel_shutdown(name)
            for child in self._children:
                child.signal("TERM")

            def kill_all() -> None:
                for child in self._children:
                    child.signal("KILL")

            kill = self._reactor.callLater(_KILL_GRACE, kill_all)
            ended = defer.DeferredList([c.ended for c in self._children], consumeErrors=True)

            def done(_: object) -> None:
                if kill.active():
                    kill.cancel()

            self._stopped = ended.addCallback(done)
        return self._stopped
