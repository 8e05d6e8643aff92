"""
In-memory power control (IPMI, Redfish, PDU outlets, Mozpool) that records every call
and ends each as scripted: a power cycle of the L{FakeHosts} machine behind
it, or an error, after a delay on the reactor's clock (a timeout, say).

Power states read back are the machine's own (on while it is up or
booting), unless C{power_states} scripts answers for a target; switching
the power on or off acts on the machine as the real BMC or outlet would.
A PDU outlet reads as its machine's power until switched (or set in
L{FakePDU.outlets}), then as switched: an outlet left on while a BMC
powers the machine off still reads on, as a real one does.
One-time boot devices (IPMI) and boot overrides (Redfish) are remembered
per BMC and read back as set: for the next boot only, unless the BMC is
told to keep them for every boot (C{persistent}, C{continuous}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.task import deferLater
from zope.interface import implementer

from slaveapi.clients import BootOverride
from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.redfish import BMCDiscovery, RedfishError, check_cycle_resets
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

    @ivar outcomes: by target (BMC address, outlet, device name), how calls
        that change something end; others end as C{default}. Reads answer
        at once, from the machine or C{power_states}.
    @ivar calls: C{(call, target)} for every call made.
    @ivar power_states: by target, power states (C{"on"}, C{"off"}) the
        power-state reads answer in turn (the last one from then on)
        instead of the machine's.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        self._reactor = reactor
        self._hosts = hosts
        self.outcomes: dict[str, Outcome] = {}
        self.default = Outcome()
        self.calls: list[tuple[str, str]] = []
        self.power_states: dict[str, list[str]] = {}
        self.closed = False

    async def _scripted(self, target: str) -> None:
        """End as scripted for C{target}: wait, then raise its error if it has one."""
        outcome = self.outcomes.get(target, self.default)
        if outcome.after:
            await deferLater(self._reactor, outcome.after, lambda: None)
        if outcome.error is not None:
            raise outcome.error

    async def _cycle(self, call: str, target: str, machine: Callable[[FakeHosts], FakeHost | None]) -> None:
        self.calls.append((call, target))
        await self._scripted(target)
        if self._hosts is not None:
            host = machine(self._hosts)
            if host is not None:
                self._hosts.go_down(host)

    def _powered(self, target: str, machine: FakeHost | None) -> bool:
        """The scripted state for C{target}, else whether C{machine} has power (no machine: on)."""
        scripted = self.power_states.get(target)
        if scripted:
            return (scripted.pop(0) if len(scripted) > 1 else scripted[0]) == "on"
        if machine is None or self._hosts is None:
            return True
        return self._hosts.powered(machine)

    def _switch(self, machine: FakeHost | None, on: bool) -> None:
        """Power C{machine} on or off (nothing without one)."""
        if machine is None or self._hosts is None:
            return
        if on:
            self._hosts.power_on(machine)
        else:
            self._hosts.power_off(machine)

    async def close(self) -> None:
        """Record that the client was released."""
        self.closed = True


@implementer(IIPMI)
class FakeIPMI(_PowerControl):
    """
    BMCs by address; a BMC answers when a machine has it, unless its address is in C{silent}.

    C{set_power} acts on the machine: C{on} powers it on, C{off} cuts its
    power, C{soft} too (when it is up: a running OS shuts down; a hung one
    ignores it), C{reset} and C{cycle} reboot it.

    @ivar boot_devices: by address, the one-time boot device set.
    @ivar persistent: addresses of BMCs that report the boot device as
        persistent (for every boot) rather than for the next boot only.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        super().__init__(reactor, hosts)
        self.silent: set[str] = set()
        self.boot_devices: dict[str, str] = {}
        self.persistent: set[str] = set()

    def _machine(self, host: str) -> FakeHost | None:
        return self._hosts.by_bmc(host) if self._hosts is not None else None

    async def power_state(self, host: str) -> bool:
        """The scripted state, else whether the machine has power."""
        self.calls.append(("power_state", host))
        return self._powered(host, self._machine(host))

    async def set_power(self, host: str, state: str) -> None:
        """Change the machine's power as C{state} says, as scripted."""
        self.calls.append((f"set_power {state}", host))
        if state not in ("on", "off", "soft", "reset", "cycle"):
            raise ValueError(f"unknown power state {state!r}")
        await self._scripted(host)
        machine = self._machine(host)
        if machine is None or self._hosts is None:
            return
        if state in ("reset", "cycle"):
            self._hosts.go_down(machine)
        elif state != "soft" or machine.up:
            self._switch(machine, state == "on")

    async def set_boot_device(self, host: str, device: str) -> None:
        """Remember C{device} for the BMC, as scripted."""
        self.calls.append((f"set_boot_device {device}", host))
        if device not in ("pxe", "disk", "bios"):
            raise ValueError(f"unknown boot device {device!r}")
        await self._scripted(host)
        self.boot_devices[host] = device

    async def boot_device(self, host: str) -> BootOverride | None:
        """The boot device set for the BMC, if any."""
        self.calls.append(("boot_device", host))
        device = self.boot_devices.get(host)
        return None if device is None else BootOverride(device, once=host not in self.persistent)

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
    @ivar continuous: addresses of BMCs that keep a one-time boot override
        for every boot (C{Continuous}), as sushy-emulator does.
    @ivar hung: addresses of BMCs whose machine's OS hangs: C{GracefulRestart}
        is accepted and does nothing.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        super().__init__(reactor, hosts)
        self.silent: set[str] = set()
        self.reset_kinds: dict[str, tuple[str, ...]] = {}
        self.boot_once: dict[str, str] = {}
        self.continuous: set[str] = set()
        self.hung: set[str] = set()
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
        return "on" if self._powered(host, self._machine(host)) else "off"

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
        await self._scripted(host)
        machine = self._machine(host)
        if machine is None or self._hosts is None or (reset_type == "GracefulRestart" and host in self.hung):
            return
        if reset_type in ("GracefulRestart", "ForceRestart", "PowerCycle"):
            self._hosts.go_down(machine)
        elif reset_type == "ForceOff" or (reset_type == "GracefulShutdown" and machine.up):
            self._switch(machine, False)
        elif reset_type == "On":
            self._switch(machine, True)

    async def powercycle(self, host: str, progress: Callable[[str], None] | None = None) -> None:
        """
        Switch the machine behind the BMC off (unless it is off) and on, as
        scripted; refused, as by the real client, unless the BMC advertises
        C{ForceOff} and C{On}.
        """
        self.calls.append(("powercycle", host))
        check_cycle_resets(host, self.reset_kinds.get(host, REDFISH_RESET_TYPES))
        await self._scripted(host)
        machine = self._machine(host)
        self._switch(machine, False)
        self._switch(machine, True)

    async def set_boot_once(self, host: str, target: str) -> None:
        """Remember C{target} for the BMC."""
        self.calls.append((f"set_boot_once {target}", host))
        self.boot_once[host] = target

    async def boot_override(self, host: str) -> BootOverride | None:
        """The boot target set for the BMC, if any."""
        self.calls.append(("boot_override", host))
        target = self.boot_once.get(host)
        return None if target is None else BootOverride(target, once=host not in self.continuous)


