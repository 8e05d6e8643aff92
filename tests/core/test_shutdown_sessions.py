"""
The wait for a buildbot's shutdown holds no SSH session between its reads.

SSH places to a host are limited (C{[ssh] per_host}), and a device's
twistd.log is on its foopy, which serves many devices: a session held
through a wait of up to C{[buildbot] max_wait} (hours) would keep every
other action on that foopy out. Time is a L{Clock}; SSH, DNS, slavealloc and
the master are fakes.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from slaveapi.actions import ActionLog, ActionRun
from slaveapi.actions._base import StatusLines
from slaveapi.actions.shutdown_buildslave import GRACEFUL, stop_buildbot
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.clients.ssh import CommandResult
from slaveapi.config import BuildbotConfig
from slaveapi.machines import Slave
from slaveapi.testing import (
    FakeHost,
    FakeMaster,
    Fakes,
    FakeSlavealloc,
    FakeSSH,
    fake_config,
    make_fakes,
    slave_record,
)

_FOOPY_IP = "127.0.5.1"
_BASEDIR = "/builds/panda-0008"
_POLL = 30.0
_RUNNING = "2026-11-28 01:00:00-0700 [-] RunProcess._startCommand"
_SHUTDOWN = [
    "2026-11-28 01:30:47-0700 [-] slave shutting down on command from master",
    "2026-11-28 01:30:48-0700 [-] Main loop terminated.",
    "2026-11-28 01:30:48-0700 [-] Server Shut Down.",
]


class _Foopy:
    """foopy01's twistd.log (C{log}), read over the fake SSH."""

    def __init__(self, ssh: FakeSSH) -> None:
        self.log = [_RUNNING]
        ssh.answer(f"tail -n 100 {_BASEDIR}/twistd.log.1", CommandResult(1, "", "tail: cannot open"), host=_FOOPY_IP)
        ssh.answer(f"tail -n 100 {_BASEDIR}/twistd.log", self._tail, host=_FOOPY_IP)

    def _tail(self, host: str) -> CommandResult:
        return CommandResult(0, "\n".join(self.log) + "\n", "")


def _device_run(clock: Clock) -> tuple[ActionRun, Slave, Fakes]:
    """A shutdown of device panda-0008, whose buildbot runs on foopy01."""
    master = MasterRecord(3, "bm03-tests2", "bm03.example.test", 8010, 9003, True)
    record = slave_record("panda-0008", current_masterid=3, basedir=_BASEDIR)
    config = fake_config(buildbot=BuildbotConfig(poll_interval=_POLL, max_wait=3600.0))
    fakes = make_fakes([FakeHost("foopy01", _FOOPY_IP)], config=config, clock=clock)
    fakes.slavealloc = FakeSlavealloc([record], masters=[master])
    fakes.master = FakeMaster(flavour="0.8")
    slave = Slave(name="panda-0008", slavealloc=record, buildbot_host="foopy01.example.test")
    log = ActionLog(Logger(), "panda-0008", 1, "shutdown_buildslave")
    run = ActionRun(fakes.context(), "panda-0008", 1, "shutdown_buildslave", log, lambda text: None)
    return run, slave, fakes


@pytest_twisted.ensureDeferred
async def test_no_session_to_the_foopy_is_held_while_waiting_for_the_shutdown() -> None:
    clock = Clock()
    run, slave, fakes = _device_run(clock)
    ssh, foopy = fakes.ssh, _Foopy(fakes.ssh)
    status = StatusLines(run)

    stopping = ensureDeferred(stop_buildbot(run, slave, status, reason="test"))

    # The master was asked, and the first poll found the buildbot still running its command.
    assert [worker for _, worker, _ in fakes.master.requests] == ["panda-0008"] and not stopping.called
    assert status.lines[-1] == "Waiting for the buildbot to shut down...(it is finishing its running command)"
    assert ssh.open_sessions == 0
    for poll in range(5):
        clock.advance(_POLL)
        assert not stopping.called
        assert ssh.open_sessions == 0, f"a session is held through the wait after poll {poll + 1}"
    # One session for the first read, one per poll since: each closed as soon as read.
    assert ssh.logins == [_FOOPY_IP] * (1 + 1 + 5)

    foopy.log.extend(_SHUTDOWN)
    clock.advance(_POLL)
    assert stopping.called
    outcome = await stopping
    assert outcome.kind == GRACEFUL
    assert ssh.open_sessions == 0
