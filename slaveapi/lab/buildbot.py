"""
The lab's Buildbot masters (0.8 web status) and how its machines' buildbots shut down.

Every lab master answers Buildbot 0.8's graceful shutdown request,
C{POST /buildslaves/<name>/shutdown}, on the lab's HTTP port (the masters'
names all resolve to 127.0.0.1; the C{Host} header says which master is
asked). As 0.8 did, the master answers with a redirect to the slave's page
(HTTP 302) for a slave attached to it, and 404 for any other name.

After an accepted request the machine's buildbot behaves like a real one:
a machine running a command finishes it first (after C{command_delay}
seconds, logging the command's completion and marking its buildapi job
done), then writes the shutdown lines ("... shutting down on command from
master", "Main loop terminated.", "Server Shut Down.") to its twistd.log,
in its own log style and UTC offset, at the current time. A buildbot that is
already stopped, or a machine that went down or rebooted in the meantime,
writes nothing.
"""

from __future__ import annotations

import ast
import datetime
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from slaveapi.lab import logs
from slaveapi.lab.fleet import Fleet
from slaveapi.lab.machines import LabMachine, LabMaster

# What a buildbot logs when a command starts, ends, and when it (re)starts or stops.
_COMMAND_START = "RunProcess._startCommand"
_COMMAND_END = ("command finished with", "commandComplete", "command_complete")
_RESET = ("Server Shut Down.", "Log opened.", "Starting Worker", "Starting BuildSlave")
_ARGV_4X = re.compile(r"\(command (\[.*\])\): RunProcess\._startCommand")
_TIMESTAMP_LENGTH = len("2026-11-27 23:23:05+0000")


@dataclass(frozen=True)
class LabShutdownRequest:
    """One graceful shutdown request a lab master received."""

    master: str
    slave: str
    at: float


@dataclass(frozen=True)
class RunningCommand:
    """The command a buildbot is running: when it started (if the log says) and its argv (4.x logs show it)."""

    started: float | None
    argv: list[str]


def _json(request: IRequest, body: Any, status: int) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return json.dumps(body).encode("utf-8")


class LabBuildbots:
    """
    The lab masters' shutdown endpoint and the buildbots' shutdowns.

    Mounted by L{slaveapi.lab.http.LabHTTP} at C{/buildslaves/}.

    @param clock: the wall clock log lines are stamped with.
    @param command_delay: seconds a running command takes to finish after a
        shutdown was requested.
    @param shutdown_delay: seconds an idle buildbot takes to shut down.
    @ivar requests: every request received, oldest first (tests look at it).
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        fleet: Fleet,
        clock: Callable[[], float],
        command_delay: float = 1.0,
        shutdown_delay: float = 0.05,
    ) -> None:
        self._reactor = reactor
        self.fleet = fleet
        self._clock = clock
        self.command_delay = command_delay
        self.shutdown_delay = shutdown_delay
        self.requests: list[LabShutdownRequest] = []
        self._pending: dict[str, IDelayedCall] = {}
        self._awaiting: dict[str, list[Deferred[LabShutdownRequest]]] = {}

    def next_request(self, name: str) -> Deferred[LabShutdownRequest]:
        """
        Fires with the next shutdown request a master accepts for machine
        C{name} (its short name): a test waits on it rather than polling.
        The caller bounds the wait (C{addTimeout}).
        """
        waiting: Deferred[LabShutdownRequest] = Deferred()
        self._awaiting.setdefault(name, []).append(waiting)
        return waiting

    def stop(self) -> None:
        """Cancel the shutdowns still to happen."""
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()

    def pending(self, name: str) -> bool:
        """Whether the machine's buildbot was asked to shut down and has not yet."""
        return name in self._pending

    def _master_asked(self, request: IRequest) -> LabMaster | None:
        host = (request.getHeader(b"host") or b"").decode("latin-1").rsplit(":", 1)[0].lower()
        return next((master for master in self.fleet.masters if master.fqdn.lower() == host), None)

    @app.route("/<name>/shutdown", methods=["POST"])
    def shutdown(self, request: IRequest, name: str) -> bytes:
        """0.8's C{/buildslaves/<name>/shutdown}: accepted with a redirect, or 404."""
        machine = self.fleet.machine(name)
        if machine is None or machine not in self.fleet.machines or machine.master is None:
            return _json(request, {"error": "not found", "msg": f"no such slave {name}"}, 404)
        asked = self._master_asked(request)
        if asked is not None and asked.nickname != machine.master:
            return _json(request, {"error": "not found", "msg": f"{name} is not attached to {asked.nickname}"}, 404)
        accepted = LabShutdownRequest(machine.master, machine.name, self._clock())
        self.requests.append(accepted)
        self.request_shutdown(machine)
        for waiting in self._awaiting.pop(machine.name, []):
            if not waiting.called:
                waiting.callback(accepted)
        request.setResponseCode(302)
        request.setHeader(b"Location", f"../../buildslaves/{machine.name}".encode())
        return b""

    def request_shutdown(self, machine: LabMachine) -> None:
        """The master tells the machine's buildbot to stop once its command (if any) is done."""
        if machine.name in self._pending or not machine.up or not machine.twistd_log:
            return
        if _is_stopped(machine.twistd_log):
            return
        running = running_command(machine.twistd_log)
        delay = self.command_delay if running is not None else self.shutdown_delay
        self._log.info(
            "lab: {machine}'s buildbot shuts down in {delay}s (running a command: {running})",
            machine=machine.name, delay=delay, running=running is not None,
        )
        self._pending[machine.name] = self._reactor.callLater(
            delay, self._shut_down, machine, running, machine.booted_at
        )

    def _shut_down(self, machine: LabMachine, running: RunningCommand | None, booted_at: float) -> None:
        self._pending.pop(machine.name, None)
        if not machine.up or machine.booted_at != booted_at or _is_stopped(machine.twistd_log):
            return  # it went down, rebooted or stopped meanwhile
        now = self._clock()
        if running is not None and running_command(machine.twistd_log) is not None:
            machine.twistd_log.extend(
                logs.command_end_lines(
                    machine.log_style, now, machine.tz_offset, _elapsed(running, now), running.argv
                )
            )
            for job in machine.recent_jobs:
                if job.endtime is None:
                    job.endtime, job.result = int(now), 0
        machine.twistd_log.extend(logs.graceful_shutdown_lines(machine.log_style, now, machine.tz_offset))
        self._log.info("lab: {machine}'s buildbot shut down on command from its master", machine=machine.name)


def _is_stopped(lines: list[str]) -> bool:
    return bool(lines) and lines[-1].endswith("Server Shut Down.")


def running_command(lines: list[str]) -> RunningCommand | None:
    """The command the log shows running (started, not finished since), or None."""
    for line in reversed(lines):
        if any(marker in line for marker in _COMMAND_END) or any(marker in line for marker in _RESET):
            return None
        if _COMMAND_START in line:
            match = _ARGV_4X.search(line)
            argv = ast.literal_eval(match.group(1)) if match else []
            return RunningCommand(started=_epoch(line), argv=[str(item) for item in argv])
    return None


def _epoch(line: str) -> float | None:
    """The Unix time a twistd.log line was written at, or None for a line without one."""
    try:
        return datetime.datetime.strptime(line[:_TIMESTAMP_LENGTH], "%Y-%m-%d %H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _elapsed(running: RunningCommand, now: float) -> float:
    return max(0.0, now - running.started) if running.started is not None else 0.0
