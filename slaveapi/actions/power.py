"""
The power actions: C{power_status}, C{power_on}, C{power_off},
C{power_cycle} and C{boot_device}.

Each tries the machine's power channels in order (Redfish, IPMI, PDU
outlet, Mozpool: see L{slaveapi.actions._channels}) and ends with SUCCESS
at the first that does what was asked and whose read-back then matches:
the power state polled (C{[power] poll_interval}) until it is what was
asked, for at most C{[power] verify_timeout} seconds (C{soft_off_timeout}
for a graceful shutdown), or the boot device read back. A channel that
cannot do the operation says so in one line; one that fails says why; the
next is tried. The status text reads like C{reboot}'s::

    Powering off via Redfish...Failed (Redfish 10.0.1.1: reset ForceOff failed: ...).
    Powering off via PDU...Success! (power is off)

C{power_off} with C{soft=yes} asks for a graceful shutdown and is never
turned into a hard one: only channels that can shut down gracefully are
used (Redfish when the BMC offers C{GracefulShutdown}, IPMI's ACPI soft
off). A power cycle is confirmed by the power reading on after it (IPMI's
and the PDU's power cycles themselves see it go off first); Mozpool, which
cannot read the power, by the probe seeing the machine go down and come
back. C{boot_device} (C{device} = C{pxe}, C{disk} or C{bios}) applies to
the next boot only, through Redfish or IPMI; the PDU and Mozpool cannot
set one. A BMC that reads the device back as kept for every boot (some
ignore "next boot only") still counts, and the result says so plainly.

The power is read before anything is asked: a machine already in the state
asked for is left alone ("power was already off"), even through a channel
that could not have switched it (C{soft=yes} on a BMC without a graceful
shutdown). The PDU's power is the outlet's: an outlet that is off means
the machine is off, but one that is on does not mean the machine is (a
machine shut down, or powered off by its BMC, keeps its outlet on). So
when a BMC channel was tried first and read the machine off or failed, the
PDU does not answer C{power_on} with "power was already on": it fails,
saying why.

C{power_status} only reads, so it leaves the machine's lock free; its
result is C{{"power": "on"|"off", "via": "<channel>"}}. The others change
the machine and are exclusive per machine, like C{reboot}; a token needs
the C{power} scope for them (C{inspect} for C{power_status}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from slaveapi._text import error_line
from slaveapi.actions._base import Action, ActionRun, ArgumentError, FormField, StatusLines, yes_no
from slaveapi.actions._channels import (
    BOOT_DEVICES,
    CannotDo,
    Channel,
    MachineChannels,
    NotVerified,
    PDUChannel,
    discover,
    power_word,
)
from slaveapi.actions._remote import locate
from slaveapi.clients import BootOverride, ClientError, poll_until
from slaveapi.context import Context
from slaveapi.machines import Lookup, Slave

#: What the power actions need known of the machine: its PDU and imaging server, and its BMC's name.
LOOKUPS = frozenset({Lookup.INVENTORY, Lookup.BMC})

#: A channel that fails an operation (or whose read-back never matches) lets the next one try.
_CHANNEL_FAILURES = (ClientError, NotVerified)


class _PowerSteps(StatusLines):
    """The status text of one power action: a line per channel tried."""

    def __init__(self, run: ActionRun, slave: Slave, found: MachineChannels) -> None:
        super().__init__(run)
        self.run = run
        self.slave = slave
        self.found = found
        #: The channels that were tried and failed, in order.
        self.failed: list[Channel] = []

    async def first_working(self, heading: str, what: str, work: Callable[[Channel], Awaitable[str]]) -> Channel:
        """
        Run C{work} through each channel in turn until one succeeds; the
        channel that did. C{work} returns its outcome's words, shown as
        C{<heading> via <channel>...Success! (<words>)}.

        @param what: the operation as the last line says none could do it
            (C{power it off}).
        @raise ActionFailure: no channel could (the last line says so).
        """
        for channel in self.found.channels:
            try:
                done = await self.step(
                    f"{heading} via {channel.label}",
                    partial(_succeeded, work, channel),
                    failures=_CHANNEL_FAILURES,
                    failed=lambda error: f"Failed ({error_line(error)}).",
                    fatal=False,
                )
            except CannotDo as cannot:
                self.replace_last(f"{cannot}.")
                self.run.log.info("{reason}", reason=str(cannot))
                continue
            if done:
                self.run.log.info("{heading} via {channel}: done", heading=heading, channel=channel.label)
                return channel
            channel.failed()
            self.failed.append(channel)
        raise self.fail(self._none_could(what))

    def _none_could(self, what: str) -> str:
        if not self.found.channels:
            line = f"{self.slave.name} has no power channel"
        else:
            line = f"No power channel could {what}"
        if self.found.missing:
            line += " (" + "; ".join(self.found.missing) + ")"
        return line + "."


async def _succeeded(work: Callable[[Channel], Awaitable[str]], channel: Channel) -> str:
    return f"Success! ({await work(channel)})"


async def _start(run: ActionRun) -> _PowerSteps:
    """Find the machine and its channels."""
    slave = await locate(run, LOOKUPS)
    run.progress("Finding the machine's power channels...")
    found = await discover(run.ctx, slave)
    run.log.info(
        "Power channels: {channels}; missing: {missing}",
        channels=", ".join(found.keys) or "none", missing="; ".join(found.missing) or "none",
    )
    return _PowerSteps(run, slave, found)


async def power_status(run: ActionRun) -> dict[str, str]:
    """The machine's power state, read through its first channel that can: C{{"power": ..., "via": ...}}."""
    steps = await _start(run)
    seen: list[bool] = []

    async def read(channel: Channel) -> str:
        seen.append(await channel.powered())
        return f"power is {power_word(seen[-1])}"

    channel = await steps.first_working("Reading the power state", "read the power state", read)
    return {"power": power_word(seen[-1]), "via": channel.key}


