"""
A work slot that records when it is given back and taken again, for tests
that check a client's waits hold no slot (L{slaveapi.work}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from slaveapi.work import WorkSlot, working_as

T = TypeVar("T")


class RecordedSlot:
    """
    A held L{WorkSlot} on C{clock}; C{events} lists ("give back" | "take", time).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: list[tuple[str, float]] = []
        self.slot = WorkSlot(self._take, lambda: self.events.append(("give back", clock.seconds())))
        self.slot.held = True

    def _take(self, resuming: bool) -> Deferred[None]:
        self.events.append(("take", self.clock.seconds()))
        return succeed(None)

    def run(self, work: Callable[[], Awaitable[T]], step: float = 0.01, steps: int = 10_000) -> list[Any]:
        """
        Start C{work} as this slot's action and advance the clock by C{step}
        until it ends (at most C{steps} times); what it ended with (a value or
        the exception), in a list.
        """
        outcome: list[Any] = []
        with working_as(self.slot):
            running = Deferred.fromCoroutine(_awaited(work))
        running.addBoth(lambda result: outcome.append(getattr(result, "value", result)))
        for _ in range(steps):
            if outcome:
                break
            self.clock.advance(step)
        return outcome

    def pauses(self) -> list[tuple[float, float]]:
        """Each (given back, taken again) pair of times."""
        return [
            (self.events[n][1], self.events[n + 1][1])
            for n in range(len(self.events) - 1)
            if self.events[n][0] == "give back" and self.events[n + 1][0] == "take"
        ]


async def _awaited(work: Callable[[], Awaitable[T]]) -> T:
    return await work()
