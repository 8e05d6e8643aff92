"""
The probe loop: one per prober, serving every waiter of L{Prober.wait_for}.

A thousand actions waiting for a thousand machines must not cost a thousand
timers and a probe per waiter a tick: a waiter registers for a host, and
while any is left the loop probes every watched host at each tick (every
C{interval}), however many wait on it, and gives each waiter its verdict
when the machine is seen in the state waited for, or when its limit has
passed.

A machine that answers again must be seen within about one C{interval}
(plus the round trip), even when a probe of it is still out: a TCP
connection to a machine that is down hangs until its timeout, longer than a
tick. So a host may have more than one probe out (up to what the prober
allows for it, L{ProbeLoop} C{per_host}): each tick starts one more while
fewer are out, and any probe that finds the machine up counts. A host
allowed one probe at a time (ICMP: the probe itself sends a request every
C{interval} until its deadline) is probed again as soon as its probe ends,
when that probe took a tick or more, rather than at the next tick.

The loop's timers and probes belong to no action: they are started under
L{slaveapi.work.detached}, so shared work never gives back or takes one
action's work slot, whichever action happened to start the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi.clients._bounded import within
from slaveapi.clients._errors import ClientTimeout
from slaveapi.clients.probe._errors import LocalProbeError, ProbeError
from slaveapi.work import detached

#: Probes started in one turn of the reactor (see L{ProbeLoop._start_due}).
PROBES_PER_TURN = 100

#: One probe of a host: whether it answers.
ProbeFunction = Callable[[str], Coroutine[Any, Any, bool]]


@dataclass(eq=False)
class _Waiter:
    """One caller of L{ProbeLoop.wait}: what it waits for, until when, and its verdict."""

    up: bool
    give_up: float
    #: The first probe (by number, per host) whose answer counts: one started after it arrived.
    first_probe: int
    verdict: Deferred[bool]


@dataclass(eq=False)
class _Watch:
    """A host some waiter waits on."""

    host: str
    waiters: list[_Waiter] = field(default_factory=list)
    #: How many probes of the host were started (the number of the next).
    started: int = 0
    #: The probes out: their number, their Deferred and when they started.
    out: dict[int, tuple[Deferred[None], float]] = field(default_factory=dict)
    #: The number of the latest-started probe that found the host up (-1: none):
    #: a probe started before it that finds the host down is out of date.
    seen_up: int = -1


class ProbeLoop:
    """
    Probes the watched hosts every C{interval} and settles their waiters.

    @param probe: one probe of a host (the prober's C{alive}).
    @param bound: the most one probe may take before it counts as "not alive".
    @param per_host: how many probes of a host may be out at once.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        interval: float,
        probe: ProbeFunction,
        bound: Callable[[], float],
        per_host: Callable[[str], int],
    ) -> None:
        self._reactor = reactor
        self._interval = interval
        self._probe_function = probe
        self._bound = bound
        self._per_host = per_host
        self._watches: dict[str, _Watch] = {}
        self._tick_call: Any = None
        self._slice_call: Any = None
        self._due: list[_Watch] = []
        #: Ticks so far, and the tick a local error was last logged at (one line a tick at most).
        self._ticks = 0
        self._local_logged_at = -1

    @property
    def watched(self) -> list[str]:
        """The hosts some waiter waits on now."""
        return list(self._watches)

    def wait(self, host: str, up: bool, limit: float) -> Deferred[bool]:
        """
        A waiter for C{host} to be up (or down): fires True when it is seen
        so, False once C{limit} seconds have passed first. The host is
        probed at once if no one was waiting on it yet. Cancelling the
        Deferred leaves the loop.
        """
        watch = self._watches.get(host)
        fresh = watch is None
        if watch is None:
            watch = self._watches[host] = _Watch(host)
        waiter = _Waiter(
            up, self._reactor.seconds() + limit, watch.started, Deferred(lambda _: self._leave(watch, waiter))
        )
        watch.waiters.append(waiter)
        if fresh:
            self._probe(watch)
        self._keep_ticking()
        return waiter.verdict

    def _keep_ticking(self) -> None:
        if self._watches and self._tick_call is None:
            with detached():
                self._tick_call = self._reactor.callLater(self._interval, self._tick)
        elif not self._watches:
            for call in (self._tick_call, self._slice_call):
                if call is not None and call.active():
                    call.cancel()
            self._tick_call = self._slice_call = None
            self._due = []

    def _tick(self) -> None:
        """Start one more probe of every watched host that has fewer out than it may."""
        self._tick_call = None
        self._ticks += 1
        self._due = list(self._watches.values())
        self._start_due()

    def _start_due(self) -> None:
        """
        Start the probes due this tick, L{PROBES_PER_TURN} at a time: a
        tick of a thousand hosts goes out in slices, one turn of the reactor
        each, so that what it answers meanwhile (an API request) waits for
        one slice, not for the whole tick.
        """
        self._slice_call = None
        batch, self._due = self._due[:PROBES_PER_TURN], self._due[PROBES_PER_TURN:]
        for watch in batch:
            # A waiter settled by an earlier probe of this tick may have left (or replaced) a watch.
            if self._watches.get(watch.host) is watch and len(watch.out) < self._per_host(watch.host):
                self._probe(watch)
        if self._due and self._watches:
            with detached():
                self._slice_call = self._reactor.callLater(0, self._start_due)
        else:
            self._due = []
            self._keep_ticking()

    def _probe(self, watch: _Watch) -> None:
        number = watch.started
        watch.started += 1
        began = self._reactor.seconds()
        with detached():
            probing = Deferred.fromCoroutine(
                within(self._reactor, self._bound(), self._probe_function(watch.host), f"probe of {watch.host}")
            )
        done: Deferred[None] = probing.addBoth(lambda result: self._ended(watch, number, began, result))
        if not done.called:
            watch.out[number] = (done, began)

    def _ended(self, watch: _Watch, number: int, began: float, result: bool | Failure) -> None:
        """A probe ended: judge its answer, then probe again at once if the host has none out now."""
        watch.out.pop(number, None)
        if isinstance(result, Failure) and result.check(CancelledError):
            return  # the watch was left; no one is waiting on this answer
        self._judge(watch, number, result)
        if (
            self._watches.get(watch.host) is watch
            and not watch.out
            and self._reactor.seconds() - began >= self._interval
        ):
            self._probe(watch)

    def _judge(self, watch: _Watch, number: int, result: bool | Failure) -> None:
        """Give their verdict to the waiters this probe's answer (or failure) settles."""
        answer: bool | None = None
        failure: Failure | None = None
        if isinstance(result, Failure):
            if result.check(LocalProbeError):
                self._note_local(watch.host, result)
            elif result.check(ClientTimeout):
                # Overstayed its bound: not seen up.
                self._log.debug("probe of {host}: {error}", host=watch.host, error=result.getErrorMessage())
                answer = False
            else:
                failure = result
        else:
            answer = result
        if answer is True:
            watch.seen_up = max(watch.seen_up, number)
        elif answer is False and number < watch.seen_up:
            answer = None  # a later probe already found it up
        now = self._reactor.seconds()
        settled: list[tuple[_Waiter, bool | Failure]] = []
        for waiter in watch.waiters:
            if waiter.first_probe > number:
                continue
            if failure is not None:
                settled.append((waiter, failure))
            elif answer is not None and answer == waiter.up:
                settled.append((waiter, True))
            elif now >= waiter.give_up:
                settled.append((waiter, False))
        for waiter, _ in settled:
            watch.waiters.remove(waiter)
        if not watch.waiters and self._watches.get(watch.host) is watch:
            self._forget(watch)
        self._keep_ticking()
        for waiter, verdict in settled:
            if waiter.verdict.called:
                continue
            if isinstance(verdict, Failure):
                waiter.verdict.errback(verdict)
            else:
                waiter.verdict.callback(verdict)

    def _note_local(self, host: str, failure: Failure) -> None:
        """A probe failed for a local reason: no verdict; logged once a tick at most."""
        if self._local_logged_at == self._ticks:
            return
        self._local_logged_at = self._ticks
        self._log.warn(
            "probe of {host} failed for a local reason, not counted as the machine down: {error}",
            host=host,
            error=failure.getErrorMessage(),
        )

    def _forget(self, watch: _Watch) -> None:
        """No one waits on the host any more: stop watching it and cancel its probes out."""
        del self._watches[watch.host]
        out, watch.out = watch.out, {}
        for probing, _ in out.values():
            probing.cancel()

    def _leave(self, watch: _Watch, waiter: _Waiter) -> None:
        """A cancelled waiter: out of the loop; a host no one waits on any more is not probed."""
        if waiter in watch.waiters:
            watch.waiters.remove(waiter)
        if not watch.waiters and self._watches.get(watch.host) is watch:
            self._forget(watch)
        self._keep_ticking()

    def close(self) -> None:
        """Stop the loop and its probes; any waiter left is failed (L{ProbeError}) rather than left hanging."""
        left = [waiter for watch in self._watches.values() for waiter in watch.waiters]
        for watch in list(self._watches.values()):
            watch.waiters.clear()
            self._forget(watch)
        self._keep_ticking()
        for waiter in left:
            if not waiter.verdict.called:
                waiter.verdict.errback(ProbeError("the prober was closed while waiting"))


__all__ = ["ProbeFunction", "ProbeLoop"]
