"""
The reboot escalation's decisions, on the shipped fakes and a C{Clock}: what
the lab cannot stage (a reboot faster than the probe's polls, a probe that
cannot run, a caller that asks for no bug, SSH places that stay taken).
"""

from __future__ import annotations

from typing import Any

import pytest

from slaveapi.actions.reboot import BUSY_PAUSE, BUSY_TRIES
from slaveapi.clients.probe import ProbeError
from slaveapi.clients.ssh import CommandResult, SSHBusy
from slaveapi.config import ProbeConfig
from slaveapi.testing import FakeHost, Fakes, fake_config, make_fakes
from tests.core.reboots import no_power_control, run_reboot

IP = "127.0.9.1"

_BUSY = SSHBusy(
    f"ssh {IP}:22: no SSH session came free within 30s (2 already open to this host, the [ssh] per_host limit)"
)

_STAYED_BUSY = (
    "bld-1 answers, but SSH to it stayed busy after 3 tries: no power control was used (Mozpool, Redfish, IPMI"
    " and the PDU were not tried) and no bug was filed."
)


def _fakes(with_power_control: bool = False) -> Fakes:
    """
    bld-1, up for a day; C{with_power_control}: Mozpool, IPMI and a PDU
    would all apply to it (an imaging server and an outlet in inventory, a
    -mgmt name whose BMC answers).
    """
    power: dict[str, Any] = {}
    if with_power_control:
        power = {
            "bmc_ip": "127.0.10.1",
            "outlet": "pdu1.example.test:AA1",
            "imaging_server": "mobile-imaging-001.example.test",
        }
    # Polls 5 s apart (not the 1 s default), so a reboot can be quicker than them.
    config = fake_config(probes=ProbeConfig(interval=5.0))
    return make_fakes([FakeHost("bld-1", IP, **power)], config=config)


def _reboots_between_polls(fakes: Fakes) -> None:
    """The reboot command takes bld-1 down a second later and it boots in two: quicker than the probe's polls."""
    host = fakes.hosts.find("bld-1")
    assert host is not None and fakes.config.probes.interval > 3
    host.boot_seconds = 2.0

    def accepted(address: str) -> CommandResult:
        fakes.clock.callLater(1.0, fakes.hosts.go_down, host)
        return CommandResult(None, "", "")

    fakes.ssh.answer("reboot", accepted)


def _never_goes_down(fakes: Fakes) -> None:
    """The reboot command is accepted, and nothing happens."""
    fakes.ssh.answer("reboot", CommandResult(0, "", ""))


def test_a_reboot_too_fast_for_the_probe_is_seen_in_the_uptime() -> None:
    fakes = _fakes()
    _reboots_between_polls(fakes)
    text, _ = run_reboot(fakes)
    assert text == "Attempting SSH reboot...Success!"
    assert [command for _, command in fakes.ssh.commands] == ["reboot", "cat /proc/uptime"]
    # The probe never saw it down: it waited its whole down_timeout.
    assert fakes.clock.seconds() >= fakes.config.probes.down_timeout


def test_a_machine_that_did_not_reboot_escalates_and_asks_for_no_bug_when_told_not_to() -> None:
    fakes = _fakes()
    _never_goes_down(fakes)
    text, shown = run_reboot(fakes, update_bug=False)
    assert text.split("\n") == [
        "Attempting SSH reboot...Failed (it never went down).",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Skipping Redfish reboot: no -mgmt interface in DNS.",
        "Skipping IPMI reboot: no -mgmt interface in DNS.",
        "Skipping PDU reboot: no PDU outlet in inventory.",
        "All reboot methods failed; not filing a bug, as asked.",
    ]
    assert "Attempting SSH reboot...initiated, waiting for it to come back..." in shown[1]
    assert fakes.bugzilla.created == [] and fakes.bugzilla.comments == {}


def test_a_probe_that_cannot_run_skips_ssh_with_the_reason() -> None:
    fakes = _fakes()
    fakes.prober.error = ProbeError("no ping command found")
    text, _ = run_reboot(fakes, update_bug=False)
    assert text.split("\n")[0] == "Skipping SSH reboot: cannot probe the machine: no ping command found."
    assert fakes.ssh.logins == []


def test_busy_ssh_is_retried_then_stops_the_reboot_without_power_control() -> None:
    fakes = _fakes(with_power_control=True)
    fakes.ssh.script_logins(IP, then=_BUSY)

    text, _ = run_reboot(fakes)

    assert fakes.ssh.logins == [IP] * BUSY_TRIES
    assert fakes.clock.seconds() == BUSY_PAUSE * (BUSY_TRIES - 1)
    assert no_power_control(fakes) and fakes.bugzilla.created == []
    assert text.split("\n") == [
        (
            "Attempting SSH reboot...Stopped while logging in to send the reboot command (ssh 127.0.9.1:22: no SSH"
            " session came free within 30s (2 already open to this host, the [ssh] per_host limit))."
        ),
        _STAYED_BUSY,
    ]


def test_busy_ssh_after_the_reboot_command_is_not_taken_for_a_machine_that_never_went_down() -> None:
    # The reboot command was accepted, the probe never saw the machine down, and the
    # uptime cannot be read because SSH to it is busy: not known, so no power control.
    fakes = _fakes(with_power_control=True)
    _never_goes_down(fakes)
    fakes.ssh.script_logins(IP, None, then=_BUSY)

    text, _ = run_reboot(fakes)

    assert fakes.ssh.commands == [(IP, "reboot")]
    assert fakes.ssh.logins == [IP] * (1 + BUSY_TRIES)
    assert no_power_control(fakes) and fakes.bugzilla.created == []
    lines = text.split("\n")
    assert lines[0].startswith(
        "Attempting SSH reboot...initiated, then stopped while checking its uptime after the reboot command (ssh "
    )
    assert lines[1:] == [_STAYED_BUSY]


@pytest.mark.parametrize("busy_logins", [1, BUSY_TRIES - 1])
def test_ssh_busy_for_a_while_is_waited_for_and_the_ssh_reboot_goes_ahead(busy_logins: int) -> None:
    fakes = _fakes(with_power_control=True)
    _reboots_between_polls(fakes)
    fakes.ssh.script_logins(IP, *[_BUSY] * busy_logins)

    text, _ = run_reboot(fakes)

    assert text == "Attempting SSH reboot...Success!"
    # Busy, then the reboot command, then the uptime.
    assert fakes.ssh.logins == [IP] * (busy_logins + 2)
    assert fakes.ssh.commands[0] == (IP, "reboot")
    assert no_power_control(fakes)
    assert fakes.ssh.open_sessions == 0
