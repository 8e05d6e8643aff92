"""
The health checks of one machine and the verdict they add up to, on the
shipped fakes and a C{Clock}.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.clients.ssh import CommandResult, SSHAuthenticationFailed
from slaveapi.config import HealthConfig
from slaveapi.health import (
    BAD,
    DEGRADED,
    DOWN,
    GOOD,
    OK,
    UNCHECKED,
    UNKNOWN,
    Evidence,
    check_machine,
    next_record,
    verdict_of,
)
from slaveapi.testing import FakeHost, Fakes, make_fakes, run_on_clock, slave_record

IP = "127.0.9.1"
BMC = "127.0.10.1"
LOG = "/builds/slave/twistd.log"
MASTER = MasterRecord(masterid=1, nickname="bm01", fqdn="bm01.example.test", http_port=8010, pb_port=9001,
                      enabled=True)


def _fakes(**machine: Any) -> Fakes:
    fakes = make_fakes([FakeHost("bld-1", IP, **machine)])
    fakes.clock.advance(1_000_000)
    return fakes


def _log_line(fakes: Fakes, seconds_ago: float, message: str) -> str:
    moment = datetime.fromtimestamp(fakes.clock.seconds() - seconds_ago, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}+0000 [Broker,client] {message}"


def _twistd_log(fakes: Fakes, *lines: str) -> None:
    fakes.ssh.answer(f"tail -n 100 {LOG}", CommandResult(0, "\n".join(lines) + "\n", ""))


def _check(fakes: Fakes, limits: HealthConfig | None = None) -> dict[str, Evidence]:
    found = run_on_clock(fakes.clock, check_machine(fakes.context(), "bld-1", limits or HealthConfig()))
    return {item.check: item for item in found}


def test_a_healthy_idle_machine_with_a_redfish_bmc_is_ok() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    _twistd_log(fakes, _log_line(fakes, 7200, "Connected to buildmaster; worker is ready"))

    evidence = _check(fakes)

    assert {name: item.outcome for name, item in evidence.items()} == {
        "probe": GOOD, "ssh": GOOD, "buildbot": GOOD, "power": GOOD, "bmc_health": GOOD,
    }
    assert evidence["buildbot"].detail == "ready, last activity 7200 s ago"
    assert evidence["power"].detail == "on (Redfish, bld-1-mgmt.example.test)"
    assert verdict_of(evidence.values()) == OK


def test_idle_past_max_idle_is_degraded_only_when_asked_for() -> None:
    fakes = _fakes()
    _twistd_log(fakes, _log_line(fakes, 7200, "Connected to buildmaster; worker is ready"))

    assert verdict_of(_check(fakes).values()) == OK
    evidence = _check(fakes, HealthConfig(max_idle=3600))
    assert evidence["buildbot"].outcome == BAD
    assert "idle longer than 3600 s" in evidence["buildbot"].detail
    assert verdict_of(evidence.values()) == DEGRADED


def test_a_machine_that_does_not_answer_is_down_and_ssh_is_not_tried() -> None:
    fakes = _fakes(bmc_ip=BMC)
    host = fakes.hosts.find("bld-1")
    assert host is not None
    fakes.hosts.power_off(host)

    evidence = _check(fakes)

    assert evidence["probe"] == Evidence("probe", BAD, f"{IP} does not answer")
    assert evidence["power"] == Evidence("power", BAD, "off (IPMI, bld-1-mgmt.example.test)")
    assert "ssh" not in evidence and fakes.ssh.logins == []
    assert verdict_of(evidence.values()) == DOWN


def test_refused_logins_make_a_machine_degraded() -> None:
    fakes = _fakes()
    fakes.ssh.script_logins(IP, then=SSHAuthenticationFailed(f"ssh {IP}:22: every login was rejected"))

    evidence = _check(fakes)

    assert evidence["ssh"].outcome == BAD
    assert "every login was rejected" in evidence["ssh"].detail
    assert "buildbot" not in evidence
    assert verdict_of(evidence.values()) == DEGRADED


def test_a_stopped_buildbot_is_degraded() -> None:
    fakes = _fakes()
    _twistd_log(fakes, _log_line(fakes, 600, "Server Shut Down."))

    evidence = _check(fakes)

    assert evidence["buildbot"].outcome == BAD and evidence["buildbot"].detail.startswith("stopped")
    assert verdict_of(evidence.values()) == DEGRADED


def test_the_worker_is_checked_only_with_masters_that_can_say() -> None:
    fakes = _fakes()
    _twistd_log(fakes, _log_line(fakes, 60, "Connected to buildmaster; worker is ready"))
    fakes.slavealloc.records["bld-1"] = slave_record("bld-1", current_masterid=1)
    fakes.slavealloc.masters[1] = MASTER
    fakes.master.connected["bld-1"] = False

    evidence = _check(fakes)
    assert evidence["worker"] == Evidence("worker", BAD, "not connected to bm01")
    assert verdict_of(evidence.values()) == DEGRADED

    fakes.master.flavour = "0.8"
    evidence = _check(fakes)
    assert "worker" not in evidence
    assert verdict_of(evidence.values()) == OK


def test_a_bmc_reporting_critical_makes_a_machine_degraded() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    _twistd_log(fakes, _log_line(fakes, 60, "Connected to buildmaster; worker is ready"))

    async def critical(host: str) -> str | None:
        return "Critical"

    fakes.redfish.health = critical  # type: ignore[method-assign]
    evidence = _check(fakes)

    assert evidence["bmc_health"] == Evidence("bmc_health", BAD, "bld-1-mgmt.example.test reports Critical")
    assert verdict_of(evidence.values()) == DEGRADED


def test_a_probe_that_cannot_run_is_unknown() -> None:
    from slaveapi.clients.probe import ProbeError

    fakes = _fakes()
    fakes.prober.error = ProbeError("no probe socket")

    evidence = _check(fakes)

    assert evidence["probe"].outcome == UNCHECKED
    assert verdict_of(evidence.values()) == UNKNOWN


def test_a_machine_slavealloc_does_not_know_is_unknown() -> None:
    fakes = _fakes()
    found = run_on_clock(fakes.clock, check_machine(fakes.context(), "bld-2", HealthConfig()))
    assert [item.check for item in found] == ["lookup"]
    assert verdict_of(found) == UNKNOWN


def test_since_stays_while_the_verdict_repeats() -> None:
    down = [Evidence("probe", BAD, "x")]
    up = [Evidence("probe", GOOD, "x")]
    first = next_record(None, "bld-1", "pool", down, 100.0)
    again = next_record(first, "bld-1", "pool", down, 400.0)
    back = next_record(again, "bld-1", "pool", up, 700.0)
    assert (first.since, first.checked_at) == (100.0, 100.0)
    assert (again.verdict, again.since, again.checked_at) == (DOWN, 100.0, 400.0)
    assert (back.verdict, back.since) == (OK, 700.0)
