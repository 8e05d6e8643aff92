"""
The ways SlaveAPI can switch a machine's power, one class per channel, and
which of them a machine has.

A machine's channels, in the order the power actions try them: Redfish
(its BMC C{<name>-mgmt} resolves and speaks Redfish), IPMI (the BMC
resolves, does not speak Redfish, and answers IPMI), its PDU outlet (from
inventory) and Mozpool (an imaging server in inventory). Redfish and IPMI
share the one BMC: a machine has one of them, never both, so an action that
used Redfish on a BMC never tries IPMI on it too (as C{reboot} does). Which
BMCs speak Redfish is discovered once per BMC and remembered by the Redfish
client; a failure through a BMC makes it forget (L{Channel.failed}), so the
next discovery asks again.

Every channel answers the same operations: read the power state, switch
the power on or off (gracefully where it can), cycle it, set the next boot
device and read it back. One a channel cannot do raises L{CannotDo}, whose
text is one line naming the channel (C{PDU: cannot set a boot device}).
Remote failures are the clients' own L{ClientError}s, each bounded by its
client's deadlines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from slaveapi._text import error_line
from slaveapi.clients import BootOverride, ClientError, poll_until, within
from slaveapi.clients.dns import DNSError
from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.probe import RebootWait
from slaveapi.clients.redfish import CYCLE_RESETS, RedfishError
from slaveapi.context import Context
from slaveapi.machines import Slave

#: The boot devices the C{boot_device} action takes, and Redfish's name for each.
REDFISH_BOOT_TARGETS: Final = {"pxe": "Pxe", "disk": "Hdd", "bios": "BiosSetup"}
BOOT_DEVICES: Final = tuple(REDFISH_BOOT_TARGETS)

#: Redfish resets that cycle the power in one request, in order of preference,
#: used only when the BMC does not advertise C{ForceOff} and C{On}.
REDFISH_CYCLES: Final = ("PowerCycle", "ForceRestart")

#: Told short lines about a step in progress (for the status text).
Progress = Callable[[str], None]


class CannotDo(Exception):
    """A channel cannot do what was asked at all; the text is one line naming it."""


class NotVerified(Exception):
    """The state read back did not become what was asked in time: why, in one line."""


def power_word(on: bool) -> str:
    return "on" if on else "off"


class Channel:
    """
    One way to control one machine's power.

    @cvar key: its name in JSON (C{redfish}, C{ipmi}, C{pdu}, C{mozpool}).
    @cvar label: its name in status lines (C{Redfish}, ...).
    @cvar reads_power: whether it can read the power state back; one that
        cannot confirms a cycle by watching the machine go down and come
        back (L{confirm_cycle}).
    @cvar is_bmc: whether it is the machine's BMC (which reads the machine's
        own power, not only whether power reaches it).
    """

    key: ClassVar[str]
    label: ClassVar[str]
    reads_power: ClassVar[bool] = True
    is_bmc: ClassVar[bool] = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def cannot(self, what: str) -> CannotDo:
        """The L{CannotDo} saying this channel cannot do C{what}."""
        return CannotDo(f"{self.label}: cannot {what}")

    async def powered(self) -> bool:
        """Whether the machine has power now."""
        raise self.cannot("read the power state")

    async def check_switch(self, on: bool, soft: bool) -> None:
        """
        Raise L{CannotDo} unless the channel can switch the power C{on} (or
        off; with C{soft} gracefully), before anything is read or sent.
        """
        if soft and not on:
            raise self.cannot("shut down gracefully")

    async def switch(self, on: bool, soft: bool) -> None:
        """Ask for the power on or off (C{soft}: a graceful shutdown); returns once accepted."""
        raise self.cannot(f"power {power_word(on)}")

    async def cycle(self, progress: Progress) -> None:
        """Cycle the power (on at the end); returns once the channel did its part."""
        raise self.cannot("cycle the power")

    async def confirm_cycle(self) -> str:
        """Wait (bounded) until the cycle shows; the outcome's words. Raises L{NotVerified}."""
        await self.wait_for_power(True, self.ctx.config.power.verify_timeout)
        return "power is on"

    async def set_boot_device(self, device: str) -> None:
        """Boot from C{device} (one of L{BOOT_DEVICES}) the next time only."""
        raise self.cannot("set a boot device")

    async def boot_device(self) -> BootOverride | None:
        """
        The boot device forced (named as in L{BOOT_DEVICES} when it is one
        of them) and whether for the next boot only; C{None} when none is.
        """
        raise self.cannot("read the boot device")

    def failed(self) -> None:
        """Called after an operation through the channel failed."""

    async def wait_for_power(self, on: bool, timeout: float) -> None:
        """
        Read the power state every C{[power] poll_interval} seconds until it
        is C{on}, for at most C{timeout} seconds.

        @raise NotVerified: it was not by then.
        """

        async def reached() -> bool:
            return await self.powered() == on

        await poll_until(
            self.ctx.reactor,
            reached,
            self.ctx.config.power.poll_interval,
            timeout,
            f"{self.label}: power {power_word(on)}",
            timeout_error=lambda: NotVerified(f"the power was still {power_word(not on)} after {timeout:g}s"),
        )


