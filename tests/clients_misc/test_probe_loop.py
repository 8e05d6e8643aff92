"""
The prober's one probe loop: every waiter of L{Prober.wait_for} is served by
it, each watched host probed once a tick however many wait on it, and the
loop gone (nothing left on the clock) once no one waits.

Everything runs on a L{Clock} with a scripted probe: a host's answer is what
the test says, now or (for a host the test holds) when the test fires it.
"""

from __future__ import annotations

import errno
import math
import os
from collections import Counter
from contextvars import copy_context
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectBindError
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from slaveapi.clients.probe import LocalProbeError, ProbeError, Prober
from slaveapi.config import ProbeConfig
from slaveapi.work import WorkSlot, current_slot, working_as

CONFIG = ProbeConfig(method="tcp", interval=1.0, tcp_timeout=3.0, down_timeout=5.0, up_timeout=8.0)


class _Machines(Prober):
    """
    A prober whose hosts are up or down as C{up} says. A host in C{held}
    answers only when the test fires its Deferred (in C{out}); C{error}
    makes every probe raise it.
    """

    def __init__(self, clock: Clock, up: dict[str, bool], config: ProbeConfig = CONFIG) -> None:
        super().__init__(clock, config, 22)
        self.clock = clock
        self.up = up
        self.held: set[str] = set()
        self.out: dict[str, list[Deferred[bool]]] = {}
        self.asked: list[tuple[float, str]] = []
        self.error: Exception | None = None
        self.hangs_when_down: set[str] = set()
        self.hang = config.tcp_timeout
        self.slots: list[WorkSlot | None] = []
        self.now_out: Counter[str] = Counter()
        self.most_out = 0

    async def alive(self, host: str) -> bool:
        self.asked.append((self.clock.seconds(), host))
        self.slots.append(current_slot())
        if self.error is not None:
            raise self.error
        if host in self.held:
            answer: Deferred[bool] = Deferred()
            self.out.setdefault(host, []).append(answer)
            return await answer
        if host in self.hangs_when_down and not self.up[host]:
            self.now_out[host] += 1
            self.most_out = max(self.most_out, self.now_out[host])
            try:
                return await deferLater(self.clock, self.hang, lambda: False)
            finally:
                self.now_out[host] -= 1
        return self.up[host]

    def probes_at(self, when: float) -> Counter[str]:
        return Counter(host for at, host in self.asked if at == when)


def _start(prober: Prober, host: str, up: bool, limit: float) -> Deferred[bool]:
    return Deferred.fromCoroutine(prober.wait_for(host, up=up, limit=limit))


def _outcome(waiting: Deferred[Any]) -> Any:
    """What a fired Deferred fired with (a Failure for an error); the test fails if it has not fired."""
    assert waiting.called, "still waiting"
    seen: list[Any] = []
    waiting.addBoth(seen.append)
    return seen[0]


def _cancel(waiting: Deferred[Any]) -> None:
    """Cancel a wait; it ends in CancelledError."""
    waiting.cancel()
    cancelled = _outcome(waiting)
    assert isinstance(cancelled, Failure) and cancelled.check(CancelledError)


def test_one_loop_serves_many_waiters_one_probe_per_host_per_tick() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True, "b": True, "c": True})
    # Ten waiters on three hosts: four on a, three on b, three on c.
    hosts = ["a"] * 4 + ["b"] * 3 + ["c"] * 3
    waiters = [_start(prober, host, up=False, limit=100.0) for host in hosts]
    assert prober.probes_at(0.0) == {"a": 1, "b": 1, "c": 1}
    # One timer on the clock: the loop's, not one per waiter.
    assert len(clock.getDelayedCalls()) == 1
    for tick in (1.0, 2.0, 3.0):
        clock.advance(1.0)
        assert prober.probes_at(tick) == {"a": 1, "b": 1, "c": 1}
        assert len(clock.getDelayedCalls()) == 1
    assert not any(waiter.called for waiter in waiters)

    prober.up["b"] = False
    clock.advance(1.0)
    assert [waiter.called for waiter in waiters] == [False] * 4 + [True] * 3 + [False] * 3
    assert [_outcome(waiter) for waiter in waiters[4:7]] == [True, True, True]
    assert sorted(prober.watched) == ["a", "c"]
    clock.advance(1.0)
    assert prober.probes_at(5.0) == {"a": 1, "c": 1}

    for waiter in waiters[:4] + waiters[7:]:
        _cancel(waiter)
    assert prober.watched == []
    assert clock.getDelayedCalls() == []


