"""
Remediation's rules on a C{Clock}: which down machines get a reboot
submitted as C{health}, the per-pool cap (counting everyone's reboots), the
minimum interval between two reboots of one machine, and never a machine
someone is working on.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from slaveapi.actions import Action
from slaveapi.admission import QueueFull
from slaveapi.config import HealthConfig
from slaveapi.health import BAD, DOWN, HEALTH_CLIENT, OK, Evidence, HealthRecord, Remediation
from slaveapi.results import PENDING, RUNNING, ActionResult
from slaveapi.store import ResultQuery
from slaveapi.testing import run_on_clock, slave_record
from tests.core.test_health_sweep import MemoryHealthStore

NOW = 1_000_000.0
ON = HealthConfig(remediate=True, down_after=900, max_rebooting_per_pool=2, min_reboot_interval=3600)


class _Processor:
    """Records submissions; C{full} makes them fail as a full queue does."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, str | None]] = []
        self.full = False

    async def submit(
        self, slave: str, action: Action, arguments: dict[str, Any] | None = None, client: str | None = None
    ) -> ActionResult:
        if self.full:
            raise QueueFull("changes", 1)
        self.submitted.append((slave, action.name, client))
        return ActionResult(slave=slave, action=action.name, requestid=len(self.submitted), client=client)


class _Results:
    """The pending and running results the store would hold (its reads are its own)."""

    def __init__(self, *busy: ActionResult) -> None:
        self.busy = list(busy)
        self.reads = self

    def page(self, query: ResultQuery) -> Deferred[list[ActionResult]]:
        return succeed([result for result in self.busy if result.state == query.state])


def _down(name: str, pool: str, for_seconds: float = 1000.0) -> HealthRecord:
    evidence = (Evidence("probe", BAD, "does not answer"),)
    return HealthRecord(name, DOWN, evidence, NOW - for_seconds, NOW, pool)


def _running(slave: str, action: str = "reboot", state: int = RUNNING) -> ActionResult:
    return ActionResult(slave=slave, action=action, requestid=99, state=state, client="someone")


def _remediate(
    records: list[HealthRecord], limits: HealthConfig = ON, results: _Results | None = None,
    store: MemoryHealthStore | None = None, processor: _Processor | None = None,
) -> tuple[list[str], _Processor, MemoryHealthStore]:
    clock = Clock()
    clock.advance(NOW)
    processor = processor or _Processor()
    store = store or MemoryHealthStore()
    remediation = Remediation(processor, results or _Results(), store, clock)  # type: ignore[arg-type]
    enabled = {record.name: slave_record(record.name, pool=record.pool) for record in records}
    by_name = {record.name: record for record in records}
    return run_on_clock(clock, remediation.after_sweep(limits, by_name, enabled)), processor, store


def test_off_by_default_nothing_is_rebooted() -> None:
    rebooted, processor, _ = _remediate([_down("bld-1", "p")], limits=HealthConfig())
    assert rebooted == [] and processor.submitted == []


def test_a_machine_down_long_enough_gets_one_reboot_as_health() -> None:
    rebooted, processor, store = _remediate([_down("bld-1", "p"), _down("bld-2", "p", for_seconds=899)])
    assert rebooted == ["bld-1"]
    assert processor.submitted == [("bld-1", "reboot", HEALTH_CLIENT)]
    assert store.reboots == {"bld-1": NOW}


def test_the_per_pool_cap_holds_when_several_go_down_together() -> None:
    records = [_down(f"t-{n}", "tests", for_seconds=1000 + n) for n in range(1, 6)]
    records += [_down("b-1", "build")]

    rebooted, _, _ = _remediate(records)

    # Longest down first, two of the tests pool, and the other pool unaffected.
    assert rebooted == ["t-5", "t-4", "b-1"]


def test_reboots_asked_for_by_others_count_against_the_cap() -> None:
    records = [
        _down("t-1", "tests", for_seconds=3000),
        _down("t-2", "tests", for_seconds=2000),
        _down("t-3", "tests", for_seconds=1000),
        HealthRecord("t-9", OK, (), NOW, NOW, "tests"),
    ]
    results = _Results(_running("t-9"), _running("t-1", action="buildslave_uptime", state=PENDING))

    rebooted, _, _ = _remediate(records, results=results)

    # Someone's reboot of t-9 leaves one place in the pool; t-1 is busy with an action.
    assert rebooted == ["t-2"]


def test_never_the_same_machine_more_often_than_min_reboot_interval() -> None:
    store = MemoryHealthStore()
    store.reboots["bld-1"] = NOW - 3599
    rebooted, processor, _ = _remediate([_down("bld-1", "p")], store=store)
    assert rebooted == [] and processor.submitted == []

    store.reboots["bld-1"] = NOW - 3600
    rebooted, _, _ = _remediate([_down("bld-1", "p")], store=store)
    assert rebooted == ["bld-1"]


