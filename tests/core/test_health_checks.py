"""
The health checks of one machine and the verdict they add up to, on the
shipped fakes and a C{Clock}.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from slaveapi.clients import ClientError
from slaveapi.clients._targets import TargetSlots
from slaveapi.clients.devices import Device
from slaveapi.clients.redfish import RedfishError
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.clients.ssh import CommandResult, SSHAuthenticationFailed, SSHBusy
from slaveapi.clients.ssh._limits import SessionSlots
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
from slaveapi.health._checks import MASTER_REQUESTS, SSH_BUSY, SweepLookups, checked
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


def _check(
    fakes: Fakes, limits: HealthConfig | None = None, lookups: SweepLookups | None = None, name: str = "bld-1"
) -> dict[str, Evidence]:
    record = fakes.slavealloc.records[name]
    found = run_on_clock(fakes.clock, check_machine(fakes.context(), record, limits or HealthConfig(), lookups))
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


def test_the_checks_do_not_ask_slavealloc_for_the_machine_again() -> None:
    fakes = _fakes()
    _twistd_log(fakes, _log_line(fakes, 60, "Connected to buildmaster; worker is ready"))

    evidence = _check(fakes)

    assert fakes.slavealloc.asked == []
    assert evidence["ssh"].outcome == GOOD
    assert verdict_of(evidence.values()) == OK


def test_since_stays_while_the_verdict_repeats() -> None:
    down = [Evidence("probe", BAD, "x")]
    up = [Evidence("probe", GOOD, "x")]
    first = next_record(None, "bld-1", "pool", down, 100.0)
    again = next_record(first, "bld-1", "pool", down, 400.0)
    back = next_record(again, "bld-1", "pool", up, 700.0)
    assert (first.since, first.checked_at) == (100.0, 100.0)
    assert (again.verdict, again.since, again.checked_at) == (DOWN, 100.0, 400.0)
    assert (back.verdict, back.since) == (OK, 700.0)


# --- SSH places: never queue behind actions, one health session per host ------------------


def test_a_place_is_taken_without_waiting_only_when_one_is_free() -> None:
    slots: TargetSlots[str] = TargetSlots(1)
    first = slots.try_acquire("foopy-1")
    assert first is not None
    assert slots.try_acquire("foopy-1") is None
    waiter = slots.acquire("foopy-1")
    assert (slots.held("foopy-1"), slots.waiting("foopy-1")) == (1, 1)

    first()
    assert waiter.called  # the line is served first; trying took nobody's place
    assert slots.try_acquire("foopy-1") is None
    waiter.addCallback(lambda release: release())
    again = slots.try_acquire("foopy-1")
    assert again is not None
    again()
    assert len(slots) == 0


def test_an_ssh_session_that_will_not_wait_fails_at_once_and_leaves_the_line_alone() -> None:
    clock = Clock()
    slots = SessionSlots(clock, per_host=1)
    held = run_on_clock(clock, slots.acquire("Foopy-1.", 30.0, "ssh foopy-1:22"))

    action = Deferred.fromCoroutine(slots.acquire("foopy-1", 30.0, "ssh foopy-1:22"))
    with pytest.raises(SSHBusy, match="no SSH session free now"):
        run_on_clock(clock, slots.acquire("foopy-1", 30.0, "ssh foopy-1:22", wait=False))

    assert not action.called
    held()
    assert action.called  # the action that waited gets the place, the health check took none


def test_busy_ssh_places_make_the_ssh_evidence_unknown_not_bad() -> None:
    fakes = _fakes()
    fakes.ssh.busy.add(IP)

    evidence = _check(fakes)

    assert evidence["ssh"] == Evidence("ssh", UNCHECKED, SSH_BUSY)
    assert fakes.ssh.logins == []
    assert verdict_of(evidence.values()) == OK


def test_a_second_health_session_to_one_host_waits_within_ssh_timeout() -> None:
    fakes = _fakes()
    limits = HealthConfig(ssh_timeout=20)
    lookups = SweepLookups(fakes.context(), limits)
    release = lookups.ssh_hosts.try_acquire("bld-1.example.test")
    assert release is not None

    evidence = _check(fakes, limits, lookups)

    assert evidence["ssh"] == Evidence("ssh", UNCHECKED, "other health checks of bld-1.example.test took the 20 s")
    assert fakes.ssh.logins == []
    release()
    assert _check(fakes, limits, lookups)["ssh"].outcome == GOOD


def _device_fakes(foopy_in_dns: bool) -> Fakes:
    hosts = [FakeHost("panda-1", IP)]
    if foopy_in_dns:
        hosts.append(FakeHost("foopy-1", "127.0.9.2"))
    fakes = make_fakes(hosts)
    fakes.clock.advance(1_000_000)
    fakes.devices.devices["panda-1"] = Device(name="panda-1", foopy="foopy-1")
    return fakes


def test_a_foopy_that_does_not_resolve_is_our_lookup_failing_so_unknown() -> None:
    fakes = _device_fakes(foopy_in_dns=False)

    evidence = _check(fakes, name="panda-1")

    assert evidence["ssh"].outcome == UNCHECKED
    assert "foopy-1 is not in DNS" in evidence["ssh"].detail
    assert verdict_of(evidence.values()) == OK


def test_the_checks_of_a_device_log_in_to_its_foopy() -> None:
    fakes = _device_fakes(foopy_in_dns=True)
    _twistd_log(fakes, _log_line(fakes, 60, "Connected to buildmaster; worker is ready"))

    evidence = _check(fakes, name="panda-1")

    assert evidence["ssh"] == Evidence("ssh", GOOD, "logged in to panda-1's foopy foopy-1")
    assert fakes.ssh.logins == ["127.0.9.2"]


# --- ssh_timeout: one bound for logging in and reading ------------------------------------


class _StuckSession:
    """A session whose commands never finish."""

    host = IP

    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        return await Deferred()

    def close(self) -> Deferred[None]:
        return succeed(None)

    async def __aenter__(self) -> _StuckSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def test_a_login_that_hangs_is_bad_after_ssh_timeout() -> None:
    fakes = _fakes()

    async def hangs(host: str, *, port: int | None = None, wait: bool = True) -> Any:
        return await Deferred()

    fakes.ssh.session = hangs  # type: ignore[method-assign]
    evidence = _check(fakes, HealthConfig(ssh_timeout=15))

    assert evidence["ssh"] == Evidence("ssh", BAD, "no SSH login within 15 s")
    assert "buildbot" not in evidence


def test_reading_that_hangs_is_unknown_and_shares_the_one_ssh_timeout() -> None:
    fakes = _fakes()
    started: list[float] = []

    async def slow_login(host: str, *, port: int | None = None, wait: bool = True) -> Any:
        started.append(fakes.clock.seconds())
        landed: Deferred[None] = Deferred()
        fakes.clock.callLater(10, landed.callback, None)
        await landed
        return _StuckSession()

    fakes.ssh.session = slow_login  # type: ignore[method-assign]
    before = fakes.clock.seconds()
    evidence = _check(fakes, HealthConfig(ssh_timeout=15))

    assert evidence["ssh"].outcome == GOOD
    assert evidence["buildbot"] == Evidence("buildbot", UNCHECKED, "reading twistd.log did not finish within 15 s")
    # Login took 10 of the 15 s: reading had the other 5, not 15 of its own.
    assert (started, fakes.clock.seconds()) == ([before], before + 15)


# --- masters: looked up once per sweep, a few requests each at once -----------------------


def test_a_sweep_looks_each_master_up_once() -> None:
    fakes = make_fakes([FakeHost("bld-1", IP), FakeHost("bld-2", "127.0.9.3")])
    fakes.clock.advance(1_000_000)
    asked: list[int] = []
    get_master = fakes.slavealloc.get_master

    async def counting(masterid: int) -> MasterRecord | None:
        asked.append(masterid)
        return await get_master(masterid)

    fakes.slavealloc.get_master = counting  # type: ignore[method-assign]
    fakes.slavealloc.masters[1] = MASTER
    for name in ("bld-1", "bld-2"):
        fakes.slavealloc.records[name] = slave_record(name, current_masterid=1)
        fakes.master.connected[name] = True
    lookups = SweepLookups(fakes.context(), HealthConfig())

    first = _check(fakes, lookups=lookups, name="bld-1")
    second = _check(fakes, lookups=lookups, name="bld-2")

    assert first["worker"] == second["worker"] == Evidence("worker", GOOD, "connected to bm01")
    assert asked == [1]


def test_a_master_slavealloc_cannot_give_makes_the_worker_evidence_unknown() -> None:
    fakes = _fakes()
    fakes.slavealloc.records["bld-1"] = slave_record("bld-1", current_masterid=1)

    async def fails(masterid: int) -> MasterRecord | None:
        raise ClientError("slavealloc: GET /masters/1 failed: HTTP 503")

    fakes.slavealloc.get_master = fails  # type: ignore[method-assign]
    evidence = _check(fakes)

    assert evidence["worker"] == Evidence(
        "worker", UNCHECKED, "could not look its master up: ClientError: slavealloc: GET /masters/1 failed: HTTP 503"
    )


def test_each_master_is_asked_about_at_most_a_few_workers_at_once() -> None:
    fakes = _fakes()
    pending: list[tuple[str, Deferred[bool | None]]] = []

    async def held(master: MasterRecord, worker: str) -> bool | None:
        answer: Deferred[bool | None] = Deferred()
        pending.append((master.nickname, answer))
        return await answer

    fakes.master.worker_connected = held  # type: ignore[method-assign]
    lookups = SweepLookups(fakes.context(), HealthConfig())
    other = dataclasses.replace(MASTER, masterid=2, nickname="bm02")
    asking = [Deferred.fromCoroutine(lookups.worker_connected(MASTER, f"w{index}")) for index in range(6)]
    elsewhere = Deferred.fromCoroutine(lookups.worker_connected(other, "w9"))

    assert [nickname for nickname, _ in pending].count("bm01") == MASTER_REQUESTS
    assert elsewhere is not None and [nickname for nickname, _ in pending].count("bm02") == 1
    pending[0][1].callback(True)
    assert asking[0].called and [nickname for nickname, _ in pending].count("bm01") == MASTER_REQUESTS + 1
    while not all(each.called for each in asking):
        in_flight = [answer for nickname, answer in pending if nickname == "bm01" and not answer.called]
        assert 0 < len(in_flight) <= MASTER_REQUESTS
        in_flight[0].callback(False)
    assert [nickname for nickname, _ in pending].count("bm01") == 6


# --- the BMC, through the power actions' channels -----------------------------------------


def test_a_redfish_failure_makes_the_power_unknown_and_the_bmc_asked_again_next_time() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)

    async def broken(host: str) -> str:
        raise RedfishError(host, "reading the power state", "HTTP 500")

    fakes.redfish.power_state = broken  # type: ignore[method-assign]
    evidence = _check(fakes)

    assert evidence["power"].outcome == UNCHECKED and "HTTP 500" in evidence["power"].detail
    assert ("forget", BMC) in fakes.redfish.calls


def test_a_bmc_that_speaks_neither_is_unknown_power() -> None:
    fakes = _fakes(bmc_ip=BMC)
    fakes.ipmi.silent.add(BMC)

    evidence = _check(fakes)

    assert evidence["power"] == Evidence(
        "power", UNCHECKED, "the BMC at bld-1-mgmt.example.test answers neither Redfish nor IPMI"
    )


def test_checks_that_run_past_machine_timeout_are_unknown() -> None:
    fakes = _fakes()

    async def never(host: str) -> bool:
        return await Deferred()

    fakes.prober.alive = never  # type: ignore[method-assign]
    record = fakes.slavealloc.records["bld-1"]
    found = run_on_clock(
        fakes.clock, checked(fakes.context(), record, HealthConfig(probe_timeout=100, machine_timeout=20))
    )

    assert found == [Evidence("check", UNCHECKED, "checks did not finish within 20 s")]
