"""
The action processor: result states, progress, failures, limits, locks,
single flight, timeouts, waiting, stopping and persistence.

The actions here are fakes whose bodies wait on Deferreds the test fires, and
the processor runs on a L{Clock}, so nothing sleeps: time passes only when a
test advances the clock. The results store is the real SQLite one (it uses
the real reactor for its writer thread).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from slaveapi.actions import Action, ActionFailure, ActionRun
from slaveapi.processor import ActionProcessor, one_line_reason
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import INTERRUPTED_TEXT, SQLiteResultStore, StepRecord


@dataclass
class _Call:
    """One run of a fake action: what it was handed, and the gate it waits on."""

    run: ActionRun
    arguments: dict[str, Any]
    gate: Deferred[Any] = field(default_factory=Deferred)


class _Controlled:
    """
    The body of a fake action: each run waits until the test fires its gate.

    Fire C{calls[n].gate} with the payload to succeed, or errback it with an
    exception to make the action raise it. C{active} and C{peak} count runs
    in progress, to check limits and locks.
    """

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.active = 0
        self.peak = 0
        self._started: dict[int, list[Deferred[_Call]]] = {}

    async def __call__(self, run: ActionRun, **arguments: Any) -> Any:
        call = _Call(run, arguments)
        self.calls.append(call)
        self.active += 1
        self.peak = max(self.peak, self.active)
        for waiter in self._started.pop(len(self.calls) - 1, []):
            # Told on the next turn of the reactor: the processor finishes
            # starting the run (its timeout timer, ...) before the test goes on.
            _soon(waiter.callback, call)
        try:
            return await call.gate
        finally:
            self.active -= 1

    def started(self, index: int) -> Deferred[_Call]:
        """Fires with the C{index}th run (from 0) once it has begun."""
        if index < len(self.calls):
            d: Deferred[_Call] = Deferred()
            d.callback(self.calls[index])
            return d
        waiter: Deferred[_Call] = Deferred()
        self._started.setdefault(index, []).append(waiter)
        return waiter


def _soon(function: Callable[..., Any], *args: Any) -> None:
    """Call C{function} on the real reactor's next turn."""
    from twisted.internet import reactor

    reactor.callLater(0, function, *args)


class _InsertionOrderedSet(set[Any]):
    """A set that iterates in insertion order, to make iteration-dependent behaviour repeatable."""

    def __init__(self) -> None:
        super().__init__()
        self._order: list[Any] = []

    def add(self, item: Any) -> None:
        if item not in self:
            self._order.append(item)
        super().add(item)

    def discard(self, item: Any) -> None:
        if item in self:
            self._order.remove(item)
        super().discard(item)

    def __iter__(self) -> Any:
        return iter(list(self._order))


async def _within(d: Deferred[Any], seconds: float = 5.0) -> Any:
    """Await C{d}, failing the test (rather than hanging) if it takes longer in real time."""
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


async def _finished(processor: ActionProcessor, result: ActionResult) -> ActionResult:
    """Wait (in real time) until C{result} is finished and persisted."""
    await _within(processor.wait(result, 3600))
    assert result.is_done(), result
    return result


class _SnapshotStore:
    """Delegates to a real store and records every result as it was written."""

    def __init__(self, inner: SQLiteResultStore) -> None:
        self._inner = inner
        self.reads = inner.reads
        self.writes: list[tuple[int, int, Any, int, int]] = []

    def _snap(self, result: ActionResult) -> None:
        self.writes.append(
            (result.requestid, result.state, result.text, result.start_timestamp, result.finish_timestamp)
        )

    def create(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str] | None = None
    ) -> Deferred[ActionResult]:
        def snap(result: ActionResult) -> ActionResult:
            self._snap(result)
            return result

        return self._inner.create(slave, action, client, fields).addCallback(snap)

    def save_step(self, requestid: int, n: int, step: StepRecord) -> Deferred[None]:
        return self._inner.save_step(requestid, n, step)

    def save(self, result: ActionResult) -> Deferred[None]:
        self._snap(result)
        return self._inner.save(result)

    def get(self, requestid: int) -> ActionResult | None:
        return self._inner.get(requestid)

    def find(self, slave: str | None = None, action: str | None = None) -> list[ActionResult]:
        return self._inner.find(slave, action)


