"""
The Redfish step of the reboot escalation, on the shipped fakes and a
C{Clock}: which reset is sent, when the step is skipped, what follows a
failed one, and that whether a BMC speaks Redfish is asked once.
"""

from __future__ import annotations

from typing import Any

from slaveapi.clients.redfish import RedfishError, RedfishTimeout
from slaveapi.clients.ssh import SSHAuthenticationFailed
from slaveapi.testing import FakeHost, Fakes, Outcome, make_fakes
from tests.core.reboots import run_reboot

IP = "127.0.9.1"
BMC = "127.0.10.1"
MGMT = "bld-1-mgmt.example.test"
OUTLET = "pdu1.example.test:AA1"
BOOT = 60.0
REFUSED = f"Attempting SSH reboot...Failed (ssh {IP}:22: every login was rejected)."
NO_MOZPOOL = "Skipping Mozpool reboot: no imaging server in inventory."


def _fakes(**machine: Any) -> Fakes:
    """bld-1, refusing SSH logins, so that power control is needed."""
    fakes = make_fakes([FakeHost("bld-1", IP, boot_seconds=BOOT, **machine)])
    fakes.ssh.script_logins(IP, then=SSHAuthenticationFailed(f"ssh {IP}:22: every login was rejected"))
    return fakes


def _resets(fakes: Fakes) -> list[str]:
    return [call for call, _ in fakes.redfish.calls if call.startswith("reset ")]


def test_a_redfish_bmc_restarts_the_machine_gracefully_and_ipmi_is_not_asked() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)

    text, shown = run_reboot(fakes)

    assert text.split("\n") == [REFUSED, NO_MOZPOOL, "Attempting Redfish reboot...Success!"]
    assert f"{REFUSED}\n{NO_MOZPOOL}\nAttempting Redfish reboot...initiated, waiting for it to come back..." in shown
    assert fakes.redfish.calls == [("available", BMC), ("reset_types", BMC), ("reset GracefulRestart", BMC)]
    assert fakes.ipmi.calls == [] and fakes.pdu.calls == []
    host = fakes.hosts.find("bld-1")
    assert host is not None and host.up and host.reboots == 1
    # Down at once, back after its boot time, seen at the next probe.
    assert BOOT <= fakes.clock.seconds() < BOOT + fakes.config.probes.interval


def test_without_graceful_restart_the_clients_power_cycle_is_used_and_then_the_machine_awaited() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    # ForceRestart is offered but not used: the power cycle is seen off, then on.
    fakes.redfish.reset_kinds[BMC] = ("On", "ForceOff", "ForceRestart")

    text, shown = run_reboot(fakes)

    assert text.split("\n")[-1] == "Attempting Redfish reboot...Success!"
    assert "Attempting Redfish reboot...initiated, waiting for it to come back..." in shown[-2]
    assert _resets(fakes) == []
    assert ("powercycle", BMC) in fakes.redfish.calls
    host = fakes.hosts.find("bld-1")
    assert host is not None and host.up and host.reboots == 1
    # The wait after a power cycle is for up only: seen at the first probe after the boot.
    assert BOOT <= fakes.clock.seconds() < BOOT + fakes.config.probes.interval


def test_a_failed_power_cycle_fails_the_step_and_the_pdu_follows() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.redfish.reset_kinds[BMC] = ("On", "ForceOff")
    timeout = fakes.config.redfish.power_timeout
    fakes.redfish.outcomes[BMC] = Outcome(RedfishError(BMC, "ForceOff", f"the power was still on after {timeout:g}s"))

    text, _ = run_reboot(fakes)

    assert text.split("\n")[2:] == [
        f"Attempting Redfish reboot...Failed (Redfish {BMC}: ForceOff failed: the power was still on after"
        f" {timeout:g}s).",
        f"Skipping IPMI reboot: the BMC at {MGMT} speaks Redfish (tried above).",
        "Attempting PDU reboot...Success!",
    ]
    assert ("powercycle", BMC) in fakes.redfish.calls and _resets(fakes) == []


def test_a_bmc_offering_no_usable_reset_fails_the_step_with_what_it_offers() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    fakes.redfish.reset_kinds[BMC] = ("Nmi",)

    text, _ = run_reboot(fakes, update_bug=False)

    assert text.split("\n")[2] == (
        f"Attempting Redfish reboot...Failed (Redfish {BMC}: choosing a reset failed: a power cycle needs"
        " ForceOff and On; the BMC offers Nmi)."
    )
    assert _resets(fakes) == []