class _TurnClock(Clock):
    """
    A Clock that, like a reactor, runs only the calls already due when a
    turn begins: a call made for "now" during the turn waits for the next
    (C{advance(0)}).
    """

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def test_a_tick_of_many_hosts_goes_out_in_slices_one_turn_each() -> None:
    from slaveapi.clients.probe._loop import PROBES_PER_TURN

    clock = _TurnClock()
    hosts = [f"h{n}" for n in range(2 * PROBES_PER_TURN + 50)]
    prober = _Machines(clock, {host: True for host in hosts})
    waiters = [_start(prober, host, up=False, limit=100.0) for host in hosts]
    assert len(prober.probes_at(0.0)) == len(hosts)  # each host's first probe, as its waiter arrives

    clock.advance(1.0)
    assert sum(prober.probes_at(1.0).values()) == PROBES_PER_TURN
    clock.advance(0)
    assert sum(prober.probes_at(1.0).values()) == 2 * PROBES_PER_TURN
    clock.advance(0)
    assert prober.probes_at(1.0) == {host: 1 for host in hosts}
    # Then the next tick, one interval on.
    assert [call.getTime() for call in clock.getDelayedCalls()] == [2.0]

    for waiter in waiters:
        _cancel(waiter)
    assert clock.getDelayedCalls() == []


def test_a_tick_left_halfway_by_every_waiter_leaves_nothing_on_the_clock() -> None:
    from slaveapi.clients.probe._loop import PROBES_PER_TURN

    clock = _TurnClock()
    hosts = [f"h{n}" for n in range(PROBES_PER_TURN + 10)]
    prober = _Machines(clock, {host: True for host in hosts})
    waiters = [_start(prober, host, up=False, limit=100.0) for host in hosts]
    clock.advance(1.0)
    for waiter in waiters:
        _cancel(waiter)
    assert clock.getDelayedCalls() == []
    clock.advance(0)
    assert sum(prober.probes_at(1.0).values()) == PROBES_PER_TURN


def test_a_waiter_arriving_later_joins_the_loop_without_a_probe_of_its_own() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": False})
    first = _start(prober, "a", up=True, limit=10.0)
    clock.advance(0.5)
    second = _start(prober, "a", up=True, limit=10.0)
    assert prober.asked == [(0.0, "a")]  # a is watched already: the next tick serves both
    prober.up["a"] = True
    clock.advance(0.5)
    assert prober.asked == [(0.0, "a"), (1.0, "a")]
    assert (_outcome(first), _outcome(second)) == (True, True)
    assert clock.getDelayedCalls() == []


def test_waiters_get_their_verdict_on_up_on_down_and_at_their_limit() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True, "b": True})
    down = _start(prober, "a", up=False, limit=10.0)
    up_now = _start(prober, "a", up=True, limit=10.0)
    stays_up = _start(prober, "b", up=False, limit=2.5)
    # a was probed (up) as the first waiter came; the second has its answer from the next tick's probe.
    assert not up_now.called
    clock.advance(1.0)
    assert _outcome(up_now) is True and not down.called
    prober.up["a"] = False
    clock.advance(1.0)
    assert _outcome(down) is True
    assert not stays_up.called
    # b's limit (2.5 s) passes between ticks; the probe at 3 s, still up, settles it.
    clock.advance(1.0)
    assert _outcome(stays_up) is False
    assert [at for at, host in prober.asked if host == "b"] == [0.0, 1.0, 2.0, 3.0]
    assert clock.getDelayedCalls() == []


def test_cancelling_a_waiter_leaves_the_others_waiting() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    first = _start(prober, "a", up=False, limit=10.0)
    second = _start(prober, "a", up=False, limit=10.0)
    _cancel(first)
    clock.advance(1.0)
    assert prober.watched == ["a"] and not second.called
    prober.up["a"] = False
    clock.advance(1.0)
    assert _outcome(second) is True
    assert clock.getDelayedCalls() == []


def test_cancelling_the_last_waiter_stops_the_loop_and_the_probe_out() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    prober.held.add("a")
    waiter = _start(prober, "a", up=False, limit=10.0)
    [answer] = prober.out["a"]
    _cancel(waiter)
    assert prober.watched == []
    # The probe out was cancelled with it, its bound's timer too: nothing left on the clock.
    assert answer.called
    assert clock.getDelayedCalls() == []