def _action(body: _Controlled, **options: Any) -> Action:
    return Action(name=options.pop("name", "fake_action"), run=body, **options)


# -- states, payloads and progress ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_result_goes_pending_running_success_with_timestamps(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    snapshots = _SnapshotStore(store)
    processor = make_processor(on=snapshots)
    body = _Controlled()

    result = await processor.submit("bld-1", _action(body), {"force": True}, client="dashboard")
    call = await _within(body.started(0))
    assert call.arguments == {"force": True}
    assert (call.run.slave, call.run.requestid, call.run.action) == ("bld-1", result.requestid, "fake_action")
    assert result.state == RUNNING
    assert result.start_timestamp == 1_000_000
    assert result.finish_timestamp == 0
    # Readers get the store's copy, as written: the RUNNING row is written before the action starts.
    assert store.get(result.requestid) is not result
    assert store.get(result.requestid) == result

    clock.advance(7)
    call.gate.callback("Great success!")
    await _finished(processor, result)

    assert result.to_dict(include_requestid=True) == {
        "requestid": result.requestid,
        "state": SUCCESS,
        "text": "Great success!",
        "request_timestamp": result.request_timestamp,
        "start_timestamp": 1_000_000,
        "finish_timestamp": 1_000_007,
    }
    assert result.request_timestamp > 0
    assert result.client == "dashboard"
    rid = result.requestid
    # What was written, in order: created PENDING, then RUNNING, then finished.
    assert snapshots.writes == [
        (rid, PENDING, "", 0, 0),
        (rid, RUNNING, "", 1_000_000, 0),
        (rid, SUCCESS, "Great success!", 1_000_000, 1_000_007),
    ]


@pytest_twisted.ensureDeferred
async def test_non_text_payloads_are_kept_as_they_are(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor()
    body = _Controlled()
    uptime = await processor.submit("bld-1", _action(body, name="buildslave_uptime"))
    activity = await processor.submit("bld-1", _action(body, name="buildslave_last_activity"))
    (await _within(body.started(0))).gate.callback(1234)
    (await _within(body.started(1))).gate.callback({"last_state": "ready", "last_activity_seconds": 5, "uptime": 9})
    await _finished(processor, uptime)
    await _finished(processor, activity)
    assert (uptime.state, uptime.text) == (SUCCESS, 1234)
    assert (activity.state, activity.text) == (
        SUCCESS,
        {"last_state": "ready", "last_activity_seconds": 5, "uptime": 9},
    )


@pytest_twisted.ensureDeferred
async def test_progress_is_visible_while_running(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor]
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body))
    call = await _within(body.started(0))

    call.run.progress("Connecting over SSH...")
    assert (result.state, result.text) == (RUNNING, "Connecting over SSH...")
    # Readers see progress once it is written.
    await _within(store.flushed())
    assert store.get(result.requestid).to_dict()["text"] == "Connecting over SSH..."
    call.run.progress("Connecting over SSH...\nRebooting...")
    await _within(store.flushed())
    assert store.get(result.requestid).text == "Connecting over SSH...\nRebooting..."
    assert call.run.status == "Connecting over SSH...\nRebooting..."

    call.gate.callback("Rebooted.")
    await _finished(processor, result)
    assert (result.state, result.text) == (SUCCESS, "Rebooted.")
    # Progress reported after the end does not overwrite the final text.
    call.run.progress("late")
    assert result.text == "Rebooted."


