"""
In-memory power control (IPMI, PDU outlets, Mozpool) that records every call
and ends each as scripted: a power cycle of the L{FakeHosts} machine behind
it, or an error, after a delay on the reactor's clock (a timeout, say).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.task import deferLater
from zope.interface import implementer

from slaveapi.clients.inventory import PDUOutlet
from slaveapi.interfaces import IIPMI, IPDU, IMozpool
from slaveapi.testing._hosts import FakeHost, FakeHosts


@dataclass(frozen=True)
class Outcome:
    """
    How a power call ends: C{after} seconds on the reactor's clock, C{error}
    is raised, or, without one, the machine is power-cycled.
    """

    error: Exception | None = None
    after: float = 0.0


class _PowerControl:
    """
    What the three fakes share.

    @ivar outcomes: by target (BMC address, outlet, device name); others end as C{default}.
    @ivar calls: C{(call, target)} for every call made.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        self._reactor = reactor
        self._hosts = hosts
        self.outcomes: dict[str, Outcome] = {}
        self.default = Outcome()
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    async def _cycle(self, call: str, target: str, machine: Callable[[FakeHosts], FakeHost | None]) -> None:
        self.calls.append((call, target))
        outcome = self.outcomes.get(target, self.default)
        if outcome.after:
            await deferLater(self._reactor, outcome.after, lambda: None)
        if outcome.error is not None:
            raise outcome.error
        if self._hosts is not None:
            host = machine(self._hosts)
            if host is not None:
                self._hosts.go_down(host)

    async def close(self) -> None:
        """Record that the client was released."""
        self.closed = True


@implementer(IIPMI)
class FakeIPMI(_PowerControl):
    """BMCs by address; a BMC answers when a machine has it, unless its address is in C{silent}."""

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        super().__init__(reactor, hosts)
        self.silent: set[str] = set()

    async def available(self, host: str) -> bool:
        """Whether the BMC at C{host} answers."""
        self.calls.append(("available", host))
        if host in self.silent:
            return False
        return self._hosts is None or self._hosts.by_bmc(host) is not None

    async def powercycle(self, host: str, progress: Callable[[str], None] | None = None) -> None:
        """Power-cycle the machine behind the BMC at C{host}, as scripted."""
        await self._cycle("powercycle", host, lambda hosts: hosts.by_bmc(host))


@implementer(IPDU)
class FakePDU(_PowerControl):
    """PDU outlets, by their C{host:outlet} text."""

    async def powercycle(self, outlet: PDUOutlet, progress: Callable[[str], None] | None = None) -> None:
        """Switch the outlet off and on, as scripted."""
        await self._cycle("powercycle", str(outlet), lambda hosts: hosts.by_outlet(str(outlet)))


@implementer(IMozpool)
class FakeMozpool(_PowerControl):
    """Mozpool imaging servers; outcomes by device name."""

    async def power_cycle(self, server: str, device: str) -> None:
        """Power-cycle C{device}, as scripted."""
        await self._cycle(f"power_cycle via {server}", device, lambda hosts: hosts.find(device))
