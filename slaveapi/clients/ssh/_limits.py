"""
The per-host limit on SSH sessions (C{[ssh] per_host}): L{SessionSlots}.

A thin layer over the keyed limiter every client shares
(L{slaveapi.clients._targets.TargetSlots}): it names hosts the SSH way and
bounds the wait with C{connect_timeout}, failing with L{SSHBusy}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import TimeoutError as WaitTimedOut

from slaveapi.clients._targets import TargetSlots
from slaveapi.clients.ssh._errors import SSHBusy


class SessionSlots:
    """
    At most C{per_host} sessions to one host at once: a line per host,
    made when first needed and dropped again when the host has none open.
    Hosts are told apart by name as given, lower-cased, without a final dot.
    """

    def __init__(self, reactor: Any, per_host: int) -> None:
        self._reactor = reactor
        self.per_host = per_host
        self._slots: TargetSlots[str] = TargetSlots(per_host)

    async def acquire(self, host: str, timeout: float, label: str, *, wait: bool = True) -> Callable[[], None]:
        """
        Wait, at most C{timeout} seconds, for a place among C{host}'s sessions.

        @param wait: C{False}: take a place only if one is free now, else
            fail at once (for SlaveAPI's own background checks, which must
            never make an action wait behind them).
        @return: the function that gives the place back (calling it again does nothing).
        @raise SSHBusy: none came free in time (or, without C{wait}, none was free).
        """
        key = host.lower().rstrip(".")
        if not wait:
            release = self._slots.try_acquire(key)
            if release is None:
                raise SSHBusy(
                    f"{label}: no SSH session free now"
                    f" ({self.per_host} already open to this host, the [ssh] per_host limit)"
                )
            return release
        waiting = self._slots.acquire(key)
        waiting.addTimeout(timeout, self._reactor)
        try:
            return await waiting
        except WaitTimedOut:
            raise SSHBusy(
                f"{label}: no SSH session came free within {timeout:g}s"
                f" ({self.per_host} already open to this host, the [ssh] per_host limit)"
            ) from None

    def __len__(self) -> int:
        """How many hosts have sessions open or waited for now."""
        return len(self._slots)
