"""
Backpressure and fairness in the processor: bounded queues per kind of
action, read-only actions held to their share of the slots, limits read
afresh (a reload), and locks and single flight by canonical identity.

The actions are fakes that wait on Deferreds the test fires; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from slaveapi.actions import Action, ActionRun
from slaveapi.admission import CHANGES, READS, Limits, QueueFull, Slots
from slaveapi.machines import identify
from slaveapi.processor import ActionProcessor
from slaveapi.results import PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import SQLiteResultStore
from tests.recorded_now import recorded_now

from .fake_fleet import fake_clients


class _Gated:
    """An action body whose runs wait until the test opens their gate; counts runs at once."""

    def __init__(self) -> None:
        self.runs: dict[int, Deferred[Any]] = {}
        self.active = 0
        self.peak = 0
        self._starting: dict[int, list[Deferred[None]]] = {}

    async def __call__(self, run: ActionRun) -> str:
        gate: Deferred[Any] = Deferred()
        self.runs[run.requestid] = gate
        self.active += 1
        self.peak = max(self.peak, self.active)
        for waiter in self._starting.pop(run.requestid, []):
            waiter.callback(None)
        try:
            return str(await gate)
        finally:
            self.active -= 1

    def open(self, result: ActionResult) -> None:
        self.runs[result.requestid].callback("done")

    async def started(self, *results: ActionResult) -> None:
        """Once every one of C{results} has begun running (bounded in real time)."""
        from twisted.internet import reactor

        for result in results:
            if result.requestid not in self.runs:
                waiter: Deferred[None] = Deferred()
                self._starting.setdefault(result.requestid, []).append(waiter)
                await waiter.addTimeout(5, reactor)


def _read(body: _Gated) -> Action:
    return Action(name="buildslave_uptime", run=body, single_flight=True)


def _change(body: _Gated, name: str = "reboot") -> Action:
    return Action(name=name, run=body, exclusive=True, single_flight=True)


@pytest.fixture
def make(store: SQLiteResultStore, context_box: SimpleNamespace) -> Callable[..., ActionProcessor]:
    def build(limits: Callable[[], Limits]) -> ActionProcessor:
        clock = Clock()
        return ActionProcessor(store, lambda: context_box.context, 1, clock, limits=limits)

    return build


async def _done(processor: ActionProcessor, result: ActionResult) -> None:
    from twisted.internet import reactor

    await processor.wait(result, 3600).addTimeout(5, reactor)
    assert recorded_now(processor, result).state == SUCCESS


@pytest_twisted.ensureDeferred
async def test_a_full_read_queue_refuses_reads_and_still_accepts_changes(
    make: Callable[..., ActionProcessor],
) -> None:
    processor = make(lambda: Limits(concurrency=2, read_concurrency=1, max_queued=2))
    reads, changes = _Gated(), _Gated()
    running = await processor.submit("bld-1", _read(reads))
    queued = [await processor.submit(f"bld-{n}", _read(reads)) for n in (2, 3)]
    await reads.started(running)
    assert [r.state for r in queued] == [PENDING, PENDING]
    assert processor.queued() == {READS: 2, CHANGES: 0}
    with pytest.raises(QueueFull) as refused:
        await processor.submit("bld-4", _read(reads))
    assert (refused.value.kind, refused.value.limit, refused.value.retry_after) == (READS, 2, 30)
    assert str(refused.value) == "2 read-only requests are already waiting; try again in 30 seconds"
    # Joining a request already queued adds nothing, so it is never refused.
    assert (await processor.submit("bld-3", _read(reads))).requestid == queued[1].requestid
    # A reboot is accepted, and runs at once on the slot reads may not take.
    reboot = await processor.submit("bld-5", _change(changes))
    await changes.started(reboot)
    assert processor.queued() == {READS: 2, CHANGES: 0}
    changes.open(reboot)
    await _done(processor, reboot)
    for result in [running, *queued]:
        await reads.started(result)
        reads.open(result)
        await _done(processor, result)
    assert reads.peak == 1
    assert processor.queued() == {READS: 0, CHANGES: 0}
    # Room again: the refused read may now be asked for.
    again = await processor.submit("bld-4", _read(reads))
    await reads.started(again)
    reads.open(again)
    await _done(processor, again)


@pytest_twisted.ensureDeferred
async def test_changes_have_their_own_queue_bound(make: Callable[..., ActionProcessor]) -> None:
    processor = make(lambda: Limits(concurrency=1, read_concurrency=1, max_queued=1))
    changes = _Gated()
    first = await processor.submit("bld-1", _change(changes))
    waiting = await processor.submit("bld-2", _change(changes))
    await changes.started(first)
    assert waiting.state == PENDING
    with pytest.raises(QueueFull) as refused:
        await processor.submit("bld-3", _change(changes, "shutdown_buildslave"))
    assert refused.value.kind == CHANGES
    changes.open(first)
    await _done(processor, first)
    await changes.started(waiting)
    changes.open(waiting)
    await _done(processor, waiting)


@pytest_twisted.ensureDeferred
async def test_waiting_reads_never_stand_before_a_reboot(make: Callable[..., ActionProcessor]) -> None:
    """Three slots, reads may take two: ten reads waiting, and a reboot still starts at once."""
    processor = make(lambda: Limits(concurrency=3, read_concurrency=2, max_queued=100))
    reads, changes = _Gated(), _Gated()
    flood = [await processor.submit(f"t-{n}", _read(reads)) for n in range(10)]
    await reads.started(*flood[:2])
    reboot = await processor.submit("bld-1", _change(changes))
    await changes.started(reboot)
    shutdown = await processor.submit("bld-2", _change(changes, "shutdown_buildslave"))
    # Every slot is taken now: the next change waits for one, but ahead of the reads.
    assert shutdown.state == PENDING
    changes.open(reboot)
    await _done(processor, reboot)
    await changes.started(shutdown)
    assert sum(r.state == RUNNING for r in flood) == 2 and reads.active == 2
    changes.open(shutdown)
    await _done(processor, shutdown)
    for result in flood:
        await reads.started(result)
        reads.open(result)
        await _done(processor, result)
    assert reads.peak == 2


@pytest_twisted.ensureDeferred
async def test_limits_are_read_afresh(make: Callable[..., ActionProcessor]) -> None:
    limits = {"now": Limits(concurrency=1, read_concurrency=1, max_queued=1)}
    processor = make(lambda: limits["now"])
    reads = _Gated()
    first = await processor.submit("bld-1", _read(reads))
    second = await processor.submit("bld-2", _read(reads))
    with pytest.raises(QueueFull):
        await processor.submit("bld-3", _read(reads))
    limits["now"] = Limits(concurrency=4, read_concurrency=3, max_queued=10)
    third = await processor.submit("bld-3", _read(reads))
    # More slots take effect as soon as one is given back.
    reads.open(first)
    await _done(processor, first)
    await reads.started(second, third)
    for result in (second, third):
        reads.open(result)
        await _done(processor, result)


def test_slots_follow_their_limit_and_a_cancelled_wait_leaves_the_line() -> None:
    limit = {"now": 1}
    slots = Slots(lambda: limit["now"])
    first = slots.acquire()
    second, third = slots.acquire(), slots.acquire()
    assert (first.called, second.called, third.called, slots.waiting) == (True, False, False, 2)
    second.cancel()
    second.addErrback(lambda _: None)
    assert slots.waiting == 1
    limit["now"] = 2
    slots.release()
    assert third.called and slots.held == 1


def test_default_read_share_leaves_a_fifth_to_changes() -> None:
    assert Limits.of(50) == Limits(50, 40, 10000)
    assert Limits.of(10, max_queued=5) == Limits(10, 8, 5)
    assert Limits.of(1).read_concurrency == 1
    assert Limits.of(10, read_concurrency=30).read_concurrency == 10


@pytest_twisted.ensureDeferred
async def test_two_machines_whose_names_share_a_first_label_never_share_a_request(
    make: Callable[..., ActionProcessor], context_box: SimpleNamespace
) -> None:
    """slavealloc knows 10.1.2.3 and 10.9.8.7: two machines, two reboots, at once."""
    context_box.context = dataclasses.replace(
        context_box.context, clients=fake_clients(("10.1.2.3", "10.9.8.7", "web1"))
    )
    ctx = context_box.context
    processor = make(lambda: Limits(concurrency=4, read_concurrency=3, max_queued=10))
    reboots = _Gated()
    first, second = [(await identify(ctx, name)).name for name in ("10.1.2.3", "10.9.8.7")]
    assert (first, second) == ("10.1.2.3", "10.9.8.7")
    one = await processor.submit(first, _change(reboots))
    two = await processor.submit(second, _change(reboots))
    assert one.requestid != two.requestid
    assert (one.slave, two.slave) == ("10.1.2.3", "10.9.8.7")
    await reboots.started(one, two)
    assert reboots.active == 2
    # The same machine asked for again, by another spelling, joins its own request.
    same = await processor.submit((await identify(ctx, "10.9.8.7")).name, _change(reboots))
    assert same.requestid == two.requestid
    for result in (one, two):
        reboots.open(result)
        await _done(processor, result)
