"""
Waiting is not working: an action holds a work slot only while it works.

The processor runs on a L{Clock}; the actions' waits are L{pause} and
L{poll_until} on that clock, so a test decides when a wait ends. Each test
checks who held a slot when, through what the actions record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from slaveapi.actions import Action, ActionRun
from slaveapi.admission import Slots
from slaveapi.clients import poll_until
from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import INTERRUPTED_TEXT
from slaveapi.work import current_slot, pause, waiting
from tests.recorded_now import recorded_now


class _Journal:
    """What the actions did, in order, and a way to wait for an entry."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self._waiters: dict[tuple[str, str], list[Deferred[None]]] = {}

    def note(self, slave: str, what: str) -> None:
        self.entries.append((slave, what))
        for waiter in self._waiters.pop((slave, what), []):
            _soon(waiter.callback, None)

    def seen(self, slave: str, what: str) -> Deferred[None]:
        """Fires once C{slave} noted C{what}."""
        waiter: Deferred[None] = Deferred()
        if (slave, what) in self.entries:
            waiter.callback(None)
        else:
            self._waiters.setdefault((slave, what), []).append(waiter)
        return _bounded(waiter)


def _soon(function: Callable[..., Any], *args: Any) -> None:
    from twisted.internet import reactor

    reactor.callLater(0, function, *args)


