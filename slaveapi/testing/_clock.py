"""
Run an action (or any coroutine) on a C{Clock} to its end, moving the clock
straight to each next scheduled call: hours of waits take no real time.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

_T = TypeVar("_T")

#: More scheduled calls than any action makes: one that keeps scheduling is stuck.
MAX_CALLS = 10_000


def run_on_clock(clock: Clock, work: Coroutine[Any, Any, _T] | Deferred[_T], max_calls: int = MAX_CALLS) -> _T:
    """
    Start C{work} and advance C{clock} to each next scheduled call until it
    ends; its result, or its exception raised.

    @raise AssertionError: C{work} waits while nothing is scheduled (nothing
        will ever wake it), or it did not end within C{max_calls} calls.
    """
    running = work if isinstance(work, Deferred) else ensureDeferred(work)
    results: list[_T] = []
    failures: list[Failure] = []
    running.addCallbacks(results.append, failures.append)
    for _ in range(max_calls):
        if failures:
            failures[0].raiseException()
        if results:
            return results[0]
        if not clock.calls:
            raise AssertionError("the work waits for something that nothing scheduled will do")
        # Clock keeps its calls sorted by time.
        clock.advance(max(0.0, clock.calls[0].getTime() - clock.seconds()))
    raise AssertionError(f"the work did not end within {max_calls} scheduled calls")
