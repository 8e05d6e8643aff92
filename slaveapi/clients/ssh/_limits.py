"""
The per-host limit on SSH sessions (C{[ssh] per_host}): L{SessionSlots}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import DeferredSemaphore, TimeoutError as WaitTimedOut

from slaveapi.clients.ssh._errors import SSHBusy


class SessionSlots:
    """
    At most C{per_host} sessions to one host at once: a semaphore per host,
    made when first needed and dropped again when the host has none open.
    Hosts are told apart by name as given, lower-cased, without a final dot.
    """

    def __init__(self, reactor: Any, per_host: int) -> None:
        self._reactor = reactor
        self.per_host = per_host
        self._semaphores: dict[str, DeferredSemaphore] = {}

    async def acquire(self, host: str, timeout: float, label: str) -> Callable[[], None]:
        """
        Wait, at most C{timeout} seconds, for a place among C{host}'s sessions.

        @return: the function that gives the place back (calling it again does nothing).
        @raise SSHBusy: none came free in time.
        """
        key = host.lower().rstrip(".")
        semaphore = self._semaphores.get(key)
        if semaphore is None:
            semaphore = self._semaphores[key] = DeferredSemaphore(self.per_host)
        waiting = semaphore.acquire()
        waiting.addTimeout(timeout, self._reactor)
        try:
            await waiting
        except WaitTimedOut:
            self._drop_if_idle(key, semaphore)
            raise SSHBusy(
                f"{label}: no SSH session came free within {timeout:g}s"
                f" ({self.per_host} already open to this host, the [ssh] per_host limit)"
            ) from None
        except BaseException:
            self._drop_if_idle(key, semaphore)
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                semaphore.release()
                self._drop_if_idle(key, semaphore)

        return release

    def _drop_if_idle(self, key: str, semaphore: DeferredSemaphore) -> None:
        if semaphore.tokens == semaphore.limit and not semaphore.waiting and self._semaphores.get(key) is semaphore:
            del self._semaphores[key]