def _bounded(d: Deferred[Any], seconds: float = 5.0) -> Deferred[Any]:
    """Fail the test (rather than hang) if C{d} takes longer in real time."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


async def _settle() -> None:
    """Let everything already due on the real reactor run (store writes, slot hand-overs)."""
    from twisted.internet import reactor

    for _ in range(5):
        d: Deferred[None] = Deferred()
        reactor.callLater(0, d.callback, None)
        await d


def _booting(journal: _Journal, clock: Clock, gates: dict[str, Deferred[None]] | None = None) -> Action:
    """
    A reboot-like action: work (held up by its gate, if any), a 30 s wait,
    then work again. It notes whether it held its slot at each point.
    """

    async def run(run: ActionRun) -> str:
        slot = current_slot()
        journal.note(run.slave, f"working, holds slot: {slot is not None and slot.held}")
        if gates and run.slave in gates:
            await gates[run.slave]
        journal.note(run.slave, "waiting")
        await pause(clock, 30)
        journal.note(run.slave, f"back, holds slot: {slot is not None and slot.held}")
        return "rebooted"

    return Action(name="reboot", run=run, exclusive=True, single_flight=True)


async def _done(processor: ActionProcessor, result: ActionResult) -> ActionResult:
    await _bounded(processor.wait(result, 3600))
    return recorded_now(processor, result)


@pytest_twisted.ensureDeferred
async def test_a_waiting_action_holds_no_slot_so_the_next_one_runs(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=1)
    journal = _Journal()
    action = _booting(journal, clock)
    first = await processor.submit("bld-1", action)
    second = await processor.submit("bld-2", action)

    # With one slot, the second starts while the first waits: no time has passed.
    await journal.seen("bld-2", "waiting")
    assert journal.entries == [
        ("bld-1", "working, holds slot: True"),
        ("bld-1", "waiting"),
        ("bld-2", "working, holds slot: True"),
        ("bld-2", "waiting"),
    ]
    assert recorded_now(processor, second).state == RUNNING

    clock.advance(30)
    assert (await _done(processor, first)).state == SUCCESS
    assert (await _done(processor, second)).state == SUCCESS
    # Each took its slot back before going on.
    assert ("bld-1", "back, holds slot: True") in journal.entries
    assert ("bld-2", "back, holds slot: True") in journal.entries


@pytest_twisted.ensureDeferred
async def test_an_action_back_from_a_wait_goes_before_one_not_started(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=1)
    journal = _Journal()
    gates = {"bld-2": Deferred[None]()}
    action = _booting(journal, clock, gates)
    first = await processor.submit("bld-1", action)
    await journal.seen("bld-1", "waiting")
    second = await processor.submit("bld-2", action)
    await journal.seen("bld-2", "working, holds slot: True")
    third = await processor.submit("bld-3", action)

    clock.advance(30)  # the first is back and queues for the slot bld-2 holds
    await _settle()
    assert recorded_now(processor, third).state == PENDING
    gates["bld-2"].callback(None)
    await journal.seen("bld-3", "waiting")

    order = [entry for entry in journal.entries if entry[0] in ("bld-1", "bld-3")]
    assert order.index(("bld-1", "back, holds slot: True")) < order.index(("bld-3", "working, holds slot: True"))
    clock.advance(30)
    for result in (first, second, third):
        assert (await _done(processor, result)).state == SUCCESS


@pytest_twisted.ensureDeferred
async def test_a_machine_stays_locked_while_its_action_waits(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=5)
    journal = _Journal()
    reboot = _booting(journal, clock)
    shutdown = Action(name="shutdown_buildslave", run=reboot.run, exclusive=True)
    first = await processor.submit("bld-1", reboot)
    await journal.seen("bld-1", "waiting")
    second = await processor.submit("bld-1", shutdown)
    await _settle()
    # Slots are free, but the machine is not: the second waits for the first to end.
    assert recorded_now(processor, second).state == PENDING
    assert journal.entries.count(("bld-1", "working, holds slot: True")) == 1

    clock.advance(30)
    assert (await _done(processor, first)).state == SUCCESS
    await journal.seen("bld-1", "waiting")
    clock.advance(30)
    assert (await _done(processor, second)).state == SUCCESS


@pytest_twisted.ensureDeferred
async def test_polls_hold_the_slot_only_while_they_ask(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=1)
    journal = _Journal()
    answers = iter([False, False, True])

    async def poller(run: ActionRun) -> str:
        async def check() -> bool:
            slot = current_slot()
            journal.note(run.slave, f"asking, holds slot: {slot is not None and slot.held}")
            return next(answers)

        await poll_until(clock, check, 5, 60, "test poll")
        return "drained"

    async def quick(run: ActionRun) -> str:
        journal.note(run.slave, "quick work")
        return "done"

    polling = await processor.submit("bld-1", Action(name="shutdown_buildslave", run=poller, exclusive=True))
    await journal.seen("bld-1", "asking, holds slot: True")
    other = await processor.submit("bld-2", Action(name="buildslave_uptime", run=quick))
    # It ran while the poll slept, although the only slot belongs to nobody else.
    assert (await _done(processor, other)).state == SUCCESS
    clock.advance(5)
    clock.advance(5)
    assert (await _done(processor, polling)).text == "drained"
    assert journal.entries.count(("bld-1", "asking, holds slot: True")) == 3


@pytest_twisted.ensureDeferred
async def test_a_stop_ends_a_waiting_action_without_queueing_it_for_a_slot(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=1)
    journal = _Journal()
    gates = {"bld-2": Deferred[None]()}
    action = _booting(journal, clock, gates)
    first = await processor.submit("bld-1", action)
    await journal.seen("bld-1", "waiting")
    second = await processor.submit("bld-2", action)
    await journal.seen("bld-2", "working, holds slot: True")

    # bld-1 waits, bld-2 holds the only slot and never lets go of it by itself.
    await _bounded(processor.stopService())
    for result in (first, second):
        recorded = recorded_now(processor, result)
        assert recorded.state == FAILURE
        assert recorded.text.startswith(INTERRUPTED_TEXT)
    assert not any(what.startswith("back") for _, what in journal.entries)


@pytest_twisted.ensureDeferred
async def test_each_action_sees_its_own_slot(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=5)
    seen: dict[str, Any] = {}
    journal = _Journal()

    async def record(run: ActionRun) -> str:
        seen[run.slave] = current_slot()
        journal.note(run.slave, "waiting")
        await pause(clock, 1)
        assert current_slot() is seen[run.slave]
        return "ok"

    action = Action(name="buildslave_uptime", run=record)
    results = [await processor.submit(name, action) for name in ("bld-1", "bld-2")]
    await journal.seen("bld-1", "waiting")
    await journal.seen("bld-2", "waiting")
    clock.advance(1)
    for result in results:
        assert (await _done(processor, result)).state == SUCCESS
    assert seen["bld-1"] is not None and seen["bld-2"] is not None
    assert seen["bld-1"] is not seen["bld-2"]


@pytest_twisted.ensureDeferred
async def test_waiting_outside_an_action_does_nothing() -> None:
    assert current_slot() is None
    async with waiting():
        assert current_slot() is None
    clock = Clock()
    sleeping = Deferred.fromCoroutine(pause(clock, 3))
    clock.advance(3)
    assert sleeping.called


def test_slots_serve_those_resuming_before_those_starting() -> None:
    slots = Slots(lambda: 1)
    assert slots.acquire().called
    starting = slots.acquire()
    resuming = slots.acquire(resuming=True)
    assert slots.waiting == 2
    slots.release()
    assert resuming.called and not starting.called
    slots.release()
    assert starting.called
    assert slots.held == 1


def test_a_cancelled_wait_for_a_slot_leaves_the_line() -> None:
    slots = Slots(lambda: 1)
    slots.acquire()
    gone = slots.acquire(resuming=True)
    stays = slots.acquire()
    gone.addErrback(lambda failure: failure.trap(CancelledError))
    gone.cancel()
    assert slots.waiting == 1
    slots.release()
    assert stays.called


@pytest_twisted.ensureDeferred
async def test_work_an_action_left_running_holds_no_slot_once_the_action_timed_out(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    # Like a power cycle that finishes switching a machine back on after its action was cancelled.
    processor = make_processor(concurrency=1, timeouts=lambda: {"reboot": 5.0})
    journal = _Journal()

    async def leaves_work_running(run: ActionRun) -> str:
        async def rest_of_the_power_cycle() -> None:
            await pause(clock, 10)
            slot = current_slot()
            journal.note(run.slave, f"power on, holds slot: {slot is not None and slot.held}")

        rest = Deferred.fromCoroutine(rest_of_the_power_cycle())
        shield: Deferred[None] = Deferred()
        rest.addBoth(lambda _: None if shield.called else shield.callback(None))
        journal.note(run.slave, "waiting")
        await shield
        return "rebooted"

    first = await processor.submit("bld-1", Action(name="reboot", run=leaves_work_running, exclusive=True))
    await journal.seen("bld-1", "waiting")
    clock.advance(5)
    assert "Timed out after 5 seconds" in (await _done(processor, first)).text
    clock.advance(5)
    await journal.seen("bld-1", "power on, holds slot: False")

    # The only slot is free for the next action.
    quick = Action(name="buildslave_uptime", run=lambda run: _returns("up"))
    assert (await _done(processor, await processor.submit("bld-2", quick))).state == SUCCESS


async def _returns(value: str) -> str:
    return value


@pytest_twisted.ensureDeferred
async def test_an_action_that_gave_up_on_a_wait_works_on_with_its_slot(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    from slaveapi.clients import ClientTimeout, within

    processor = make_processor(concurrency=1)
    journal = _Journal()

    async def gives_up(run: ActionRun) -> str:
        journal.note(run.slave, "waiting")
        try:
            await within(clock, 5, pause(clock, 30), "a wait given up on")
        except ClientTimeout:
            slot = current_slot()
            journal.note(run.slave, f"gave up, holds slot: {slot is not None and slot.held}")
        return "went on"

    result = await processor.submit("bld-1", Action(name="reboot", run=gives_up, exclusive=True))
    await journal.seen("bld-1", "waiting")
    clock.advance(5)
    assert (await _done(processor, result)).text == "went on"
    assert ("bld-1", "gave up, holds slot: True") in journal.entries


@pytest_twisted.ensureDeferred
async def test_a_stop_hands_no_slot_to_an_action_back_from_its_wait(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=1)
    journal = _Journal()
    gates = {"bld-2": Deferred[None]()}
    action = _booting(journal, clock, gates)
    first = await processor.submit("bld-1", action)
    await journal.seen("bld-1", "waiting")
    second = await processor.submit("bld-2", action)
    await journal.seen("bld-2", "working, holds slot: True")
    clock.advance(30)  # bld-1 is back from its wait, in line for the slot bld-2 holds
    await _settle()

    await _bounded(processor.stopService())
    # bld-2's slot, freed by its cancellation, went to nobody: bld-1 did no more work.
    assert not any(what.startswith("back") for _, what in journal.entries)
    for result in (first, second):
        assert recorded_now(processor, result).text.startswith(INTERRUPTED_TEXT)


@pytest_twisted.ensureDeferred
async def test_a_wait_within_a_wait_takes_the_slot_back_only_when_the_outer_one_ends(
    make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor(concurrency=1)
    journal = _Journal()

    async def nested(run: ActionRun) -> str:
        slot = current_slot()
        journal.note(run.slave, "started")
        async with waiting():
            await pause(clock, 1)
            journal.note(run.slave, f"between inner waits, holds slot: {slot is not None and slot.held}")
            await pause(clock, 1)
        journal.note(run.slave, f"after, holds slot: {slot is not None and slot.held}")
        return "done"

    result = await processor.submit("bld-1", Action(name="reboot", run=nested, exclusive=True))
    await journal.seen("bld-1", "started")
    clock.advance(1)
    await journal.seen("bld-1", "between inner waits, holds slot: False")
    clock.advance(1)
    assert (await _done(processor, result)).state == SUCCESS
    assert ("bld-1", "after, holds slot: True") in journal.entries


def test_a_thousand_waiters_giving_their_slots_straight_back_do_not_nest() -> None:
    # Each woken waiter runs up to its next wait and gives the slot back at once,
    # as an action does; handing over from inside that would nest a thousand runs.
    slots = Slots(lambda: 1)
    slots.acquire()
    served: list[int] = []

    def serve(_: None, number: int) -> None:
        served.append(number)
        slots.release()

    for number in range(5000):
        slots.acquire().addCallback(serve, number)
    slots.release()
    assert served == list(range(5000))
    assert (slots.held, slots.waiting) == (0, 0)
