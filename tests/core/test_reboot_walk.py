"""
Every path of the reboot escalation, end to end through the C{reboot}
action, on the shipped fakes and a C{Clock}: minutes of probing, power
cycles, boots and timeouts pass in no real time, and each path is seen in
the status text, in what each fake was asked, and on the clock.
"""

from __future__ import annotations

from typing import Any

from slaveapi.actions.reboot import BUSY_PAUSE, BUSY_TRIES
from slaveapi.clients.ipmi import IPMITimeout
from slaveapi.clients.pdu import PDUError
from slaveapi.clients.ssh import SSHAuthenticationFailed, SSHBusy
from slaveapi.testing import FakeHost, Fakes, Outcome, make_fakes
from tests.core.reboots import no_power_control, run_reboot

IP = "127.0.9.1"
BMC = "127.0.10.1"
OUTLET = "pdu1.example.test:AA1"
IMAGING = "mobile-imaging-001.example.test"
BOOT = 60.0
MGMT = "bld-1-mgmt.example.test"


def _fakes(**machine: Any) -> Fakes:
    return make_fakes([FakeHost("bld-1", IP, boot_seconds=BOOT, **machine)])


def test_ssh_reboot_works() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)

    text, shown = run_reboot(fakes)

    assert text == "Attempting SSH reboot...Success!"
    assert "Attempting SSH reboot...initiated, waiting for it to come back..." in shown
    assert fakes.ssh.commands == [(IP, "reboot")]
    assert fakes.ssh.open_sessions == 0
    assert no_power_control(fakes) and fakes.bugzilla.created == []
    host = fakes.hosts.find("bld-1")
    assert host is not None and host.up and host.reboots == 1
    # Back after its boot time, seen at the next probe.
    assert BOOT <= fakes.clock.seconds() < BOOT + fakes.config.probes.interval


def test_ssh_refused_then_mozpool_works() -> None:
    fakes = _fakes(imaging_server=IMAGING)
    refused = SSHAuthenticationFailed(f"ssh {IP}:22: every login was rejected (1 user, 1 password tried)")
    fakes.ssh.script_logins(IP, then=refused)

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        f"Attempting SSH reboot...Failed (ssh {IP}:22: every login was rejected (1 user, 1 password tried)).",
        "Attempting Mozpool reboot...Success!",
    ]
    assert fakes.mozpool.calls == [(f"power_cycle via {IMAGING}", "bld-1")]
    assert fakes.ipmi.calls == [] and fakes.redfish.calls == [] and fakes.pdu.calls == []


def test_ssh_refused_ipmi_times_out_and_the_pdu_works() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)
    fakes.ssh.script_logins(IP, then=SSHAuthenticationFailed(f"ssh {IP}:22: every login was rejected"))
    fakes.ipmi.outcomes[BMC] = Outcome(IPMITimeout(f"IPMI power off on {BMC}: no answer within 30s"), after=30.0)

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        f"Attempting SSH reboot...Failed (ssh {IP}:22: every login was rejected).",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        f"Skipping Redfish reboot: the BMC at {MGMT} does not speak Redfish.",
        f"Attempting IPMI reboot...Failed (IPMI power off on {BMC}: no answer within 30s).",
        "Attempting PDU reboot...Success!",
    ]
    assert fakes.ipmi.calls == [("available", BMC), ("powercycle", BMC)]
    assert fakes.pdu.calls == [("powercycle", OUTLET)]
    assert fakes.bugzilla.created == []
    # The IPMI timeout, then the boot after the outlet's power cycle.
    assert 30.0 + BOOT <= fakes.clock.seconds() < 30.0 + BOOT + fakes.config.probes.interval


def test_everything_fails_and_a_bug_is_filed() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET, up=False, comes_back=False)
    fakes.pdu.outcomes[OUTLET] = Outcome(
        PDUError("pdu1.example.test:161", "AA1", "set off", "no answer within 5s"), after=5.0
    )

    text, _ = run_reboot(fakes)

    bugzilla = fakes.bugzilla
    tracking, reboot_bug = bugzilla.created
    assert tracking["alias"] == "bld-1" and tracking["summary"] == "bld-1 problem tracking"
    assert reboot_bug["summary"] == "bld-1 is unreachable"
    assert (reboot_bug["product"], reboot_bug["component"]) == ("Infrastructure & Operations", "DCOps")
    tracking_id = next(bug.id for bug in bugzilla.bugs.values() if bug.alias == "bld-1")
    reboot_id = next(bug.id for bug in bugzilla.bugs.values() if bug.summary == "bld-1 is unreachable")
    assert reboot_bug["blocks"] == [tracking_id]
    assert text.split("\n") == [
        "Skipping SSH reboot: the machine does not answer.",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        f"Skipping Redfish reboot: the BMC at {MGMT} does not speak Redfish.",
        "Attempting IPMI reboot...Failed (it did not come back).",
        "Attempting PDU reboot...Failed (pdu1.example.test:161 outlet AA1: set off: no answer within 5s).",
        f"Filed reboot bug {reboot_id}.",
    ]
    (comment,) = bugzilla.comments[tracking_id]
    assert comment.startswith(text + "\n\n(SlaveAPI reboot request 1, requested by ")
    assert fakes.ssh.logins == []
    # IPMI waited its whole up_timeout for the machine, then the PDU's 5s.
    assert fakes.clock.seconds() >= fakes.config.probes.up_timeout + 5.0


def test_everything_fails_and_the_existing_reboot_bug_is_left_alone() -> None:
    fakes = _fakes(up=False, comes_back=False)
    tracking = fakes.bugzilla.add_bug("bld-1 problem tracking", alias="bld-1")
    existing = fakes.bugzilla.add_bug(
        "bld-1 is unreachable", product="Infrastructure & Operations", component="DCOps", blocks=[tracking.id]
    )

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        "Skipping SSH reboot: the machine does not answer.",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Skipping Redfish reboot: no -mgmt interface in DNS.",
        "Skipping IPMI reboot: no -mgmt interface in DNS.",
        "Skipping PDU reboot: no PDU outlet in inventory.",
        f"bld-1 already has reboot bug ({existing.id}), nothing to do.",
    ]
    assert fakes.bugzilla.created == [] and fakes.bugzilla.comments == {}


def test_busy_ssh_stops_the_reboot_without_power_control() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET, imaging_server=IMAGING)
    busy = SSHBusy(f"ssh {IP}:22: no SSH session came free within 30s (2 already open to this host)")
    fakes.ssh.script_logins(IP, then=busy)

    text, _ = run_reboot(fakes)

    assert text.split("\n") == [
        f"Attempting SSH reboot...Stopped while logging in to send the reboot command ({busy}).",
        (
            "bld-1 answers, but SSH to it stayed busy after 3 tries: no power control was used (Mozpool, Redfish, IPMI"
            " and the PDU were not tried) and no bug was filed."
        ),
    ]
    assert fakes.ssh.logins == [IP] * BUSY_TRIES
    assert no_power_control(fakes) and fakes.bugzilla.created == []
    assert fakes.clock.seconds() == BUSY_PAUSE * (BUSY_TRIES - 1)


def test_everything_fails_and_no_bug_is_filed_when_asked_not_to() -> None:
    fakes = _fakes(up=False, comes_back=False)

    text, _ = run_reboot(fakes, update_bug=False)

    assert text.split("\n")[-1] == "All reboot methods failed; not filing a bug, as asked."
    assert fakes.bugzilla.created == []
