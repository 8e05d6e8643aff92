"""
L{StatusLines.step}, the one way an action writes "heading...<outcome>":
what each outcome shows, and when a failure is raised or returned.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from slaveapi.actions import ActionFailure, ActionLog, ActionRun, StatusLines, StepFailed
from slaveapi.testing import make_fakes, run_on_clock


class _Refused(Exception):
    pass


def _status() -> tuple[StatusLines, list[str], Clock]:
    fakes = make_fakes()
    shown: list[str] = []
    run = ActionRun(fakes.context(), "bld-1", 1, "test", ActionLog(Logger(), "bld-1", 1, "test"), shown.append)
    return StatusLines(run), shown, fakes.clock


async def _returns(text: str | None) -> str | None:
    return text


def test_a_step_shows_its_heading_then_its_outcome() -> None:
    status, shown, clock = _status()

    assert run_on_clock(clock, status.step("Counting", lambda: _returns("3 found."))) is True

    assert shown == ["Counting...", "Counting...3 found."]
    assert status.text == "Counting...3 found."


def test_a_step_whose_work_returns_nothing_says_success() -> None:
    status, _, clock = _status()

    run_on_clock(clock, status.step("Disabling", lambda: _returns(None)))

    assert status.lines == ["Disabling...Success!"]


def test_a_fatal_failure_shows_why_and_raises_the_whole_text() -> None:
    status, _, clock = _status()
    status.add("Before.")

    async def work() -> str:
        raise ActionFailure("no subnet configured")

    with pytest.raises(StepFailed) as raised:
        run_on_clock(clock, status.step("Picking", work))

    assert status.lines == ["Before.", "Picking...Failed: no subnet configured"]
    assert raised.value.payload == "Before.\nPicking...Failed: no subnet configured"
    assert (raised.value.heading, raised.value.reason) == ("Picking", "no subnet configured")
    assert isinstance(raised.value, ActionFailure)


def test_a_failure_that_is_not_fatal_uses_the_steps_words_and_returns_false() -> None:
    status, _, clock = _status()

    async def work() -> str:
        raise _Refused("HTTP 503")

    done = run_on_clock(
        clock,
        status.step(
            "Commenting", work, failures=(_Refused,), failed=lambda error: f"Failed ({error}).", fatal=False
        ),
    )

    assert done is False
    assert status.lines == ["Commenting...Failed (HTTP 503)."]


def test_an_error_the_step_does_not_expect_propagates_and_leaves_the_line_as_it_was() -> None:
    status, _, clock = _status()

    async def work() -> str:
        status.outcome("initiated, waiting...")
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_on_clock(clock, status.step("Rebooting", work, failures=(_Refused,)))

    assert status.lines == ["Rebooting...initiated, waiting..."]


def test_an_outcome_needs_a_step() -> None:
    status, _, _ = _status()

    with pytest.raises(RuntimeError):
        status.outcome("what step?")