def test_a_failed_redfish_reset_skips_ipmi_goes_to_the_pdu_and_is_discovered_again_next_time() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.redfish.outcomes[BMC] = Outcome(
        RedfishTimeout(BMC, "reset GracefulRestart", "no answer within 20s"), after=20.0
    )

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        REFUSED,
        NO_MOZPOOL,
        f"Attempting Redfish reboot...Failed (Redfish {BMC}: reset GracefulRestart failed: no answer within 20s).",
        f"Skipping IPMI reboot: the BMC at {MGMT} speaks Redfish (tried above).",
        "Attempting PDU reboot...Success!",
    ]
    assert fakes.ipmi.calls == [] and fakes.pdu.calls == [("powercycle", OUTLET)]
    assert ("forget", BMC) in fakes.redfish.calls

    # The failure made the client forget: the next reboot asks the service root again.
    run_reboot(fakes)
    assert [call for call in fakes.redfish.calls if call[0] == "available"] == [("available", BMC)] * 2


def test_a_bmc_that_does_not_speak_redfish_is_skipped_and_ipmi_reboots() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        REFUSED,
        NO_MOZPOOL,
        f"Skipping Redfish reboot: the BMC at {MGMT} does not speak Redfish.",
        "Attempting IPMI reboot...Success!",
    ]
    assert fakes.redfish.calls == [("available", BMC)]
    assert fakes.ipmi.calls == [("available", BMC), ("powercycle", BMC)]


def test_no_mgmt_name_skips_redfish_and_ipmi_with_one_line_each() -> None:
    fakes = _fakes(outlet=OUTLET)

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        REFUSED,
        NO_MOZPOOL,
        "Skipping Redfish reboot: no -mgmt interface in DNS.",
        "Skipping IPMI reboot: no -mgmt interface in DNS.",
        "Attempting PDU reboot...Success!",
    ]
    assert fakes.redfish.calls == [] and fakes.ipmi.calls == []


def test_whether_a_bmc_speaks_redfish_is_asked_once_across_reboots() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)

    first, _ = run_reboot(fakes)
    second, _ = run_reboot(fakes)

    assert first.split("\n")[-1] == second.split("\n")[-1] == "Attempting Redfish reboot...Success!"
    assert [call for call in fakes.redfish.calls if call[0] == "available"] == [("available", BMC)]
    assert _resets(fakes) == ["reset GracefulRestart"] * 2


def test_a_bmc_found_not_to_speak_redfish_is_not_asked_again_while_ipmi_works() -> None:
    fakes = _fakes(bmc_ip=BMC)

    run_reboot(fakes)
    run_reboot(fakes)

    assert fakes.redfish.calls == [("available", BMC)]
    assert [call for call, _ in fakes.ipmi.calls].count("powercycle") == 2


def test_a_machine_that_does_not_answer_gets_the_power_cycle_not_a_graceful_restart() -> None:
    # A graceful restart asks the OS; a machine that does not answer the probe has none to ask.
    fakes = _fakes(bmc_ip=BMC, redfish=True, up=False)

    text, _shown = run_reboot(fakes)

    assert text.split("\n")[-1] == "Attempting Redfish reboot...Success!"
    assert _resets(fakes) == []
    assert ("powercycle", BMC) in fakes.redfish.calls
    host = fakes.hosts.find("bld-1")
    assert host is not None and host.up


def test_a_graceful_restart_the_os_ignores_is_followed_by_the_power_cycle_in_the_same_step() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.redfish.hung.add(BMC)

    text, shown = run_reboot(fakes)

    assert text.split("\n") == [REFUSED, NO_MOZPOOL, "Attempting Redfish reboot...Success!"]
    assert any(line.endswith("Attempting Redfish reboot...GracefulRestart ignored, power cycling...") for line in shown)
    assert _resets(fakes) == ["reset GracefulRestart"]
    assert ("powercycle", BMC) in fakes.redfish.calls
    assert fakes.pdu.calls == []
    host = fakes.hosts.find("bld-1")
    assert host is not None and host.up and host.reboots == 1