def test_a_tcp_probe_still_out_does_not_hold_back_the_next_ticks_up_to_a_bound() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": False, "b": True})
    prober.held.add("a")
    slow = _start(prober, "a", up=True, limit=10.0)
    quick = [_start(prober, "b", up=False, limit=10.0) for _ in range(2)]
    for _ in range(5):
        clock.advance(1.0)
    # A new attempt each tick while older ones hang, at most ceil(tcp_timeout / interval) + 1 = 4 out.
    assert [at for at, host in prober.asked if host == "a"] == [0.0, 1.0, 2.0, 3.0]
    # b, answering at once, is probed once a tick however many wait on it.
    assert [at for at, host in prober.asked if host == "b"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # Any attempt that finds a up counts, not only the oldest.
    prober.out["a"][2].callback(True)
    assert _outcome(slow) is True
    assert prober.watched == ["b"]
    assert all(answer.called for answer in prober.out["a"])  # the others: cancelled
    for waiter in quick:
        _cancel(waiter)
    assert clock.getDelayedCalls() == []


def test_a_probe_that_overstays_its_bound_counts_as_down() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    prober.held.add("a")
    waiter = _start(prober, "a", up=True, limit=2.0)
    # The probe's bound is tcp_timeout + 2 = 5 s.
    clock.pump([1.0] * 4)
    assert not waiter.called and [at for at, _ in prober.asked] == [0.0, 1.0, 2.0, 3.0]
    clock.advance(1.0)
    assert _outcome(waiter) is False
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("interval", [1.0, 0.5])
@pytest.mark.parametrize("answers_at", [0.3, 2.5, 4.0, 7.9])
def test_a_machine_answering_again_is_seen_within_an_interval_though_probes_of_it_hang(
    interval: float, answers_at: float
) -> None:
    # Over TCP a connection to a machine that is off hangs until tcp_timeout (3 s), longer than a tick.
    clock = Clock()
    config = ProbeConfig(method="tcp", interval=interval, tcp_timeout=3.0, down_timeout=5.0, up_timeout=30.0)
    prober = _Machines(clock, {"a": False}, config)
    prober.hangs_when_down.add("a")
    clock.callLater(answers_at, prober.up.__setitem__, "a", True)
    waiter = _start(prober, "a", up=True, limit=30.0)
    while not waiter.called:
        clock.advance(0.05)
    assert _outcome(waiter) is True
    assert clock.seconds() - answers_at <= interval + 1e-9
    assert prober.most_out <= math.ceil(3.0 / interval) + 1
    assert clock.getDelayedCalls() == []


def test_a_host_allowed_one_probe_is_probed_again_as_soon_as_its_probe_ends() -> None:
    # Over ICMP a probe sends a request every interval itself, until its deadline: the next
    # one follows it at once rather than at the next tick.
    clock = Clock()
    config = ProbeConfig(method="icmp", interval=1.0, ping_deadline=2.5, down_timeout=5.0, up_timeout=30.0)
    prober = _Machines(clock, {"a": False}, config)
    prober.hangs_when_down.add("a")
    prober.hang = 2.5
    waiter = _start(prober, "a", up=True, limit=30.0)
    for _ in range(60):
        clock.advance(0.125)
    assert [at for at, _ in prober.asked] == [0.0, 2.5, 5.0, 7.5]
    assert prober.most_out == 1
    _cancel(waiter)
    assert clock.getDelayedCalls() == []


def test_a_down_answer_older_than_an_up_one_does_not_count() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    prober.held.add("a")
    waiter = _start(prober, "a", up=False, limit=10.0)
    clock.advance(1.0)
    older, newer = prober.out["a"]
    newer.callback(True)
    older.callback(False)  # sent before the attempt that found a up: out of date
    assert not waiter.called
    prober.held.clear()
    prober.up["a"] = False
    clock.advance(1.0)
    assert _outcome(waiter) is True
    assert clock.getDelayedCalls() == []


def test_an_answer_from_before_a_waiter_came_does_not_count_for_it() -> None:
    # A probe sent before a power cycle must not tell the waiter for "up" that the machine is back.
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    prober.held.add("a")
    early = _start(prober, "a", up=False, limit=10.0)
    late = _start(prober, "a", up=True, limit=10.0)
    prober.out["a"][0].callback(True)
    assert not late.called and not early.called
    prober.held.clear()
    clock.advance(1.0)
    assert _outcome(late) is True
    _cancel(early)
    assert clock.getDelayedCalls() == []


def test_a_probe_that_cannot_run_fails_its_waiters() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    prober.error = ProbeError("no probe socket")
    first = _start(prober, "a", up=False, limit=10.0)
    failure = _outcome(first)
    assert isinstance(failure, Failure) and failure.check(ProbeError)
    assert clock.getDelayedCalls() == []


def test_wait_for_reboot_keeps_its_meaning_on_the_loop() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    rebooting = Deferred.fromCoroutine(prober.wait_for_reboot("a"))
    clock.advance(1.0)
    prober.up["a"] = False
    clock.advance(1.0)
    clock.advance(1.0)
    prober.up["a"] = True
    clock.advance(1.0)
    outcome = _outcome(rebooting)
    assert (outcome.went_down, outcome.came_back, outcome.waited) == (True, True, 4.0)
    assert clock.getDelayedCalls() == []


def test_a_waiting_action_gives_its_work_slot_back() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    events: list[str] = []

    def take(resuming: bool) -> Deferred[None]:
        events.append(f"take resuming={resuming}")
        return Deferred.fromCoroutine(_nothing())

    slot = WorkSlot(take, lambda: events.append("give back"))
    slot.held = True
    with working_as(slot):
        waiting = _start(prober, "a", up=False, limit=10.0)
    assert events == ["give back"] and not slot.held
    prober.up["a"] = False
    clock.advance(1.0)
    assert _outcome(waiting) is True
    assert events == ["give back", "take resuming=True"] and slot.held


async def _nothing() -> None:
    return None


# --- work slots --------------------------------------------------------------------


class _ContextClock(Clock):
    """A Clock whose timers run in the context they were set in, as the asyncio reactor's do."""

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        return super().callLater(delay, copy_context().run, callable, *args, **kw)


def _slot(events: list[str]) -> WorkSlot:
    def take(resuming: bool) -> Deferred[None]:
        events.append(f"take resuming={resuming}")
        return Deferred.fromCoroutine(_nothing())

    slot = WorkSlot(take, lambda: events.append("give back"))
    slot.held = True
    return slot


def test_the_loop_started_by_an_action_runs_for_no_action() -> None:
    clock = _ContextClock()
    prober = _Machines(clock, {"a": True, "b": True})
    prober.held.add("b")
    slot = _slot([])
    with working_as(slot):
        waiter = _start(prober, "a", up=False, limit=10.0)
        other = _start(prober, "b", up=False, limit=10.0)
    clock.advance(1.0)
    clock.advance(1.0)
    prober.out["b"][0].callback(True)
    # a: at 0, 1 and 2 s; b, whose probes hang: one more at each tick while fewer than 4 are out.
    assert prober.slots == [None] * 6
    _cancel(waiter)
    _cancel(other)


def test_a_verdict_there_at_once_keeps_the_work_slot() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": False})
    events: list[str] = []
    slot = _slot(events)
    with working_as(slot):
        waiting = _start(prober, "a", up=False, limit=10.0)
    assert _outcome(waiting) is True
    assert events == [] and slot.held


def test_a_reboot_wait_gives_the_slot_back_once_for_both_waits() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    events: list[str] = []
    slot = _slot(events)

    def progress(what: str) -> None:
        events.append(what)

    with working_as(slot):
        rebooting = Deferred.fromCoroutine(prober.wait_for_reboot("a", progress))
    prober.up["a"] = False
    clock.advance(1.0)
    assert events == ["give back", "down"]
    prober.up["a"] = True
    clock.advance(1.0)
    outcome = _outcome(rebooting)
    assert (outcome.went_down, outcome.came_back) == (True, True)
    assert events == ["give back", "down", "take resuming=True"] and slot.held


# --- local errors ------------------------------------------------------------------


class _Endpoint:
    """A TCP endpoint that cannot make a socket: too many open files, as Twisted reports it or raised."""

    def __init__(self, raised: bool) -> None:
        self.raised = raised
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.raised:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return fail(ConnectBindError(errno.EMFILE, os.strerror(errno.EMFILE)))


class _OutOfFiles(Prober):
    def __init__(self, clock: Clock, raised: bool) -> None:
        super().__init__(clock, CONFIG, 22)
        self.endpoint = _Endpoint(raised)

    def _endpoint(self, host: str) -> Any:
        return self.endpoint


@pytest.mark.parametrize("raised", [False, True])
def test_a_probe_failing_for_a_local_reason_is_no_verdict_and_is_logged_once_a_tick(raised: bool) -> None:
    clock = Clock()
    prober = _OutOfFiles(clock, raised)
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observer(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        waiters = [_start(prober, host, up=False, limit=2.5) for host in ("a", "b")]
        clock.advance(1.0)
        clock.advance(1.0)
        # Not "down": no evidence about the machines, so no reboot is seen.
        assert not any(waiter.called for waiter in waiters)
        clock.advance(1.0)
        # The limit passed with the machines never seen down.
        assert [_outcome(waiter) for waiter in waiters] == [False, False]
    finally:
        globalLogPublisher.removeObserver(observer)
    assert prober.endpoint.attempts == 8  # each host, once at the start and once a tick
    local = [event for event in events if "local reason" in event.get("log_format", "")]
    assert [event["host"] for event in local] == ["a"] * 4  # once a tick, not once a host
    assert "Too many open files" in local[0]["error"]
    assert clock.getDelayedCalls() == []
    failure = _outcome(Deferred.fromCoroutine(prober.alive("a")))
    assert isinstance(failure, Failure) and failure.check(LocalProbeError)
