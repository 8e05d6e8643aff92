"""
What a BMC says about the boot device it will force, shared by the IPMI and
Redfish clients (and the fakes of L{slaveapi.testing}).

Both protocols let a boot override apply to the next boot only or to every
boot. The power actions promise "next boot only", so a read-back must be
able to tell the two apart: a persistent override set by someone else (or
by a BMC that ignores "once", as sushy-emulator does) would otherwise pass
for the one-time override asked for. This module imports nothing of
SlaveAPI, so either client can use it without import cycles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootOverride:
    """
    A boot override a BMC reports as pending.

    @ivar device: the device forced, in the reporting client's own words
        (IPMI: C{pxe}, C{disk}, C{bios}, ...; Redfish: C{Pxe}, C{Hdd},
        C{BiosSetup}, ...).
    @ivar once: C{True} when it applies to the next boot only, C{False}
        when the BMC keeps it for every boot.
    """

    device: str
    once: bool
