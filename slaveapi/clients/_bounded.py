"""
Bounded calls and bounded polls on the reactor: the one way a client, the
processor or an action gives up after a number of seconds.

L{within} runs one piece of work under a time limit; L{poll_until} asks
a question again and again until the answer is yes or the time is up. Both
take their clock from the reactor they are given, so a test drives them with
a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from slaveapi.clients._errors import ClientTimeout
from slaveapi.work import pause

T = TypeVar("T")

#: Builds the exception raised when the time is up, to keep a caller's own wording and class.
TimeoutFactory = Callable[[], BaseException]


async def within(
    reactor: Any,
    seconds: float,
    work: Awaitable[T] | Deferred[T],
    what: str,
    *,
    timeout_error: TimeoutFactory | None = None,
) -> T:
    """
    The result of C{work}, or a timeout error once C{seconds} have passed.

    When the time is up C{work} is cancelled and, however it then ends
    (C{CancelledError}, or an error of its own made from the cancellation),
    C{timeout_error()} is raised, by default a L{ClientTimeout} saying
    C{"<what> timed out after <seconds>s"}. A C{work} that finishes at the
    same instant as the limit (at the same reactor time) wins: the
    cancellation waits for the calls already due at that time to run.
    Cancelling the caller cancels C{work} too, and the caller then sees
    C{CancelledError}, not a timeout.

    @param work: a coroutine, a Deferred, an asyncio future or any
        awaitable; a coroutine starts running at once. A cancelled asyncio
        future ends in C{asyncio.CancelledError}, handled like Twisted's.
    @param what: names the work in the default message, e.g.
        C{"slavealloc: GET http://..."}.
    """
    deferred = _as_deferred(work)
    expired = False
    timers: list[Any] = []

    def expire() -> None:
        nonlocal expired
        if not deferred.called:
            expired = True
            deferred.cancel()

    timers.append(reactor.callLater(seconds, lambda: timers.append(reactor.callLater(0, expire))))
    try:
        return await deferred
    except (Exception, asyncio.CancelledError):
        if not expired:
            raise
        error = timeout_error() if timeout_error is not None else ClientTimeout(f"{what} timed out after {seconds:g}s")
        raise error from None
    finally:
        for timer in timers:
            if timer.active():
                timer.cancel()


async def poll_until(
    reactor: Any,
    check: Callable[[], Awaitable[T | None]],
    every: float,
    deadline: float,
    what: str,
    *,
    timeout_error: TimeoutFactory | None = None,
) -> T:
    """
    Call C{check()} until it returns a truthy value, and return that value.

    The first call is made at once; between calls C{poll_until} sleeps on
    the reactor for C{every} seconds, or for what is left until the deadline
    when that is less, so the last call is made at the deadline itself and
    C{check} is called at most C{ceil(deadline / every) + 1} times. When a
    call made at or after the deadline is still falsy, C{timeout_error()} is
    raised, by default a L{ClientTimeout} saying
    C{"<what>: not done within <deadline>s"}. A caller that wants a yes/no
    answer passes an error of its own and catches it; one whose message
    names the last thing seen keeps it in a closure that C{check} updates.

    The sleeps are waits (L{slaveapi.work.pause}): an action polling holds
    its work slot only while C{check} runs.

    C{check} must bound its own calls (it is not cut off at the deadline);
    its exceptions end the poll unchanged. Cancelling the caller cancels the
    check or the sleep in progress.

    @param every: seconds between calls; must be positive.
    @param deadline: seconds from now after which no further call is made.
    """
    if every <= 0:
        raise ValueError(f"poll_until({what!r}): every must be positive, not {every!r}")
    give_up = reactor.seconds() + deadline
    while True:
        value = await check()
        if value:
            return value
        remaining = give_up - reactor.seconds()
        if remaining <= 0:
            if timeout_error is not None:
                raise timeout_error()
            raise ClientTimeout(f"{what}: not done within {deadline:g}s")
        await pause(reactor, min(every, remaining))


def settled(deferred: Deferred[Any]) -> Deferred[None]:
    """
    A Deferred that fires with C{None} once C{deferred} has fired, either
    way, leaving C{deferred}'s result to its other users; cancelling it
    leaves C{deferred} alone. For bounding a wait on something shared, such
    as a connection's "closed" Deferred, with L{within}.
    """
    follower: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        if not follower.called:
            follower.callback(None)
        return result

    deferred.addBoth(fire)
    return follower


def _as_deferred(work: Awaitable[T] | Deferred[T]) -> Deferred[T]:
    if isinstance(work, Deferred):
        return work
    if isinstance(work, Coroutine):
        return Deferred.fromCoroutine(work)
    if asyncio.isfuture(work):
        return Deferred.fromFuture(work)
    return Deferred.fromCoroutine(_awaited(work))


async def _awaited(work: Awaitable[T]) -> T:
    return await work