@pytest_twisted.ensureDeferred
async def test_action_failure_ends_as_failure_with_its_payload(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body))
    call = await _within(body.started(0))
    call.run.progress("Trying SSH...")
    clock.advance(3)
    call.gate.errback(ActionFailure("Could not reboot bld-1: every method failed."))
    await _finished(processor, result)
    assert result.state == FAILURE
    assert result.text == "Could not reboot bld-1: every method failed."
    assert result.finish_timestamp == 1_000_003


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_one_line_after_the_progress(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor()
    body = _Controlled()
    with_progress = await processor.submit("bld-1", _action(body))
    without_progress = await processor.submit("bld-2", _action(body))
    first = await _within(body.started(0))
    second = await _within(body.started(1))

    first.run.progress("Connecting over SSH...")
    first.gate.errback(ValueError("bad thing happened\n  File 'x.py', line 3\nmore detail"))
    second.gate.errback(ValueError())
    await _finished(processor, with_progress)
    await _finished(processor, without_progress)

    assert with_progress.state == FAILURE
    assert with_progress.text == "Connecting over SSH...\nUnexpected error: ValueError: bad thing happened"
    assert "Traceback" not in with_progress.text
    assert without_progress.state == FAILURE
    assert without_progress.text == "Unexpected error: ValueError"


def test_one_line_reason() -> None:
    assert one_line_reason(ValueError("no\nmore")) == "ValueError: no"
    assert one_line_reason(KeyError("slave")) == "KeyError: 'slave'"
    assert one_line_reason(RuntimeError()) == "RuntimeError"
    assert one_line_reason(RuntimeError("   \n")) == "RuntimeError"


@pytest_twisted.ensureDeferred
async def test_action_raising_before_its_first_await_fails_cleanly(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    async def broken(run: ActionRun) -> str:
        raise ZeroDivisionError("division by zero")

    processor = make_processor()
    result = await processor.submit("bld-1", Action(name="fake_action", run=broken))
    await _finished(processor, result)
    assert (result.state, result.text) == (FAILURE, "Unexpected error: ZeroDivisionError: division by zero")


@pytest_twisted.ensureDeferred
async def test_action_runs_in_the_context_it_started_with(
    make_processor: Callable[..., ActionProcessor], context_box: SimpleNamespace
) -> None:
    processor = make_processor()
    body = _Controlled()
    before = context_box.context
    result = await processor.submit("bld-1", _action(body))
    call = await _within(body.started(0))
    context_box.context = SimpleNamespace(config=None, clients=None, reactor=None)
    assert call.run.ctx is before
    later = await processor.submit("bld-2", _action(body))
    assert (await _within(body.started(1))).run.ctx is context_box.context
    call.gate.callback("ok")
    body.calls[1].gate.callback("ok")
    await _finished(processor, result)
    await _finished(processor, later)


# -- limits and locks -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrency_limit_keeps_the_third_action_pending(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=2)
    body = _Controlled()
    action = _action(body)
    results = [await processor.submit(f"bld-{n}", action) for n in range(3)]
    await _within(body.started(1))
    assert [r.state for r in results] == [RUNNING, RUNNING, PENDING]
    assert len(body.calls) == 2
    assert results[2].start_timestamp == 0

    body.calls[1].gate.callback("second done")
    third = await _within(body.started(2))
    assert third.run.requestid == results[2].requestid
    assert [r.state for r in results] == [RUNNING, SUCCESS, RUNNING]
    assert body.peak == 2

    body.calls[0].gate.callback("first done")
    third.gate.callback("third done")
    for result in results:
        await _finished(processor, result)
    assert [r.text for r in results] == ["first done", "second done", "third done"]
    assert body.peak == 2


@pytest_twisted.ensureDeferred
async def test_exclusive_actions_on_one_slave_never_overlap(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=10)
    body = _Controlled()
    reboot = _action(body, name="reboot", exclusive=True)
    shutdown = _action(body, name="shutdown_buildslave", exclusive=True)
    first = await processor.submit("bld-1", reboot)
    second = await processor.submit("bld-1", shutdown)
    third = await processor.submit("bld-1", reboot)
    await _within(body.started(0))
    assert [r.state for r in (first, second, third)] == [RUNNING, PENDING, PENDING]

    body.calls[0].gate.errback(ActionFailure("failed"))
    # The lock passes on even when the holder fails, in submission order.
    call = await _within(body.started(1))
    assert call.run.requestid == second.requestid
    assert [r.state for r in (first, second, third)] == [FAILURE, RUNNING, PENDING]

    call.gate.callback("done")
    last = await _within(body.started(2))
    assert last.run.requestid == third.requestid
    last.gate.callback("done")
    for result in (first, second, third):
        await _finished(processor, result)
    assert body.peak == 1


@pytest_twisted.ensureDeferred
async def test_exclusive_lock_is_released_after_an_unexpected_error(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=10)
    body = _Controlled()
    reboot = _action(body, name="reboot", exclusive=True)
    first = await processor.submit("bld-1", reboot)
    second = await processor.submit("bld-1", reboot)
    (await _within(body.started(0))).gate.errback(RuntimeError("boom"))
    (await _within(body.started(1))).gate.callback("ok")
    await _finished(processor, first)
    await _finished(processor, second)
    assert (first.state, second.state) == (FAILURE, SUCCESS)


@pytest_twisted.ensureDeferred
async def test_exclusive_actions_on_different_slaves_run_together(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=10)
    body = _Controlled()
    reboot = _action(body, name="reboot", exclusive=True)
    results = [await processor.submit(slave, reboot) for slave in ("bld-1", "bld-2", "bld-3")]
    await _within(body.started(2))
    assert [r.state for r in results] == [RUNNING, RUNNING, RUNNING]
    assert body.peak == 3
    for call in body.calls:
        call.gate.callback("ok")
    for result in results:
        await _finished(processor, result)


@pytest_twisted.ensureDeferred
async def test_non_exclusive_actions_on_one_slave_run_together(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=10)
    body = _Controlled()
    exclusive = _Controlled()
    reboot = await processor.submit("bld-1", _action(exclusive, name="reboot", exclusive=True))
    await _within(exclusive.started(0))
    uptime = _action(body, name="buildslave_uptime")
    reads = [await processor.submit("bld-1", uptime) for _ in range(3)]
    await _within(body.started(2))
    # Reads neither wait for the slave's lock nor for each other.
    assert [r.state for r in reads] == [RUNNING, RUNNING, RUNNING]
    assert body.peak == 3
    for call in body.calls:
        call.gate.callback(5)
    exclusive.calls[0].gate.callback("rebooted")
    for result in reads + [reboot]:
        await _finished(processor, result)


# -- single flight --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_single_flight_answers_the_request_in_flight(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=1)
    blocker_body = _Controlled()
    body = _Controlled()
    await processor.submit("bld-9", _action(blocker_body, name="blocker"))
    await _within(blocker_body.started(0))
    reboot = _action(body, name="reboot", exclusive=True, single_flight=True)

    first = await processor.submit("bld-1", reboot)
    assert first.state == PENDING
    while_pending = await processor.submit("bld-1", reboot)
    assert while_pending is first
    other_slave = await processor.submit("bld-2", reboot)
    assert other_slave.requestid != first.requestid

    blocker_body.calls[0].gate.callback("done")
    call = await _within(body.started(0))
    assert call.run.requestid == first.requestid
    while_running = await processor.submit("bld-1", reboot)
    assert while_running is first
    assert while_running.requestid == first.requestid

    call.gate.callback("rebooted")
    await _finished(processor, first)
    (await _within(body.started(1))).gate.callback("rebooted too")
    await _finished(processor, other_slave)

    again = await processor.submit("bld-1", reboot)
    assert again.requestid not in (first.requestid, other_slave.requestid)
    (await _within(body.started(2))).gate.callback("rebooted again")
    await _finished(processor, again)
    assert len(body.calls) == 3
    assert (first.text, again.text) == ("rebooted", "rebooted again")


@pytest_twisted.ensureDeferred
async def test_single_flight_submits_racing_each_other_share_one_request(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor]
) -> None:
    processor = make_processor()
    body = _Controlled()
    reboot = _action(body, name="reboot", exclusive=True, single_flight=True)
    # Both submits start before either result has been written.
    one = Deferred.fromCoroutine(processor.submit("bld-1", reboot))
    two = Deferred.fromCoroutine(processor.submit("bld-1", reboot))
    first = await _within(one)
    second = await _within(two)
    assert second is first
    (await _within(body.started(0))).gate.callback("rebooted")
    await _finished(processor, first)
    assert len(body.calls) == 1
    # Only one request was ever recorded: nobody sees a second one.
    assert store.find(slave="bld-1", action="reboot") == [first]


@pytest_twisted.ensureDeferred
async def test_without_single_flight_every_submit_is_a_new_request(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor()
    body = _Controlled()
    uptime = _action(body, name="buildslave_uptime")
    first = await processor.submit("bld-1", uptime)
    second = await processor.submit("bld-1", uptime)
    assert first.requestid != second.requestid
    for n in range(2):
        (await _within(body.started(n))).gate.callback(n)
    await _finished(processor, first)
    await _finished(processor, second)


# -- timeouts and waiting -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_timeout_fails_with_the_last_progress(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body, timeout=30))
    call = await _within(body.started(0))
    call.run.progress("Connecting over SSH...")
    clock.advance(29.9)
    assert result.state == RUNNING
    clock.advance(0.1)
    await _finished(processor, result)
    assert result.state == FAILURE
    assert result.text == "Timed out after 30 seconds. Last progress:\nConnecting over SSH..."
    assert result.finish_timestamp == 1_000_030
    assert call.gate.called  # the action was cancelled, not left running


@pytest_twisted.ensureDeferred
async def test_timeout_without_progress(make_processor: Callable[..., ActionProcessor], clock: Clock) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body, timeout=2.5))
    await _within(body.started(0))
    clock.advance(2.5)
    await _finished(processor, result)
    assert (result.state, result.text) == (FAILURE, "Timed out after 2.5 seconds.")


