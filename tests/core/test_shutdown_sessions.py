"""
The wait for a buildbot's shutdown holds no SSH session between its reads.

SSH places to a host are limited (C{[ssh] per_host}), and a device's
twistd.log is on its foopy, which serves many devices: a session held
through a wait of up to C{[buildbot] max_wait} (hours) would keep every
other action on that foopy out. Time is a L{Clock}; SSH, DNS, slavealloc and
the master are fakes.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger

from slaveapi.actions import ActionLog, ActionRun
from slaveapi.actions._base import StatusLines
from slaveapi.actions.shutdown_buildslave import GRACEFUL, stop_buildbot
from slaveapi.clients.dns import HostInfo
from slaveapi.clients.master import ShutdownRequested
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.clients.ssh import CommandResult
from slaveapi.config import BuildbotConfig
from slaveapi.machines import Slave

from fake_fleet import slave_record

_FOOPY_IP = "127.0.5.1"
_POLL = 30.0
_RUNNING = "2026-11-28 01:00:00-0700 [-] RunProcess._startCommand"
_SHUTDOWN = [
    "2026-11-28 01:30:47-0700 [-] slave shutting down on command from master",
    "2026-11-28 01:30:48-0700 [-] Main loop terminated.",
    "2026-11-28 01:30:48-0700 [-] Server Shut Down.",
]


class _FoopySSH:
    """
    SSH to the foopy: every session reads C{log}; C{open} counts the
    sessions open now, C{opened} all that were ever opened.
    """

    def __init__(self) -> None:
        self.log = [_RUNNING]
        self.open = 0
        self.opened = 0

    async def session(self, host: str, **kwargs: Any) -> _FoopySession:
        assert host == _FOOPY_IP
        self.open += 1
        self.opened += 1
        return _FoopySession(self)


class _FoopySession:
    def __init__(self, ssh: _FoopySSH) -> None:
        self._ssh = ssh
        self._closed = False

    async def run(self, command: str, **kwargs: Any) -> CommandResult:
        assert not self._closed
        if command.endswith("twistd.log.1"):
            return CommandResult(1, "", "tail: cannot open")
        return CommandResult(0, "\n".join(self._ssh.log) + "\n", "")

    def close(self) -> Deferred[None]:
        if not self._closed:
            self._closed = True
            self._ssh.open -= 1
        return succeed(None)


def _device_run(clock: Clock, ssh: _FoopySSH, asked: list[str]) -> tuple[ActionRun, Slave]:
    """A shutdown of device panda-0008, whose buildbot runs on foopy01."""
    master = MasterRecord(3, "bm03-tests2", "bm03.example.test", 8010, 9003, True)

    async def get_master(masterid: int) -> MasterRecord:
        return master

    async def lookup_host(name: str) -> HostInfo | None:
        return HostInfo("foopy01", "foopy01.example.test", "example.test", _FOOPY_IP, None)

    async def shutdown_worker(asked_master: MasterRecord, worker: str, reason: str) -> ShutdownRequested:
        asked.append(worker)
        return ShutdownRequested(url="http://bm03/", flavour="0.8", status=302)

    slave = Slave(
        name="panda-0008",
        slavealloc=dataclasses.replace(slave_record("panda-0008"), current_masterid=3),
        buildbot_host="foopy01.example.test",
    )
    clients = SimpleNamespace(
        slavealloc=SimpleNamespace(get_master=get_master),
        dns=SimpleNamespace(lookup_host=lookup_host),
        ssh=ssh,
        master=SimpleNamespace(shutdown_worker=shutdown_worker),
    )
    config = SimpleNamespace(buildbot=BuildbotConfig(poll_interval=_POLL, max_wait=3600.0), timeouts={})
    ctx = SimpleNamespace(clients=clients, config=config, reactor=clock)
    log = ActionLog(Logger(), "panda-0008", 1, "shutdown_buildslave")
    run = ActionRun(ctx, "panda-0008", 1, "shutdown_buildslave", log, lambda text: None)  # type: ignore[arg-type]
    return run, slave


@pytest_twisted.ensureDeferred
async def test_no_session_to_the_foopy_is_held_while_waiting_for_the_shutdown() -> None:
    clock, ssh = Clock(), _FoopySSH()
    asked: list[str] = []
    run, slave = _device_run(clock, ssh, asked)
    status = StatusLines(run)

    stopping = ensureDeferred(stop_buildbot(run, slave, status, reason="test"))

    # The master was asked, and the first poll found the buildbot still running its command.
    assert asked == ["panda-0008"] and not stopping.called
    assert status.lines[-1] == "Waiting for the buildbot to shut down...(it is finishing its running command)"
    assert ssh.open == 0
    for poll in range(5):
        clock.advance(_POLL)
        assert not stopping.called
        assert ssh.open == 0, f"a session is held through the wait after poll {poll + 1}"
    # One session for the first read, one per poll since: each closed as soon as read.
    assert ssh.opened == 1 + 1 + 5

    ssh.log.extend(_SHUTDOWN)
    clock.advance(_POLL)
    assert stopping.called
    outcome = await stopping
    assert outcome.kind == GRACEFUL
    assert ssh.open == 0
