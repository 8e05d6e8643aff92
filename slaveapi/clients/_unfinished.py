"""
Work a caller may stop waiting for but that must still run to its end.

A power cycle whose caller is cancelled (an action's timeout, a stop)
between switching a machine off and on must still switch it on: both power
clients hand that part to L{Unfinished}, await it through a shield, and wait
for what is left when they close.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure


class Unfinished:
    """The work in flight of one client, and how it ended once nobody waits."""

    def __init__(self, log: Logger) -> None:
        self._log = log
        self._work: set[Deferred[None]] = set()

    def pending(self) -> list[Deferred[None]]:
        """The work not finished yet."""
        return list(self._work)

    def shield(self, work: Deferred[None], label: str, **fields: Any) -> Deferred[None]:
        """
        A Deferred that follows C{work} but whose cancellation leaves C{work}
        running. When the caller has gone, how C{work} ended is logged.

        @param label: a log format naming the work, e.g. C{"ipmi: {host}"},
            with C{fields} filling it in.
        """
        self._work.add(work)
        outer: Deferred[None] = Deferred(lambda _: None)  # cancelling fails it alone

        def settle(result: object) -> None:
            self._work.discard(work)
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(None)
            elif isinstance(result, Failure):
                self._log.warn(
                    label + ": power cycle cancelled by its caller, and finishing it failed: {reason}",
                    reason=result.getErrorMessage(),
                    **fields,
                )
            else:
                self._log.info(label + ": finished the power-on despite the cancellation", **fields)

        work.addBoth(settle)
        return outer