@pytest_twisted.ensureDeferred
async def test_configured_timeouts_override_the_action_default(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    limits = {"reboot": 5.0}
    processor = make_processor(timeouts=lambda: limits)
    body = _Controlled()
    reboot = _action(body, name="reboot", timeout=600)
    other = _action(body, name="buildslave_uptime", timeout=600)
    result = await processor.submit("bld-1", reboot)
    untouched = await processor.submit("bld-2", other)
    await _within(body.started(1))
    body.calls[0].run.progress("Rebooting via IPMI...")
    clock.advance(5)
    await _finished(processor, result)
    assert result.text == "Timed out after 5 seconds. Last progress:\nRebooting via IPMI..."
    assert untouched.state == RUNNING

    # The limits are read when an action starts, so a reload applies to new ones.
    limits["reboot"] = 1.0
    later = await processor.submit("bld-3", reboot)
    await _within(body.started(2))
    clock.advance(1)
    await _finished(processor, later)
    assert later.text == "Timed out after 1 seconds."
    body.calls[1].gate.callback(42)
    await _finished(processor, untouched)
    assert (untouched.state, untouched.text) == (SUCCESS, 42)


@pytest_twisted.ensureDeferred
async def test_wait_fires_when_the_result_finishes(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body))
    call = await _within(body.started(0))
    waiter = processor.wait(result, 10)
    other_waiter = processor.wait(result, 20)
    assert not waiter.called
    call.gate.callback("done")
    assert await _within(waiter) is None
    assert await _within(other_waiter) is None
    assert result.state == SUCCESS
    # Neither waiter leaves a timer behind.
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_wait_gives_up_after_its_time(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body, timeout=600))
    call = await _within(body.started(0))
    waiter = processor.wait(result, 10)
    clock.advance(9.9)
    assert not waiter.called
    clock.advance(0.1)
    assert waiter.called
    assert await waiter is None
    assert result.state == RUNNING

    call.gate.callback("done")
    await _finished(processor, result)


