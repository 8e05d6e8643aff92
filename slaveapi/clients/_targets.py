"""
Per-target limits: at most N requests in flight to one remote target at once.

Since an action gives its work slot back while it waits (L{slaveapi.work}),
a reboot wave has hundreds of actions doing remote work at the same time,
and many of them may talk to the same small device: one PDU switches dozens
of outlets, a BMC answers one session at a time. L{TargetSlots} keeps what
reaches one target (a BMC address, a PDU host, an SSH host) to a few
requests at once; the others wait their turn in a first-come, first-served
line of that target, and a wait that is cancelled (a deadline, a caller
given up on) leaves the line.

A target is known only while someone holds or waits for one of its slots:
the entry of a target that goes idle is dropped, so a fleet of thousands of
targets costs memory only for those busy now.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred

K = TypeVar("K", bound=Hashable)


@dataclass(eq=False)
class _Target:
    """The holders of one target's slots and the line waiting for one."""

    held: int = 0
    waiting: deque[Deferred[None]] = field(default_factory=deque)
    #: A release is handing slots to waiters now (see L{Slots.release}'s loop in admission).
    handing_over: bool = False


class TargetSlots(Generic[K]):
    """
    At most C{per_target} holders per key at once, the others served first
    come, first served (per key).

    L{acquire} gives a function that gives the slot back; L{hold} is the
    C{async with} form; L{try_acquire} takes a slot only when one is free
    at once, never waiting. Keys are used as given: a caller that wants host
    names told apart case-insensitively normalises them first.

    @ivar per_target: the limit per key (at least 1).
    """

    def __init__(self, per_target: int) -> None:
        if per_target < 1:
            raise ValueError(f"per_target must be at least 1, not {per_target!r}")
        self.per_target = per_target
        self._targets: dict[K, _Target] = {}

    def acquire(self, key: K) -> Deferred[Callable[[], None]]:
        """
        Fires, once the caller holds one of C{key}'s slots, with the function
        that gives it back (calling that again does nothing). Cancelling a
        wait takes it out of the line; the slot is then not held.
        """
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _Target()
        if not target.waiting and target.held < self.per_target:
            target.held += 1
            return defer.succeed(self._releaser(key, target))

        def leave(waiter: Deferred[None]) -> None:
            if waiter in target.waiting:
                target.waiting.remove(waiter)
            self._drop_if_idle(key, target)

        waiter: Deferred[None] = Deferred(leave)
        target.waiting.append(waiter)
        return waiter.addCallback(lambda _: self._releaser(key, target))

    def try_acquire(self, key: K) -> Callable[[], None] | None:
        """
        Take one of C{key}'s slots only if one is free now and nobody waits
        in its line: the function that gives it back, else C{None} (the
        caller is not put in the line).
        """
        target = self._targets.get(key)
        if target is not None and (target.waiting or target.held >= self.per_target):
            return None
        if target is None:
            target = self._targets[key] = _Target()
        target.held += 1
        return self._releaser(key, target)

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        """Hold one of C{key}'s slots for the body of an C{async with}."""
        release = await self.acquire(key)
        try:
            yield
        finally:
            release()

    def held(self, key: K) -> int:
        """How many hold a slot of C{key} now."""
        target = self._targets.get(key)
        return target.held if target is not None else 0

    def waiting(self, key: K) -> int:
        """How many wait in C{key}'s line now."""
        target = self._targets.get(key)
        return len(target.waiting) if target is not None else 0

    def __len__(self) -> int:
        """How many keys are known (held or waited for) now."""
        return len(self._targets)

    def _releaser(self, key: K, target: _Target) -> Callable[[], None]:
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            target.held -= 1
            if target.handing_over:
                return  # a holder woken by the loop below gave its slot back: the loop goes on
            target.handing_over = True
            try:
                while target.waiting and target.held < self.per_target:
                    target.held += 1
                    target.waiting.popleft().callback(None)
            finally:
                target.handing_over = False
            self._drop_if_idle(key, target)

        return release

    def _drop_if_idle(self, key: K, target: _Target) -> None:
        if target.held == 0 and not target.waiting and self._targets.get(key) is target:
            del self._targets[key]