def test_a_disabled_machine_is_not_rebooted() -> None:
    clock = Clock()
    clock.advance(NOW)
    processor = _Processor()
    remediation = Remediation(processor, _Results(), MemoryHealthStore(), clock)  # type: ignore[arg-type]
    record = _down("bld-1", "p")
    rebooted = run_on_clock(clock, remediation.after_sweep(ON, {"bld-1": record}, {}))
    assert rebooted == [] and processor.submitted == []


@pytest.mark.parametrize("down_after", [0.0, 500.0])
def test_down_after_counts_from_since(down_after: float) -> None:
    limits = HealthConfig(remediate=True, down_after=down_after)
    rebooted, _, _ = _remediate([_down("bld-1", "p", for_seconds=600)], limits=limits)
    assert rebooted == ["bld-1"]


def test_a_full_queue_is_no_reboot_and_not_remembered() -> None:
    processor = _Processor()
    processor.full = True
    rebooted, _, store = _remediate([_down("bld-1", "p")], processor=processor)
    assert rebooted == [] and store.reboots == {}


def test_a_machine_whose_bmc_reports_its_power_off_is_not_rebooted() -> None:
    off = _down("bld-1", "p")
    off = HealthRecord(
        off.name, DOWN, (*off.evidence, Evidence("power", BAD, "off (IPMI, bld-1-mgmt)")), off.since, NOW, "p"
    )
    rebooted, processor, _ = _remediate([off, _down("bld-2", "p")])
    assert rebooted == ["bld-2"] and [name for name, _, _ in processor.submitted] == ["bld-2"]


def test_a_reboot_of_a_disabled_machine_counts_against_its_pool() -> None:
    clock = Clock()
    clock.advance(NOW)
    processor = _Processor()
    limits = HealthConfig(remediate=True, down_after=900, max_rebooting_per_pool=1)
    remediation = Remediation(processor, _Results(_running("t-9")), MemoryHealthStore(), clock)  # type: ignore[arg-type]
    listed = {"t-1": slave_record("t-1", pool="tests"), "t-9": slave_record("t-9", pool="tests", enabled=False)}
    rebooted = run_on_clock(clock, remediation.after_sweep(limits, {"t-1": _down("t-1", "tests")}, listed))
    assert rebooted == [] and processor.submitted == []


class _HangingProcessor(_Processor):
    """Its submissions never return (until cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Deferred[ActionResult]] = []

    async def submit(
        self, slave: str, action: Action, arguments: dict[str, Any] | None = None, client: str | None = None
    ) -> ActionResult:
        self.submitted.append((slave, action.name, client))
        waiting: Deferred[ActionResult] = Deferred()
        self.waiting.append(waiting)
        return await waiting


def test_a_reboot_cancelled_while_being_submitted_is_still_remembered() -> None:
    clock = Clock()
    clock.advance(NOW)
    processor = _HangingProcessor()
    store = MemoryHealthStore()
    remediation = Remediation(processor, _Results(), store, clock)  # type: ignore[arg-type]
    listed = {"bld-1": slave_record("bld-1", pool="p")}
    deciding = Deferred.fromCoroutine(remediation.after_sweep(ON, {"bld-1": _down("bld-1", "p")}, listed))
    assert processor.submitted == [("bld-1", "reboot", HEALTH_CLIENT)]
    deciding.cancel()
    assert isinstance(deciding.result, Failure) and deciding.result.check(CancelledError)
    deciding.addErrback(lambda _: None)
    assert store.reboots == {"bld-1": NOW}


def test_a_refused_submission_restores_the_previous_reboot_time() -> None:
    store = MemoryHealthStore()
    store.reboots["bld-1"] = NOW - 7200
    processor = _Processor()
    processor.full = True
    rebooted, _, _ = _remediate([_down("bld-1", "p")], processor=processor, store=store)
    assert rebooted == [] and store.reboots == {"bld-1": NOW - 7200}


class _FailingWrites(MemoryHealthStore):
    """Remembers reboots in memory, but writing them to disk fails."""

    def record_reboot(self, name: str, at: float) -> Deferred[None]:
        self.reboots[name] = at
        return fail(OSError("disk full"))


def test_a_reboot_that_cannot_be_stored_does_not_stop_the_others() -> None:
    store = _FailingWrites()
    rebooted, processor, _ = _remediate([_down("bld-1", "p", 2000), _down("bld-2", "q")], store=store)
    assert rebooted == ["bld-1", "bld-2"]
    assert len(processor.submitted) == 2
