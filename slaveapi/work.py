"""
Work slots: what an action holds while SlaveAPI works for it, and gives back while it only waits.

A reboot spends milliseconds of SlaveAPI's effort (a probe, one SSH login,
one IPMI or SNMP exchange) and half a minute or more waiting for the machine
to come back. If an action held one of the C{[server] concurrency} slots
for all that time, a wave of a thousand reboots would run fifty at a time
and take twenty times one reboot's time. So the slot is held only while the
action works: L{waiting} gives it back for the length of a wait and takes
it again (ahead of actions that have not started yet) before the action
goes on.

The processor hands each running action a L{WorkSlot} and makes it the
current one (L{current_slot}, a context variable: it follows the action
into every coroutine it starts, and into no other action's). Waits are
marked where they happen, without the code waiting needing to know about
actions: L{slaveapi.clients.poll_until} sleeps through L{pause}, and the
prober's waits for a reboot are L{waiting}. Outside an action (a test, the
lab) there is no current slot and L{waiting} does nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater


class WorkSlot:
    """
    One action's claim on the work slots.

    @param take: fires once the caller holds the slot again; C{resuming} is
        true when an action takes it back after a wait (such an action goes
        ahead of those not started yet: finishing started work first keeps
        what is in flight small). Cancelling it leaves the line.
    @param give_back: gives the slot back.
    @ivar held: whether the action holds it now.
    @ivar closed: the action has ended (see L{close}).
    """

    def __init__(self, take: Callable[[bool], Deferred[None]], give_back: Callable[[], None]) -> None:
        self._take = take
        self._give_back = give_back
        self._taking: set[Deferred[None]] = set()
        self.held = False
        self.closed = False
        self.waits = 0

    async def take(self, resuming: bool = False) -> None:
        """
        Wait for the slot and hold it. Cancelling the wait leaves it not
        held. Once the slot is L{close}d, returns at once without it.
        """
        if self.closed or self.held:
            return
        taking = self._take(resuming)
        self._taking.add(taking)
        try:
            await taking
        except CancelledError:
            if _closed(self):  # by close() while in line
                return
            raise
        finally:
            self._taking.discard(taking)
        self.held = True

    def give_back(self) -> None:
        """Give the slot back, if held."""
        if self.held:
            self.held = False
            self._give_back()

    def close(self) -> None:
        """
        The action has ended: give the slot back for good. Work it left
        running (a power cycle finishing what it started, shielded from
        the action's cancellation) goes on without a slot: a L{take} waiting
        in line returns at once, and later ones do not queue.
        """
        self.closed = True
        self.give_back()
        for taking in list(self._taking):
            taking.cancel()


def _closed(slot: WorkSlot) -> bool:
    return slot.closed


_current: ContextVar[WorkSlot | None] = ContextVar("slaveapi_work_slot", default=None)


def current_slot() -> WorkSlot | None:
    """The work slot of the action this code runs for, if any."""
    return _current.get()


@contextmanager
def working_as(slot: WorkSlot | None) -> Iterator[None]:
    """
    Make C{slot} the current one for the code run inside (and the
    coroutines it starts); C{None}: no action's (see L{detached}).
    """
    token = _current.set(slot)
    try:
        yield
    finally:
        _current.reset(token)


@asynccontextmanager
async def waiting() -> AsyncIterator[None]:
    """
    Mark a wait: the current action's slot is given back for its length,
    and taken again before the code after it goes on, whether the wait
    ended well or with an error (a cancelled one included: a caller that
    gave up on the wait may go on working). Waits nested in a wait give
    nothing back and take nothing: the slot is taken again when the
    outermost one ends. (Branches of one action waiting side by side share
    its one slot the same way; no action has such branches.)
    """
    slot = _current.get()
    if slot is None or slot.closed:
        yield
        return
    slot.waits += 1
    slot.give_back()
    try:
        yield
    finally:
        slot.waits -= 1
        if slot.waits == 0:
            await slot.take(resuming=True)


def detached() -> AbstractContextManager[None]:
    """
    Run the code inside (and the coroutines it starts) for no action: work
    shared by many actions, such as the prober's one loop, must neither
    give back nor take any one action's slot.
    """
    return working_as(None)


async def pause(reactor: Any, seconds: float) -> None:
    """Sleep C{seconds} on C{reactor}'s clock, holding no work slot meanwhile."""
    async with waiting():
        await deferLater(reactor, seconds, lambda: None)
