"""
Backpressure and fairness: how many actions may wait, and how many may run.

Actions come in two kinds. Read-only ones (C{buildslave_uptime},
C{buildslave_last_activity}) only look at a machine; the others change it
(reboot, shutdown, disable, the AWS actions) and hold its lock while they
run. Each kind has its own queue bound, C{[server] max_queued} pending
requests, past which a new request is refused with L{QueueFull} (a 503 with
C{Retry-After}): a flood of reads fills only the read queue, and a reboot is
still accepted.

At most C{[server] concurrency} actions run at once, as in 2015. Read-only
actions may hold at most C{[server] read_concurrency} of those slots (four
fifths by default), so the rest are always there for actions that change
machines, which may use every slot. A read first waits for one of its own
slots and only then for a shared one, so reads waiting in numbers never
stand in a reboot's way.

The limits are read each time they matter, so a reload changes them for
what comes next.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred

from slaveapi.config import ServerConfig

#: Seconds a refused client is asked to wait before trying again.
RETRY_AFTER = 30

READS = "read-only"
CHANGES = "changing"


@dataclass(frozen=True)
class Limits:
    """
    @ivar concurrency: actions running at once, of both kinds together.
    @ivar read_concurrency: of those, at most this many read-only ones.
    @ivar max_queued: pending requests of each kind accepted at most.
    """

    concurrency: int
    read_concurrency: int
    max_queued: int

    @classmethod
    def of(cls, concurrency: int, read_concurrency: int | None = None, max_queued: int = 10000) -> Limits:
        """The limits with C{read_concurrency} defaulting to four fifths of C{concurrency}."""
        if read_concurrency is None:
            read_concurrency = max(1, concurrency - concurrency // 5)
        return cls(concurrency, min(read_concurrency, concurrency), max_queued)


class QueueFull(Exception):
    """A request refused because its kind's queue is full; C{str()} says so in one line."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(f"{limit} {kind} requests are already waiting; try again in {RETRY_AFTER} seconds")
        self.kind = kind
        self.limit = limit
        self.retry_after = RETRY_AFTER


class Slots:
    """
    At most C{limit()} holders at once, the others served first come, first served.

    Like L{twisted.internet.defer.DeferredSemaphore}, except that the limit
    may change between calls, and that a caller I{resuming} (an action
    taking its work slot back after a wait, see L{slaveapi.work}) is served
    before callers that have not started: finishing work already under way
    first keeps what is in flight small. A waiting L{acquire} that is
    cancelled leaves the line.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._resuming: deque[Deferred[None]] = deque()
        self._starting: deque[Deferred[None]] = deque()
        self._handing_over = False
        self.held = 0

    def acquire(self, resuming: bool = False) -> Deferred[None]:
        """Fires once a slot is held by the caller, who must L{release} it."""
        if not self.waiting and self.held < self._limit():
            self.held += 1
            return Deferred.fromCoroutine(_nothing())
        line = self._resuming if resuming else self._starting
        waiter: Deferred[None] = Deferred(line.remove)
        line.append(waiter)
        return waiter

    def release(self) -> None:
        """Give a slot back, handing it to the longest waiter if the limit allows."""
        self.held -= 1
        if self._handing_over:
            # Called by a waiter this very hand-over woke (it ran up to a wait
            # and gave its slot back): the loop below goes on with the next.
            # Handing over from here instead would nest one action's run in
            # another's, and a thousand of them exceed Python's stack.
            return
        self._handing_over = True
        try:
            while self.waiting and self.held < self._limit():
                self.held += 1
                (self._resuming or self._starting).popleft().callback(None)
        finally:
            self._handing_over = False

    @property
    def waiting(self) -> int:
        return len(self._resuming) + len(self._starting)


async def _nothing() -> None:
    return None


def server_limits(server: ServerConfig) -> Limits:
    """The limits C{[server]} sets."""
    return Limits.of(server.concurrency, server.read_concurrency, server.max_queued)