@pytest_twisted.ensureDeferred
async def test_wait_on_a_finished_result_or_for_no_time_fires_at_once(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body))
    call = await _within(body.started(0))
    assert processor.wait(result, 0).called
    assert processor.wait(result, -1).called
    call.gate.callback("done")
    await _finished(processor, result)
    assert processor.wait(result, 10).called


@pytest_twisted.ensureDeferred
async def test_waiters_are_told_only_once_the_result_is_on_disk(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor]
) -> None:
    processor = make_processor()
    body = _Controlled()
    result = await processor.submit("bld-1", _action(body))
    call = await _within(body.started(0))
    seen: list[tuple[int, Any]] = []

    def read_row(_: None) -> None:
        # A second connection sees only what was committed to the file.
        db = sqlite3.connect(store.path)
        try:
            query = "SELECT state, text FROM results WHERE requestid = ?"
            state, text = db.execute(query, (result.requestid,)).fetchone()
        finally:
            db.close()
        seen.append((state, json.loads(text)))

    waiter: Deferred[None] = processor.wait(result, 60).addCallback(read_row)
    call.gate.callback({"uptime": 5})
    await _within(waiter)
    assert seen == [(SUCCESS, {"uptime": 5})]


# -- stopping and persistence ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_service_interrupts_running_and_pending_actions(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    processor = make_processor(concurrency=2)
    processor.startService()
    body = _Controlled()
    action = _action(body)
    results = [await processor.submit(f"bld-{n}", action) for n in range(3)]
    await _within(body.started(1))
    body.calls[0].run.progress("Connecting over SSH...")
    assert [r.state for r in results] == [RUNNING, RUNNING, PENDING]

    # The stop waits until every cancelled action has recorded how it ended.
    await _within(processor.stopService())
    for result in results:
        await _finished(processor, result)
        assert result.state == FAILURE
        assert result.finish_timestamp > 0
    # As the store words it for a restart: the progress reached is appended.
    assert results[0].text == INTERRUPTED_TEXT + " Progress so far:\nConnecting over SSH..."
    assert [r.text for r in results[1:]] == [INTERRUPTED_TEXT, INTERRUPTED_TEXT]
    assert all(call.gate.called for call in body.calls)
    assert body.active == 0


