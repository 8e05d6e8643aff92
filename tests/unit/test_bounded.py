"""Tests for slaveapi.clients._bounded: within and poll_until, driven by a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from slaveapi.clients import ClientError, ClientTimeout, poll_until, within


class _Late(Exception):
    """A caller's own timeout error."""


def _run(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


def _failure(deferred: Deferred[Any]) -> Failure:
    failures: list[Failure] = []
    deferred.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


def _result(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert not isinstance(results[0], Failure), results[0]
    return results[0]


def test_within_returns_the_result_in_time() -> None:
    clock = Clock()
    call = _run(within(clock, 10, deferLater(clock, 3, lambda: "done"), "work"))
    clock.advance(3)
    assert _result(call) == "done"
    assert clock.getDelayedCalls() == []


def test_within_cancels_the_work_and_raises_a_client_timeout() -> None:
    clock = Clock()
    cancelled: list[bool] = []
    work: Deferred[str] = Deferred(lambda _: cancelled.append(True))
    call = _run(within(clock, 5, work, "slavealloc: GET /slaves"))
    clock.advance(4.9)
    assert not call.called
    clock.advance(0.1)
    error = _failure(call).value
    assert cancelled == [True]
    assert isinstance(error, ClientTimeout) and isinstance(error, ClientError)
    assert str(error) == "slavealloc: GET /slaves timed out after 5s"


def test_within_raises_the_callers_error_on_timeout() -> None:
    clock = Clock()
    call = _run(within(clock, 2, Deferred(), "work", timeout_error=lambda: _Late("my words")))
    clock.advance(2)
    error = _failure(call).value
    assert isinstance(error, _Late) and str(error) == "my words"


def test_within_turns_the_works_own_error_after_cancellation_into_the_timeout() -> None:
    clock = Clock()

    def refuse(deferred: Deferred[None]) -> None:
        deferred.errback(ValueError("connection lost"))

    call = _run(within(clock, 1, Deferred(refuse), "work"))
    clock.advance(1)
    assert isinstance(_failure(call).value, ClientTimeout)


def test_within_lets_the_works_error_through_in_time() -> None:
    clock = Clock()
    work: Deferred[None] = Deferred()
    call = _run(within(clock, 5, work, "work"))
    work.errback(ValueError("refused"))
    assert isinstance(_failure(call).value, ValueError)
    assert clock.getDelayedCalls() == []


def test_within_a_result_at_the_same_instant_wins() -> None:
    clock = Clock()
    work: Deferred[str] = Deferred()
    call = _run(within(clock, 5, work, "work"))
    # Scheduled after the limit's own timer, for the same instant.
    clock.callLater(5, work.callback, "just in time")
    clock.advance(5)
    assert _result(call) == "just in time"


def test_within_caller_cancellation_cancels_the_work() -> None:
    clock = Clock()
    cancelled: list[bool] = []
    work: Deferred[str] = Deferred(lambda _: cancelled.append(True))
    call = _run(within(clock, 5, work, "work"))
    call.cancel()
    assert cancelled == [True]
    assert isinstance(_failure(call).value, CancelledError)
    assert clock.getDelayedCalls() == []


def test_within_runs_a_coroutine() -> None:
    clock = Clock()

    async def work() -> int:
        await deferLater(clock, 1, lambda: None)
        return 7

    call = _run(within(clock, 2, work(), "work"))
    clock.advance(1)
    assert _result(call) == 7


def test_poll_until_returns_the_first_truthy_answer() -> None:
    clock = Clock()
    answers = iter([None, 0, "up"])
    calls: list[float] = []

    async def check() -> Any:
        calls.append(clock.seconds())
        return next(answers)

    call = _run(poll_until(clock, check, 2, 60, "host up"))
    clock.advance(2)
    clock.advance(2)
    assert _result(call) == "up"
    assert calls == [0, 2, 4]


def test_poll_until_stops_at_the_deadline_with_a_bounded_number_of_checks() -> None:
    clock = Clock()
    calls: list[float] = []

    async def check() -> bool:
        calls.append(clock.seconds())
        return False

    call = _run(poll_until(clock, check, 3, 10, "host up"))
    clock.pump([1] * 20)
    error = _failure(call).value
    assert isinstance(error, ClientTimeout)
    assert str(error) == "host up: not done within 10s"
    assert calls == [0, 3, 6, 9, 10]
    assert clock.getDelayedCalls() == []


def test_poll_until_raises_the_callers_error() -> None:
    clock = Clock()

    async def check() -> bool:
        return False

    call = _run(poll_until(clock, check, 1, 0, "x", timeout_error=lambda: _Late("gone")))
    assert isinstance(_failure(call).value, _Late)


def test_poll_until_lets_a_checks_error_through() -> None:
    clock = Clock()

    async def check() -> bool:
        raise ValueError("broken")

    call = _run(poll_until(clock, check, 1, 10, "x"))
    assert isinstance(_failure(call).value, ValueError)


def test_poll_until_caller_cancellation_stops_the_sleep() -> None:
    clock = Clock()
    calls: list[float] = []

    async def check() -> bool:
        calls.append(clock.seconds())
        return False

    call = _run(poll_until(clock, check, 5, 60, "x"))
    call.cancel()
    assert isinstance(_failure(call).value, CancelledError)
    clock.advance(60)
    assert calls == [0]
    assert clock.getDelayedCalls() == []


def test_poll_until_refuses_a_zero_interval() -> None:
    async def check() -> bool:
        return False

    assert isinstance(_failure(_run(poll_until(Clock(), check, 0, 10, "x"))).value, ValueError)
