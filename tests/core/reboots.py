"""Running the reboot action of C{bld-1} on the shipped fakes, for the reboot unit tests."""

from __future__ import annotations

from twisted.logger import Logger

from slaveapi.actions import ActionFailure, ActionLog, ActionRun
from slaveapi.actions.reboot import reboot
from slaveapi.testing import Fakes, run_on_clock


def run_reboot(fakes: Fakes, update_bug: bool = True) -> tuple[str, list[str]]:
    """
    Run the reboot of bld-1 on the fakes' clock to its end: its final text
    (of a success or a failure) and every progress text shown.
    """
    shown: list[str] = []
    log = ActionLog(Logger(), "bld-1", 1, "reboot")
    run = ActionRun(fakes.context(), "bld-1", 1, "reboot", log, shown.append)
    try:
        return run_on_clock(fakes.clock, reboot(run, update_bug=update_bug)), shown
    except ActionFailure as failure:
        return str(failure.payload), shown


def no_power_control(fakes: Fakes) -> bool:
    """Whether no power cycle or reset went to the BMC (IPMI or Redfish), the PDU or Mozpool."""
    powercycles = [call for call in fakes.ipmi.calls if call[0] == "powercycle"]
    resets = [call for call in fakes.redfish.calls if call[0].startswith("reset ")]
    return not (powercycles or resets or fakes.pdu.calls or fakes.mozpool.calls)