class RedfishChannel(Channel):
    """The machine's BMC, over Redfish."""

    key = "redfish"
    label = "Redfish"
    is_bmc = True

    def __init__(self, ctx: Context, bmc: str, address: str) -> None:
        super().__init__(ctx)
        self.bmc = bmc
        #: The machine's own address, for the probe that confirms a one-request cycle.
        self.address = address
        #: The one-request reset L{cycle} sent, if it sent one rather than a power cycle.
        self._one_request: str | None = None

    async def powered(self) -> bool:
        return await self.ctx.clients.redfish.power_state(self.bmc) == "on"

    async def check_switch(self, on: bool, soft: bool) -> None:
        if soft and not on and "GracefulShutdown" not in await self.ctx.clients.redfish.reset_types(self.bmc):
            raise self.cannot("shut down gracefully (the BMC does not offer GracefulShutdown)")

    async def switch(self, on: bool, soft: bool) -> None:
        kind = "On" if on else ("GracefulShutdown" if soft else "ForceOff")
        await self.ctx.clients.redfish.reset(self.bmc, kind)

    async def cycle(self, progress: Progress) -> None:
        """
        The Redfish client's power cycle (C{ForceOff}, power read off, C{On},
        power read on; only C{On} for a machine that is off) when the BMC
        advertises C{ForceOff} and C{On}. Else C{PowerCycle} or
        C{ForceRestart}, which the BMC only accepts: L{confirm_cycle} then
        waits for the probe to see the machine go down and come back, since
        the power reads on before and after such a reset whether it did
        anything or not.
        """
        redfish = self.ctx.clients.redfish
        kinds = await redfish.reset_types(self.bmc)
        self._one_request = None
        if all(kind in kinds for kind in CYCLE_RESETS):
            await redfish.powercycle(self.bmc, progress)
            return
        one_request = next((kind for kind in REDFISH_CYCLES if kind in kinds), None)
        if one_request is None:
            offered = ", ".join(kinds) or "none"
            why = f"it offers neither ForceOff and On nor PowerCycle or ForceRestart ({offered})"
            raise RedfishError(self.bmc, "choosing a reset", why)
        progress(f"{one_request} requested")
        await redfish.reset(self.bmc, one_request)
        self._one_request = one_request

    async def confirm_cycle(self) -> str:
        if self._one_request is None:
            return await super().confirm_cycle()
        return await _seen_down_and_up(self.ctx, self.address)

    async def set_boot_device(self, device: str) -> None:
        await self.ctx.clients.redfish.set_boot_once(self.bmc, REDFISH_BOOT_TARGETS[device])

    async def boot_device(self) -> BootOverride | None:
        override = await self.ctx.clients.redfish.boot_override(self.bmc)
        if override is None:
            return None
        device = next((device for device, name in REDFISH_BOOT_TARGETS.items() if name == override.device), None)
        return override if device is None else BootOverride(device, override.once)

    def failed(self) -> None:
        self.ctx.clients.redfish.forget(self.bmc)