@implementer(IPDU)
class FakePDU(_PowerControl):
    """
    PDU outlets, by their C{host:outlet} text; switching one powers its machine on or off.

    @ivar outlets: by outlet, its own state once switched (or set by a
        test); an outlet not in it reads as its machine's power.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None) -> None:
        super().__init__(reactor, hosts)
        self.outlets: dict[str, bool] = {}

    def _machine(self, outlet: PDUOutlet) -> FakeHost | None:
        return self._hosts.by_outlet(str(outlet)) if self._hosts is not None else None

    async def outlet_state(self, outlet: PDUOutlet) -> bool:
        """The scripted state, else the outlet's own, else whether its machine has power."""
        self.calls.append(("outlet_state", str(outlet)))
        if not self.power_states.get(str(outlet)) and str(outlet) in self.outlets:
            return self.outlets[str(outlet)]
        return self._powered(str(outlet), self._machine(outlet))

    async def set_outlet(self, outlet: PDUOutlet, on: bool) -> None:
        """Switch the outlet, as scripted."""
        self.calls.append((f"set_outlet {'on' if on else 'off'}", str(outlet)))
        await self._scripted(str(outlet))
        self.outlets[str(outlet)] = on
        self._switch(self._machine(outlet), on)

    async def powercycle(self, outlet: PDUOutlet, progress: Callable[[str], None] | None = None) -> None:
        """Switch the outlet off and on, as scripted."""
        await self._cycle("powercycle", str(outlet), lambda hosts: hosts.by_outlet(str(outlet)))
        if str(outlet) in self.outlets:
            self.outlets[str(outlet)] = True


@implementer(IMozpool)
class FakeMozpool(_PowerControl):
    """Mozpool imaging servers; outcomes by device name."""

    async def power_cycle(self, server: str, device: str) -> None:
        """Power-cycle C{device}, as scripted."""
        await self._cycle(f"power_cycle via {server}", device, lambda hosts: hosts.find(device))
