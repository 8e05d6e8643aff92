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

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
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
        what is in flight small).
    @param give_back: gives the slot back.
    @ivar held: whether the action holds it now.
    """

    def __init__(self, take: Callable[[bool], Deferred[None]], give_back: Callable[[], None]) -> None:
        self._take = take
        self._give_back = give_back
        self.held = False

    async def take(self, resuming: bool = False) -> None:
        """Wait for the slot and hold it. Cancelling the wait leaves it not held."""
        await self._take(resuming)
        self.held = True

    def give_back(self) -> None:
        """Give the slot back, if held."""
        if self.held:
            self.held = False
            self._give_back()


_current: ContextVar[WorkSlot | None] = ContextVar("slaveapi_work_slot", default=None)


def current_slot() -> WorkSlot | None:
    """The work slot of the action this code runs for, if any."""
    return _current.get()


@contextmanager
def working_as(slot: WorkSlot) -> Iterator[None]:
    """Make C{slot} the current one for the code run inside (and the coroutines it starts)."""
    token = _current.set(slot)
    try:
        yield
    finally:
        _current.reset(token)


@asynccontextmanager
async def waiting() -> AsyncIterator[None]:
    """
    Mark a wait: the current action's slot is given back for its length,
    and taken again before the code after it goes on (or an error from the
    wait propagates), except when the action is being cancelled. Nested or
    concurrent waits of one action give it back once.
    """
    slot = _current.get()
    if slot is None or not slot.held:
        yield
        return
    slot.give_back()
    try:
        yield
    except (CancelledError, asyncio.CancelledError):
        # The action is being stopped: it ends without working again, so it
        # does not queue for a slot on its way out.
        raise
    except BaseException:
        await slot.take(resuming=True)
        raise
    await slot.take(resuming=True)


async def pause(reactor: Any, seconds: float) -> None:
    """Sleep C{seconds} on C{reactor}'s clock, holding no work slot meanwhile."""
    async with waiting():
        await deferLater(reactor, seconds, lambda: None)