class IPMIChannel(Channel):
    """The machine's BMC, over IPMI."""

    key = "ipmi"
    label = "IPMI"
    is_bmc = True

    def __init__(self, ctx: Context, bmc: str) -> None:
        super().__init__(ctx)
        self.bmc = bmc

    async def powered(self) -> bool:
        return await self.ctx.clients.ipmi.power_state(self.bmc)

    async def check_switch(self, on: bool, soft: bool) -> None:
        """IPMI can do all of it (a soft off is an ACPI shutdown request)."""

    async def switch(self, on: bool, soft: bool) -> None:
        await self.ctx.clients.ipmi.set_power(self.bmc, "on" if on else ("soft" if soft else "off"))

    async def cycle(self, progress: Progress) -> None:
        """The IPMI client's power cycle, which itself confirms the power went off and came on."""
        await self.ctx.clients.ipmi.powercycle(self.bmc, progress)

    async def set_boot_device(self, device: str) -> None:
        await self.ctx.clients.ipmi.set_boot_device(self.bmc, device)

    async def boot_device(self) -> BootOverride | None:
        return await self.ctx.clients.ipmi.boot_device(self.bmc)

    def failed(self) -> None:
        # Perhaps the BMC speaks Redfish now: the next discovery asks it again.
        self.ctx.clients.redfish.forget(self.bmc)


class PDUChannel(Channel):
    """
    The machine's PDU outlet: power only, and never gracefully. Its
    "power" is the outlet's: an outlet that is off means the machine is,
    but one that is on says nothing of whether the machine is (a machine
    shut down, or powered off by its BMC, keeps its outlet on).
    """

    key = "pdu"
    label = "PDU"

    def __init__(self, ctx: Context, outlet: PDUOutlet) -> None:
        super().__init__(ctx)
        self.outlet = outlet

    async def powered(self) -> bool:
        return await self.ctx.clients.pdu.outlet_state(self.outlet)

    async def switch(self, on: bool, soft: bool) -> None:
        await self.ctx.clients.pdu.set_outlet(self.outlet, on)

    async def cycle(self, progress: Progress) -> None:
        """The PDU client's power cycle, which itself confirms the outlet went off and came on."""
        await self.ctx.clients.pdu.powercycle(self.outlet, progress)


class MozpoolChannel(Channel):
    """
    The machine's Mozpool imaging server: it can only cycle the power, and
    cannot read it, so the cycle is confirmed by the probe seeing the
    machine go down and come back.
    """

    key = "mozpool"
    label = "Mozpool"
    reads_power = False

    def __init__(self, ctx: Context, server: str, device: str, address: str) -> None:
        super().__init__(ctx)
        self.server = server
        self.device = device
        self.address = address

    async def check_switch(self, on: bool, soft: bool) -> None:
        raise self.cannot(f"power {power_word(on)} (it can only cycle the power)")

    async def cycle(self, progress: Progress) -> None:
        await self.ctx.clients.mozpool.power_cycle(self.server, self.device)

    async def confirm_cycle(self) -> str:
        return await _seen_down_and_up(self.ctx, self.address)


#: Why a machine did not reboot, when the probe never saw it down.
NEVER_WENT_DOWN = "it never went down"


def reboot_problem(waited: RebootWait) -> str | None:
    """Why the probe's wait for a reboot says the machine did not reboot, or C{None} when it did."""
    if not waited.went_down:
        return NEVER_WENT_DOWN
    if not waited.came_back:
        return "it went down but did not come back"
    return None