async def _switch(run: ActionRun, on: bool, soft: bool = False) -> str:
    """Power the machine on or off and read it back; the status text."""
    steps = await _start(run)
    soft = soft and not on
    settings = run.ctx.config.power
    timeout = settings.soft_off_timeout if soft else settings.verify_timeout

    async def switch(channel: Channel) -> str:
        # The power first: a machine already off needs no graceful shutdown the channel may lack.
        if channel.reads_power and await channel.powered() == on:
            if on and isinstance(channel, PDUChannel) and any(tried.is_bmc for tried in steps.failed):
                raise NotVerified(
                    "the outlet is on, but the BMC did not read the machine on, and an outlet that is on"
                    " cannot tell whether the machine is"
                )
            return f"power was already {power_word(on)}"
        await channel.check_switch(on, soft)
        await channel.switch(on, soft)
        steps.outcome(f"requested, waiting for the power to read {power_word(on)}...")
        await channel.wait_for_power(on, timeout)
        return f"power is {power_word(on)}"

    if on:
        await steps.first_working("Powering on", "power it on", switch)
    elif soft:
        await steps.first_working("Shutting down gracefully", "shut it down gracefully", switch)
    else:
        await steps.first_working("Powering off", "power it off", switch)
    return steps.text


async def power_on(run: ActionRun) -> str:
    """Power the machine on and wait (bounded) until its power reads on."""
    return await _switch(run, True)


async def power_off(run: ActionRun, soft: bool = False) -> str:
    """
    Power the machine off and wait (bounded) until its power reads off.

    @param soft: a graceful shutdown, only through channels that can do one.
    """
    return await _switch(run, False, soft)


async def power_cycle(run: ActionRun) -> str:
    """Cycle the machine's power and confirm (bounded) that it came back on."""
    steps = await _start(run)

    async def cycle(channel: Channel) -> str:
        await channel.cycle(lambda line: steps.outcome(f"{line}..."))
        steps.outcome("waiting for the power to come back..." if channel.reads_power else
                      "waiting for it to go down and come back...")
        return await channel.confirm_cycle()

    await steps.first_working("Power-cycling", "power-cycle it", cycle)
    return steps.text


async def boot_device(run: ActionRun, device: str) -> str:
    """Boot the machine from C{device} the next time only, and read it back."""
    steps = await _start(run)
    settings = run.ctx.config.power

    async def set_device(channel: Channel) -> str:
        await channel.set_boot_device(device)
        steps.outcome("set, reading it back...")
        last: list[BootOverride | None] = []

        async def matches() -> bool:
            last.append(await channel.boot_device())
            return last[-1] is not None and last[-1].device == device

        await poll_until(
            run.ctx.reactor,
            matches,
            settings.poll_interval,
            settings.verify_timeout,
            f"{channel.label}: boot device {device}",
            timeout_error=lambda: NotVerified(
                f"the next boot device read {_device(last[-1])}, not {device}, after {settings.verify_timeout:g}s"
            ),
        )
        override = last[-1]
        if override is not None and not override.once:
            run.log.warn("{channel}: the BMC keeps boot device {device} for every boot", channel=channel.label,
                         device=device)
            return f"next boot: {device}; the BMC keeps it for every boot, not only the next"
        return f"next boot: {device}"

    await steps.first_working(f"Setting the next boot device to {device}", "set its next boot device", set_device)
    return steps.text


def _device(override: BootOverride | None) -> str:
    return "none" if override is None else override.device


def _power_off_arguments(form: Mapping[str, str]) -> dict[str, Any]:
    return {"soft": yes_no(form, "soft", default=False)}


def _boot_device_arguments(form: Mapping[str, str]) -> dict[str, Any]:
    raw = (form.get("device") or "").strip()
    expected = f"one of {', '.join(BOOT_DEVICES)}"
    if not raw:
        raise ArgumentError("device", f"required: {expected}")
    if raw.lower() not in BOOT_DEVICES:
        raise ArgumentError("device", f"expected {expected}, got {raw[:40]!r}")
    return {"device": raw.lower()}


async def power_channels(ctx: Context, slave: Slave) -> list[str]:
    """
    The machine's power channels by JSON name, in the order they are
    tried. A BMC that did not say what it speaks within C{[power]
    discovery_timeout} is left out, and why goes into C{slave.errors}
    (C{power}). C{slave} must have been looked up with L{Lookup.INVENTORY}
    and L{Lookup.BMC}.
    """
    found = await discover(ctx, slave, bmc_timeout=ctx.config.power.discovery_timeout)
    if found.unanswered is not None:
        slave.errors["power"] = found.unanswered
    return found.keys


def _action(name: str, run: Callable[..., Awaitable[Any]], **options: Any) -> Action:
    changes = name != "power_status"
    return Action(
        name=name,
        run=run,
        exclusive=changes,
        single_flight=True,
        timeout=3600.0 if changes else 300.0,
        scope="power" if changes else "inspect",
        lookups=LOOKUPS,
        **options,
    )


#: Reading is quick; a change may wait out a soft shutdown, or each channel's read-back in turn.
ACTIONS = (
    _action("power_status", power_status),
    _action("power_on", power_on),
    _action(
        "power_off",
        power_off,
        arguments=_power_off_arguments,
        fields=(FormField("soft", "boolean", "ask the operating system to shut down first; default no"),),
    ),
    _action("power_cycle", power_cycle),
    _action(
        "boot_device",
        boot_device,
        arguments=_boot_device_arguments,
        fields=(FormField("device", description="the device to boot from next", required=True,
                          choices=BOOT_DEVICES),),
    ),
)