@pytest_twisted.ensureDeferred
async def test_stop_service_does_not_start_pending_actions(
    make_processor: Callable[..., ActionProcessor],
) -> None:
    """Stopping must not start queued work (say, a reboot) only to cancel it."""
    processor = make_processor(concurrency=1)
    # Cancel in submission order (the running action first): a set's order
    # would otherwise make the outcome depend on memory addresses.
    if isinstance(processor._running, set):
        processor._running = _InsertionOrderedSet()
    processor.startService()
    body = _Controlled()
    action = _action(body)
    results = [await processor.submit(f"bld-{n}", action) for n in range(4)]
    await _within(body.started(0))
    processor.stopService()
    for result in results:
        await _finished(processor, result)
        assert (result.state, result.text) == (FAILURE, INTERRUPTED_TEXT)
    assert [call.run.requestid for call in body.calls] == [results[0].requestid]
    assert [r.start_timestamp for r in results[1:]] == [0, 0, 0]


@pytest_twisted.ensureDeferred
async def test_finished_results_are_persisted(tmp_path: Any, context_box: SimpleNamespace, clock: Clock) -> None:
    from twisted.internet import reactor

    path = str(tmp_path / "persist.sqlite")
    first_store = SQLiteResultStore(path, reactor)
    first_store.open()
    processor = ActionProcessor(first_store, lambda: context_box.context, concurrency=2, reactor=clock)
    body = _Controlled()
    try:
        done = await processor.submit("bld-1", _action(body, name="buildslave_uptime"), client="dashboard")
        failed = await processor.submit("bld-2", _action(body, name="reboot"))
        call = await _within(body.started(0))
        clock.advance(4)
        call.gate.callback(86400)
        failing = await _within(body.started(1))
        failing.run.progress("Trying SSH...")
        failing.gate.errback(ValueError("nope"))
        await _finished(processor, done)
        await _finished(processor, failed)
    finally:
        await first_store.close()

    second_store = SQLiteResultStore(path, reactor)
    second_store.open()
    try:
        again = second_store.get(done.requestid)
        assert again is not None
        assert again.to_dict(include_requestid=True) == {
            "requestid": done.requestid,
            "state": SUCCESS,
            "text": 86400,
            "request_timestamp": done.request_timestamp,
            "start_timestamp": 1_000_000,
            "finish_timestamp": 1_000_004,
        }
        assert (again.slave, again.action, again.client) == ("bld-1", "buildslave_uptime", "dashboard")
        other = second_store.get(failed.requestid)
        assert other is not None
        assert (other.state, other.text) == (FAILURE, "Trying SSH...\nUnexpected error: ValueError: nope")
        assert (other.slave, other.action, other.client) == ("bld-2", "reboot", None)
    finally:
        await second_store.close()
