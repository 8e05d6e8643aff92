"""
L{slaveapi.clients._targets.TargetSlots}: at most N holders per key, FIFO per
key, cancelled waits leave the line, idle keys are forgotten.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from slaveapi.clients._targets import TargetSlots
from slaveapi.clients.ssh._errors import SSHBusy
from slaveapi.clients.ssh._limits import SessionSlots


def _result(deferred: Deferred[Callable[[], None]]) -> Callable[[], None]:
    assert deferred.called
    results: list[Callable[[], None]] = []
    deferred.addCallback(results.append)
    return results[0]


def test_limit_per_key_and_first_come_first_served() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    first = _result(slots.acquire("bmc-a"))
    second = slots.acquire("bmc-a")
    third = slots.acquire("bmc-a")
    other = slots.acquire("bmc-b")

    assert (second.called, third.called, other.called) == (False, False, True)
    assert (slots.held("bmc-a"), slots.waiting("bmc-a")) == (1, 2)

    first()
    assert (second.called, third.called) == (True, False)
    _result(second)()
    assert third.called


def test_a_limit_above_one_admits_that_many() -> None:
    slots: TargetSlots[str] = TargetSlots(2)
    waits = [slots.acquire("pdu1") for _ in range(3)]
    assert [w.called for w in waits] == [True, True, False]
    _result(waits[1])()
    assert waits[2].called
    assert slots.held("pdu1") == 2


def test_releasing_twice_gives_back_one_slot() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    release = _result(slots.acquire("h"))
    waiting = slots.acquire("h")
    release()
    release()
    assert waiting.called
    assert slots.held("h") == 1


def test_a_cancelled_wait_leaves_the_line() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    release = _result(slots.acquire("h"))
    cancelled = slots.acquire("h")
    after = slots.acquire("h")
    failures: list[object] = []
    cancelled.addErrback(lambda failure: failures.append(failure.type))
    cancelled.cancel()

    assert failures == [CancelledError]
    assert slots.waiting("h") == 1
    release()
    assert after.called
    assert slots.held("h") == 1


def test_idle_keys_are_dropped() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    releases = [_result(slots.acquire(f"host{n}")) for n in range(100)]
    assert len(slots) == 100
    for release in releases:
        release()
    assert len(slots) == 0

    held = _result(slots.acquire("busy"))
    waiting = slots.acquire("busy")
    waiting.addErrback(lambda _: None)
    waiting.cancel()
    held()
    assert len(slots) == 0


def test_a_key_handed_from_one_holder_to_the_next_is_dropped_once_both_are_done() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    release = _result(slots.acquire("h"))
    waiting = slots.acquire("h")
    release()  # handed to the waiter
    _result(waiting)()
    assert len(slots) == 0


def test_the_async_with_form_holds_for_its_body() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    inside: Deferred[None] = Deferred()
    seen: list[int] = []

    async def body() -> None:
        async with slots.hold("h"):
            seen.append(slots.held("h"))
            await inside

    running = Deferred.fromCoroutine(body())
    assert seen == [1]
    inside.callback(None)
    assert running.called
    assert len(slots) == 0


def test_the_async_with_form_gives_back_when_its_body_is_cancelled() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    never: Deferred[None] = Deferred()

    async def body() -> None:
        async with slots.hold("h"):
            await never

    running = Deferred.fromCoroutine(body())
    running.addErrback(lambda _: None)
    running.cancel()
    assert len(slots) == 0


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TargetSlots(0)


def test_ssh_session_slots_time_out_with_sshbusy_and_forget_idle_hosts() -> None:
    clock = Clock()
    sessions = SessionSlots(clock, 1)
    first = Deferred.fromCoroutine(sessions.acquire("Host.Example.", 5, "uptime"))
    second = Deferred.fromCoroutine(sessions.acquire("host.example", 5, "uptime"))
    assert (first.called, second.called) == (True, False)
    errors: list[BaseException] = []
    second.addErrback(lambda failure: errors.append(failure.value))
    clock.advance(5)
    assert len(errors) == 1 and isinstance(errors[0], SSHBusy)
    assert "[ssh] per_host" in str(errors[0])
    release: list[Callable[[], None]] = []
    first.addCallback(release.append)
    release[0]()
    assert len(sessions) == 0


def test_waiters_giving_their_slot_straight_back_are_served_in_a_loop_not_nested() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    first = slots.acquire("pdu-1")
    served: list[int] = []

    def serve(release: Callable[[], None], number: int) -> None:
        served.append(number)
        release()

    for number in range(5000):
        slots.acquire("pdu-1").addCallback(serve, number)
    first.addCallback(lambda release: release())  # fired at once: give the first slot back
    assert served == list(range(5000))
    assert len(slots) == 0
