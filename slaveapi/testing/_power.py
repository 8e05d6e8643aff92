"""
In-memory power control (IPMI, Redfish, PDU outlets, Mozpool) that records every call
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
from slaveapi.clients.redfish import BMCDiscovery, RedfishError
from slaveapi.interfaces import IIPMI, IPDU, IMozpool, IRedfish
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


#: The reset kinds a L{FakeRedfish} BMC advertises unless told otherwise.
REDFISH_RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart")


@implementer(IRedfish)
class FakeRedfish(_PowerControl):
    """
    Redfish BMCs by address: the BMC of a machine with C{redfish} set
    answers (unless its address is in C{silent}); which BMCs speak Redfish
    is remembered as by the real client (the same L{BMCDiscovery}).

    Resets act on the machine: C{GracefulRestart} and C{ForceRestart}
    reboot it, C{ForceOff} cuts its power until C{On}. Each is first
    checked against the kinds the BMC advertises (C{reset_kinds} by
    address, else L{REDFISH_RESET_TYPES}), then ends as scripted in
    C{outcomes} (an error, after a delay, as for the other power fakes).

    @ivar power_states: by address, power states L{power_state} answers
        in turn (the last one from then on) instead of the machine's.
    @ivar boot_once: by address, the last one-time boot target set.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        super().__init__(reactor, hosts)
        self.silent: set[str] = set()
        self.reset_kinds: dict[str, tuple[str, ...]] = {}
        self.power_states: dict[str, list[str]] = {}
        self.boot_once: dict[str, str] = {}
        self._discovery = BMCDiscovery(self.available)

    def _machine(self, host: str) -> FakeHost | None:
        return self._hosts.by_bmc(host) if self._hosts is not None else None

    async def available(self, host: str) -> bool:
        """Whether the BMC at C{host} speaks Redfish (asked every time: the service root)."""
        self.calls.append(("available", host))
        if host in self.silent:
            return False
        machine = self._machine(host)
        return self._hosts is None or (machine is not None and machine.redfish)

    async def speaks_redfish(self, host: str) -> bool:
        """L{available}, once per BMC, remembered."""
        return await self._discovery.speaks_redfish(host)

    def forget(self, host: str) -> None:
        """Ask the BMC again at its next L{speaks_redfish}."""
        self.calls.append(("forget", host))
        self._discovery.forget(host)

    async def reset_types(self, host: str) -> tuple[str, ...]:
        """The reset kinds the BMC advertises."""
        self.calls.append(("reset_types", host))
        return self.reset_kinds.get(host, REDFISH_RESET_TYPES)

    async def power_state(self, host: str) -> str:
        """The scripted state, else C{"on"} while the machine is up or booting, C{"off"} otherwise."""
        self.calls.append(("power_state", host))
        scripted = self.power_states.get(host)
        if scripted:
            return scripted.pop(0) if len(scripted) > 1 else scripted[0]
        machine = self._machine(host)
        if machine is None or self._hosts is None:
            return "on"
        return "on" if self._hosts.powered(machine) else "off"

    async def health(self, host: str) -> str | None:
        """Always C{"OK"}."""
        self.calls.append(("health", host))
        return "OK"

    async def reset(self, host: str, reset_type: str) -> None:
        """Reset the machine behind the BMC as C{reset_type} says, as scripted."""
        self.calls.append((f"reset {reset_type}", host))
        allowed = self.reset_kinds.get(host, REDFISH_RESET_TYPES)
        if reset_type not in allowed:
            raise RedfishError(host, f"reset {reset_type}", f"not offered; the BMC allows {', '.join(allowed)}")
        outcome = self.outcomes.get(host, self.default)
        if outcome.after:
            await deferLater(self._reactor, outcome.after, lambda: None)
        if outcome.error is not None:
            raise outcome.error
        machine = self._machine(host)
        if machine is None or self._hosts is None:
            return
        if reset_type in ("GracefulRestart", "ForceRestart"):
            self._hosts.go_down(machine)
        elif reset_type in ("ForceOff", "GracefulShutdown"):
            self._hosts.power_off(machine)
        elif reset_type == "On":
            self._hosts.power_on(machine)

    async def set_boot_once(self, host: str, target: str) -> None:
        """Remember C{target} for the BMC."""
        self.calls.append((f"set_boot_once {target}", host))
        self.boot_once[host] = target


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
