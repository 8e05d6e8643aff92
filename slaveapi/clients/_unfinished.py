"""
Work a caller may stop waiting for but that must still run to its end.

A power cycle whose caller is cancelled (an action's timeout, a stop)
between switching a machine off and on must still switch it on: the IPMI,
Redfish and PDU clients hand that part to L{Unfinished.finish}, and wait for
what is left when they close.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
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

    async def finish(
        self,
        work: Callable[[Callable[[str], None]], Coroutine[Any, Any, None]],
        progress: Callable[[str], None] | None,
        label: str,
        **fields: Any,
    ) -> None:
        """
        Run C{work(say)} as its own task and wait for it through L{shield}.

        C{say} logs each line under C{label} and tells C{progress} too, until
        the caller is cancelled: then C{CancelledError} is raised here at
        once, the work goes on (silently for C{progress}), and the
        cancellation is logged.
        """
        cancelled = False

        def say(line: str) -> None:
            self._log.info(label + ": {line}", line=line, **fields)
            if progress is not None and not cancelled:
                progress(line)

        tail = Deferred.fromCoroutine(work(say))
        try:
            await self.shield(tail, label, **fields)
        except CancelledError:
            cancelled = True
            if not tail.called:
                self._log.warn(
                    label + ": power cycle cancelled; finishing it in the background so the power is not left off",
                    **fields,
                )
            raise
