"""
The prober's one probe loop: every waiter of L{Prober.wait_for} is served by
it, each watched host probed once a tick however many wait on it, and the
loop gone (nothing left on the clock) once no one waits.

Everything runs on a L{Clock} with a scripted probe: a host's answer is what
the test says, now or (for a host the test holds) when the test fires it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from slaveapi.clients.probe import ProbeError, Prober
from slaveapi.config import ProbeConfig
from slaveapi.work import WorkSlot, working_as

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

    async def alive(self, host: str) -> bool:
        self.asked.append((self.clock.seconds(), host))
        if self.error is not None:
            raise self.error
        if host in self.held:
            answer: Deferred[bool] = Deferred()
            self.out.setdefault(host, []).append(answer)
            return await answer
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


def test_a_probe_still_out_is_not_sent_again() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": False, "b": True})
    prober.held.add("a")
    slow = _start(prober, "a", up=True, limit=10.0)
    quick = [_start(prober, "b", up=False, limit=10.0) for _ in range(2)]
    clock.advance(1.0)
    clock.advance(1.0)
    assert [at for at, host in prober.asked if host == "a"] == [0.0]
    assert [at for at, host in prober.asked if host == "b"] == [0.0, 1.0, 2.0]
    # a answers at last: up. The next tick probes it afresh... but no one waits any more.
    prober.out["a"][0].callback(True)
    assert _outcome(slow) is True
    assert prober.watched == ["b"]
    for waiter in quick:
        _cancel(waiter)
    assert clock.getDelayedCalls() == []


def test_a_probe_that_overstays_its_bound_counts_as_down() -> None:
    clock = Clock()
    prober = _Machines(clock, {"a": True})
    prober.held.add("a")
    waiter = _start(prober, "a", up=True, limit=2.0)
    # The probe's bound is tcp_timeout + 2 = 5 s; until then it is not sent again.
    clock.advance(4.0)
    assert not waiter.called and len(prober.asked) == 1
    clock.pump([1.0, 0.0])
    assert _outcome(waiter) is False
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
