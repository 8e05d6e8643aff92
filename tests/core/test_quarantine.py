"""
C{pause_buildslave} and C{unpause_buildslave} on fakes: the texts for a
modern master, a Buildbot 0.8 master, a machine without a master, a master
that fails; the C{reason} rule. The real Buildbot 4 master is in
tests/buildbot/test_real_pause.py.
"""

from __future__ import annotations

import pytest
from twisted.logger import Logger

from slaveapi.actions import ActionFailure, ActionLog, ActionRun, ArgumentError
from slaveapi.actions.quarantine import PAUSE, UNPAUSE, pause_arguments, pause_buildslave, unpause_buildslave
from slaveapi.actions.registry import ACTIONS
from slaveapi.clients.master import MasterError
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.testing import FakeHost, FakeMaster, Fakes, FakeSlavealloc, make_fakes, run_on_clock, slave_record

_MASTER = MasterRecord(3, "bm03-tests2", "bm03.example.test", 8010, 9003, True)


def _fakes(flavour: str = "modern", attached: bool = True) -> Fakes:
    fakes = make_fakes([FakeHost("bld-1", "127.0.4.1")])
    record = slave_record("bld-1", current_masterid=3 if attached else None)
    fakes.slavealloc = FakeSlavealloc([record], masters=[_MASTER])
    fakes.master = FakeMaster(flavour=flavour)
    return fakes


def _run(fakes: Fakes, action: str, client: str | None = "dashboard") -> ActionRun:
    log = ActionLog(Logger(), "bld-1", 42, action)
    return ActionRun(fakes.context(), "bld-1", 42, action, log, lambda text: None, client=client)


def _failure(fakes: Fakes, action: str, **arguments: str) -> str:
    work = pause_buildslave(_run(fakes, action), **arguments) if action == PAUSE.name else unpause_buildslave(
        _run(fakes, action)
    )
    with pytest.raises(ActionFailure) as caught:
        run_on_clock(fakes.clock, work)
    return str(caught.value.payload)


def test_pause_then_unpause_on_a_modern_master() -> None:
    fakes = _fakes()

    text = run_on_clock(fakes.clock, pause_buildslave(_run(fakes, "pause_buildslave"), reason="flaky disk"))

    assert text == "Pausing in master bm03-tests2...Confirmed: the master reports bld-1 paused."
    assert fakes.master.paused == {"bld-1": "flaky disk (SlaveAPI pause_buildslave request 42, requested by dashboard)"}

    text = run_on_clock(fakes.clock, unpause_buildslave(_run(fakes, "unpause_buildslave")))

    assert text == "Unpausing in master bm03-tests2...Confirmed: the master reports bld-1 no longer paused."
    assert fakes.master.paused == {}
    assert fakes.master.controls == [("bm03-tests2", "bld-1", "pause"), ("bm03-tests2", "bld-1", "unpause")]


def test_a_buildbot_08_master_cannot_pause_and_the_failure_says_so() -> None:
    fakes = _fakes(flavour="0.8")

    assert _failure(fakes, "pause_buildslave", reason="flaky disk") == (
        "Pausing in master bm03-tests2...Failed: master bm03-tests2 runs Buildbot 0.8, which cannot pause a worker"
    )
    assert _failure(fakes, "unpause_buildslave") == (
        "Unpausing in master bm03-tests2...Failed: master bm03-tests2 runs Buildbot 0.8, which cannot unpause a worker"
    )
    assert fakes.master.paused == {}


def test_a_machine_without_a_master_cannot_be_paused() -> None:
    fakes = _fakes(attached=False)

    assert _failure(fakes, "pause_buildslave", reason="x") == "No master set for bld-1 in slavealloc, cannot pause it."
    assert _failure(fakes, "unpause_buildslave") == "No master set for bld-1 in slavealloc, cannot unpause it."
    assert fakes.master.controls == []


def test_a_master_that_fails_is_named_with_its_error() -> None:
    fakes = _fakes()
    fakes.master.error = MasterError("master bm03-tests2: POST http://bm03.example.test:8010/... failed: timed out")

    assert _failure(fakes, "pause_buildslave", reason="x") == (
        "Pausing in master bm03-tests2...Failed: master bm03-tests2: POST http://bm03.example.test:8010/... failed: "
        "timed out"
    )


def test_an_anonymous_pause_names_no_client() -> None:
    fakes = _fakes()

    run_on_clock(fakes.clock, pause_buildslave(_run(fakes, "pause_buildslave", client=None), reason="why"))

    assert fakes.master.paused["bld-1"] == (
        "why (SlaveAPI pause_buildslave request 42, requested by an anonymous client (authentication is off))"
    )


def test_the_reason_is_one_printable_line_and_required() -> None:
    assert pause_arguments({"reason": "  disk errors  "}) == {"reason": "disk errors"}
    for form, expected in (
        ({}, "reason: expected one line saying why the worker is paused, got nothing"),
        ({"reason": "   "}, "reason: expected one line saying why the worker is paused, got nothing"),
        ({"reason": "x" * 501}, "reason: expected at most 500 characters, got 501"),
        ({"reason": "a\nb"}, "reason: expected one line of printable characters (no newlines, tabs or control "
                             "characters)"),
    ):
        with pytest.raises(ArgumentError) as caught:
            pause_arguments(form)
        assert caught.value.field == "reason"
        assert str(caught.value) == expected


def test_both_are_registered_exclusive_and_need_the_disable_scope() -> None:
    assert ACTIONS["pause_buildslave"] is PAUSE and ACTIONS["unpause_buildslave"] is UNPAUSE
    assert [(action.exclusive, action.scope) for action in (PAUSE, UNPAUSE)] == [(True, "disable")] * 2