async def _seen_down_and_up(ctx: Context, address: str) -> str:
    """
    Wait (bounded by the probe's own limits) for the machine to go down and
    come back; the outcome's words.

    @raise NotVerified: it never went down, or did not come back.
    """
    problem = reboot_problem(await ctx.clients.prober.wait_for_reboot(address))
    if problem is not None:
        raise NotVerified(problem)
    return "it went down and came back"


async def look_up_bmc(ctx: Context, slave: Slave) -> tuple[str | None, str | None]:
    """
    The address of the machine's BMC (its C{-mgmt} name, as looked up by
    L{Lookup.BMC}, resolved), or C{None} and why there is none.
    """
    name = slave.ipmi
    if not name:
        return None, "no -mgmt interface in DNS"
    try:
        bmc = await ctx.clients.dns.lookup_host(name)
    except DNSError as error:
        return None, f"looking up {name} failed: {error_line(error)}"
    if bmc is None:
        return None, f"{name} does not resolve"
    return bmc.ip, None


@dataclass
class MachineChannels:
    """
    The channels a machine has, in the order they are tried, and why it has
    none of the others (one phrase each, for the status text).

    @ivar unanswered: why the BMC is left out when it did not say what it
        speaks in the time given (see L{discover}), else C{None}.
    """

    channels: list[Channel] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unanswered: str | None = None

    @property
    def keys(self) -> list[str]:
        """The channels' JSON names, in order."""
        return [channel.key for channel in self.channels]


async def _bmc_channel(ctx: Context, slave: Slave, bmc: str) -> Channel | str:
    """Redfish if the BMC speaks it, else IPMI if it answers; else why neither."""
    if await ctx.clients.redfish.speaks_redfish(bmc):
        return RedfishChannel(ctx, bmc, slave.address)
    if await ctx.clients.ipmi.available(bmc):
        return IPMIChannel(ctx, bmc)
    # Perhaps it speaks Redfish by the next time: ask it again then.
    ctx.clients.redfish.forget(bmc)
    return f"the BMC at {slave.ipmi} answers neither Redfish nor IPMI"


async def bmc_channel(ctx: Context, slave: Slave) -> Channel | str:
    """
    The machine's BMC channel as L{discover} finds it (Redfish, else IPMI),
    or why it has none; for the health checks, which read only the BMC.
    """
    address, why = await look_up_bmc(ctx, slave)
    if address is None:
        return why or f"{slave.ipmi} does not resolve"
    return await _bmc_channel(ctx, slave, address)


async def discover(ctx: Context, slave: Slave, bmc_timeout: float | None = None) -> MachineChannels:
    """
    The machine's power channels. C{slave} must have been looked up with
    L{Lookup.INVENTORY} and L{Lookup.BMC}.

    @param bmc_timeout: at most this many seconds for the BMC to say what
        it speaks (C{None}: its clients' own deadlines); past it the BMC
        is left out, and why is in C{missing}.
    """
    found = MachineChannels()
    address, why = await look_up_bmc(ctx, slave)
    if address is None:
        found.missing.append(f"Redfish and IPMI: {why}")
    else:
        bmc: Channel | str
        if bmc_timeout is None:
            bmc = await _bmc_channel(ctx, slave, address)
        else:
            try:
                bmc = await within(ctx.reactor, bmc_timeout, _bmc_channel(ctx, slave, address), "BMC discovery")
            except ClientError as error:
                bmc = found.unanswered = f"the BMC at {slave.ipmi}: {error_line(error)}"
        if isinstance(bmc, Channel):
            found.channels.append(bmc)
        else:
            found.missing.append(f"Redfish and IPMI: {bmc}")
    if slave.pdu is not None:
        found.channels.append(PDUChannel(ctx, slave.pdu))
    else:
        found.missing.append("PDU: no PDU outlet in inventory")
    if slave.mozpool_server:
        found.channels.append(MozpoolChannel(ctx, slave.mozpool_server, slave.name, slave.address))
    else:
        found.missing.append("Mozpool: no imaging server in inventory")
    return found
