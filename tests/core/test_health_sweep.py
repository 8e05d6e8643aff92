"""
The health loop on the shipped fakes and a C{Clock}: when sweeps run, how
many machines are checked at once, what a slavealloc failure gives, how a
reload moves the next sweep; and the SQLite store's verdicts surviving a reopen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from slaveapi.clients.http import RemoteError
from slaveapi.config import HealthConfig
from slaveapi.context import Context
from slaveapi.health import (
    DOWN,
    OK,
    UNKNOWN,
    Evidence,
    HealthRecord,
    HealthService,
    IHealthStore,
    SQLiteHealthStore,
)
from slaveapi.testing import FakeHost, Fakes, fake_config, make_fakes

INTERVAL = 300.0


@implementer(IHealthStore)
class MemoryHealthStore:
    """An L{IHealthStore} in memory; C{saves} counts the sweeps stored."""

    def __init__(self) -> None:
        self.stored: dict[str, HealthRecord] = {}
        self.reboots: dict[str, float] = {}
        self.finished: float | None = None
        self.saves = 0
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def unavailable(self) -> str | None:
        return None if self.opened and not self.closed else "not open"

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def get(self, name: str) -> HealthRecord | None:
        return self.stored.get(name)

    def records(self) -> dict[str, HealthRecord]:
        return dict(self.stored)

    def last_sweep(self) -> float | None:
        return self.finished

    def save_sweep(
        self, records: Iterable[HealthRecord], finished_at: float, forget: Iterable[str] = ()
    ) -> Deferred[None]:
        self.stored.update({record.name: record for record in records})
        for name in forget:
            self.stored.pop(name, None)
        self.finished = finished_at
        self.saves += 1
        return succeed(None)

    def last_reboots(self) -> dict[str, float]:
        return dict(self.reboots)

    def record_reboot(self, name: str, at: float) -> Deferred[None]:
        self.reboots[name] = at
        return succeed(None)

    def forget_reboot(self, name: str, previous: float | None) -> Deferred[None]:
        if previous is None:
            self.reboots.pop(name, None)
        else:
            self.reboots[name] = previous
        return succeed(None)


class _Box:
    """The current context, replaceable as a reload replaces it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx


def _fleet(count: int = 3, **limits: Any) -> Fakes:
    config = fake_config(health=HealthConfig(interval=INTERVAL, **limits))
    fakes = make_fakes([FakeHost(f"bld-{n}", f"127.0.9.{n}") for n in range(1, count + 1)], config=config)
    fakes.clock.advance(1_000_000)
    return fakes


def _service(fakes: Fakes, store: MemoryHealthStore) -> tuple[HealthService, _Box]:
    box = _Box(fakes.context())
    service = HealthService(store, lambda: box.ctx, fakes.clock)
    service.startService()
    return service, box


def _held_probes(fakes: Fakes) -> list[Deferred[bool]]:
    """Make every probe wait for the test: the Deferreds it fires, one per probe asked, in order."""
    waiting: list[Deferred[bool]] = []

    async def alive(host: str) -> bool:
        answer: Deferred[bool] = Deferred()
        waiting.append(answer)
        return await answer

    fakes.prober.alive = alive  # type: ignore[method-assign]
    return waiting


def _verdicts(store: MemoryHealthStore) -> dict[str, str]:
    return {name: record.verdict for name, record in store.stored.items()}


def test_the_first_sweep_runs_at_start_and_then_every_interval() -> None:
    fakes = _fleet()
    dead = fakes.hosts.find("bld-2")
    assert dead is not None
    fakes.hosts.power_off(dead)
    store = MemoryHealthStore()
    service, _ = _service(fakes, store)
    start = fakes.clock.seconds()

    fakes.clock.advance(0)
    assert store.opened and store.saves == 1
    assert _verdicts(store) == {"bld-1": OK, "bld-2": DOWN, "bld-3": OK}
    assert store.finished == start

    fakes.clock.advance(INTERVAL - 1)
    assert store.saves == 1
    fakes.clock.advance(1)
    assert store.saves == 2
    assert store.stored["bld-2"].since == start
    assert store.stored["bld-2"].checked_at == start + INTERVAL

    service.stopService()
    assert store.closed
    fakes.clock.advance(INTERVAL * 3)
    assert store.saves == 2


def test_disabled_machines_are_not_checked() -> None:
    fakes = _fleet()
    fakes.slavealloc.records["bld-3"] = dataclasses.replace(fakes.slavealloc.records["bld-3"], enabled=False)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    assert set(store.stored) == {"bld-1", "bld-2"}
    assert all(not host.startswith("127.0.9.3") for host in fakes.prober.asked)


def test_no_more_machines_are_checked_at_once_than_concurrency() -> None:
    fakes = _fleet(count=5, concurrency=2)
    waiting = _held_probes(fakes)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    for expected_total in (2, 4, 5):
        assert len(waiting) == expected_total
        pending = [answer for answer in waiting if not answer.called]
        assert len(pending) <= 2
        for answer in pending:
            answer.callback(False)
    assert store.saves == 1
    assert set(_verdicts(store).values()) == {DOWN}


def test_an_unreachable_slavealloc_makes_every_known_verdict_unknown() -> None:
    fakes = _fleet()
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    assert set(_verdicts(store).values()) == {OK}

    async def fail() -> list[Any]:
        raise RemoteError("slavealloc", "GET", "http://127.0.0.1:1/slavealloc/slaves", "connection refused")

    fakes.slavealloc.list_slaves = fail  # type: ignore[method-assign]
    fakes.clock.advance(INTERVAL)
    assert set(_verdicts(store).values()) == {UNKNOWN}
    assert store.stored["bld-1"].evidence[0].check == "slavealloc"
    assert "connection refused" in store.stored["bld-1"].evidence[0].detail


def test_a_sweep_longer_than_the_interval_delays_the_next_one() -> None:
    fakes = _fleet(count=1, probe_timeout=INTERVAL * 10, machine_timeout=INTERVAL * 10)
    waiting = _held_probes(fakes)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    fakes.clock.advance(INTERVAL * 2)
    assert len(waiting) == 1 and store.saves == 0
    waiting[0].callback(True)
    assert store.saves == 1
    # It took longer than the interval: the next starts at once.
    fakes.clock.advance(0)
    assert len(waiting) == 2


def test_a_reload_moves_the_next_sweep_to_the_new_interval() -> None:
    fakes = _fleet(count=1)
    store = MemoryHealthStore()
    service, box = _service(fakes, store)
    fakes.clock.advance(0)
    assert store.saves == 1

    config = dataclasses.replace(fakes.config, health=HealthConfig(interval=30.0))
    box.ctx = dataclasses.replace(box.ctx, config=config)
    fakes.clock.advance(10)
    service.reloaded()
    fakes.clock.advance(19)
    assert store.saves == 1
    fakes.clock.advance(1)
    assert store.saves == 2


def test_switched_off_the_loop_checks_nothing() -> None:
    fakes = _fleet(count=1, enabled=False)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(INTERVAL * 3)
    assert store.saves == 0 and fakes.prober.asked == []


@pytest_twisted.ensureDeferred
async def test_the_sqlite_store_keeps_verdicts_reboots_and_the_last_sweep(tmp_path: Any) -> None:
    from twisted.internet import reactor

    path = str(tmp_path / "health.sqlite")
    record = HealthRecord("bld-1", DOWN, (Evidence("probe", "bad", "127.0.9.1 does not answer"),), 10.0, 20.0, "p")
    store = SQLiteHealthStore(path, reactor)
    store.open()
    await store.save_sweep([record], 21.0)
    await store.record_reboot("bld-1", 22.0)
    await store.close()

    again = SQLiteHealthStore(path, reactor)
    again.open()
    try:
        assert again.get("bld-1") == record
        assert again.records() == {"bld-1": record}
        assert again.last_sweep() == 21.0
        assert again.last_reboots() == {"bld-1": 22.0}
        assert oct((tmp_path / "health.sqlite").stat().st_mode & 0o777) == "0o600"
    finally:
        await again.close()


class _Remediation:
    """Records the sweeps it is asked to act on."""

    def __init__(self) -> None:
        self.asked: list[set[str]] = []

    async def after_sweep(self, limits: HealthConfig, records: Any, listed: Any) -> list[str]:
        self.asked.append(set(records))
        return []


class _HeldStore(MemoryHealthStore):
    """Its C{save_sweep} waits until the test says, as a slow disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[None]] = []

    def save_sweep(
        self, records: Iterable[HealthRecord], finished_at: float, forget: Iterable[str] = ()
    ) -> Deferred[None]:
        super().save_sweep(records, finished_at, forget)
        held: Deferred[None] = Deferred()
        self.held.append(held)
        return held


def test_a_stop_while_the_verdicts_are_stored_submits_nothing() -> None:
    fakes = _fleet(count=2)
    store = _HeldStore()
    remediation = _Remediation()
    service = HealthService(store, fakes.context, fakes.clock, remediation=remediation)  # type: ignore[arg-type]
    service.startService()
    fakes.clock.advance(0)
    assert len(store.held) == 1 and remediation.asked == []

    stopped = service.stopService()

    assert store.held[0].called  # cancelled
    assert remediation.asked == []
    assert stopped.called and store.closed
    fakes.clock.advance(INTERVAL * 3)
    assert remediation.asked == [] and len(store.held) == 1


def test_a_sweep_that_ends_normally_goes_on_to_remediation() -> None:
    fakes = _fleet(count=2)
    store = MemoryHealthStore()
    remediation = _Remediation()
    service = HealthService(store, fakes.context, fakes.clock, remediation=remediation)  # type: ignore[arg-type]
    service.startService()
    fakes.clock.advance(0)
    assert remediation.asked == [{"bld-1", "bld-2"}]
    service.stopService()


def test_a_sweep_that_raises_is_logged_and_the_next_one_still_runs() -> None:
    fakes = _fleet(count=1)
    usual = fakes.slavealloc.list_slaves

    async def broken() -> list[Any]:
        raise RuntimeError("a bug of ours")

    fakes.slavealloc.list_slaves = broken  # type: ignore[method-assign]
    store = MemoryHealthStore()
    service, _ = _service(fakes, store)
    fakes.clock.advance(0)
    assert store.saves == 0
    fakes.slavealloc.list_slaves = usual  # type: ignore[method-assign]
    fakes.clock.advance(INTERVAL)
    assert store.saves == 1 and _verdicts(store) == {"bld-1": OK}
    service.stopService()


def test_the_sweep_under_way_keeps_its_context_in_use_across_a_reload() -> None:
    fakes = _fleet(count=1)
    waiting = _held_probes(fakes)
    store = MemoryHealthStore()
    service, box = _service(fakes, store)
    old = box.ctx
    assert not service.uses(old)
    fakes.clock.advance(0)
    assert len(waiting) == 1

    box.ctx = dataclasses.replace(old, config=dataclasses.replace(old.config))
    service.reloaded()
    assert service.uses(old) and not service.uses(box.ctx)
    waiting[0].callback(True)
    assert store.saves == 1
    assert not service.uses(old)
    service.stopService()


def test_the_context_holder_keeps_a_context_any_watcher_uses(tmp_path: Any) -> None:
    from twisted.internet import reactor

    from slaveapi.config import load_config
    from slaveapi.service import ContextHolder
    from tests.core.test_reload_release import _write

    holder = ContextHolder(load_config(_write(tmp_path, 10)), reactor, str(tmp_path))
    sweeping: set[int] = set()
    holder.watch(lambda ctx: False)  # no action uses it
    holder.watch(lambda ctx: id(ctx) in sweeping)  # a health sweep does
    old = holder.context()
    sweeping.add(id(old))
    _write(tmp_path, 20)
    assert holder.reload() is True
    try:
        assert holder._release_idle() is None
        sweeping.clear()
        assert holder._release_idle() is not None
    finally:
        holder._sweeper.stop() if holder._sweeper.running else None


def test_since_starts_afresh_after_a_gap_in_the_sweeps() -> None:
    fakes = _fleet(count=1)
    dead = fakes.hosts.find("bld-1")
    assert dead is not None
    fakes.hosts.power_off(dead)
    store = MemoryHealthStore()
    service, _ = _service(fakes, store)
    fakes.clock.advance(0)
    first = fakes.clock.seconds()
    fakes.clock.advance(INTERVAL)
    assert store.stored["bld-1"].since == first
    service.stopService()

    # SlaveAPI stopped for a week: nobody knows since when it is down.
    fakes.clock.advance(7 * 86400)
    store.closed = False
    _service(fakes, store)
    fakes.clock.advance(0)
    assert (store.stored["bld-1"].verdict, store.stored["bld-1"].since) == (DOWN, fakes.clock.seconds())


def test_a_sweep_longer_than_two_intervals_is_no_gap() -> None:
    fakes = _fleet(count=1, probe_timeout=INTERVAL * 10, machine_timeout=INTERVAL * 10)
    waiting = _held_probes(fakes)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    first = fakes.clock.seconds()
    waiting[0].callback(False)
    fakes.clock.advance(INTERVAL)
    fakes.clock.advance(INTERVAL * 3)
    waiting[1].callback(False)
    assert store.stored["bld-1"].since == first


def test_a_bmc_saying_off_while_the_machine_answers_is_degraded_not_down() -> None:
    from slaveapi.health import DEGRADED, verdict_of

    answers = Evidence("probe", "ok", "127.0.9.1 answers")
    off = Evidence("power", "bad", "off (IPMI, bld-1-mgmt)")
    assert verdict_of([answers, off]) == DEGRADED
    assert verdict_of([Evidence("probe", "bad", "does not answer"), off]) == DOWN


def test_an_unreachable_slavealloc_keeps_when_each_machine_was_last_checked() -> None:
    fakes = _fleet(count=1)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    checked = store.stored["bld-1"].checked_at

    async def fail() -> list[Any]:
        raise RemoteError("slavealloc", "GET", "http://127.0.0.1:1/slavealloc/slaves", "connection refused")

    fakes.slavealloc.list_slaves = fail  # type: ignore[method-assign]
    fakes.clock.advance(INTERVAL)
    record = store.stored["bld-1"]
    assert (record.verdict, record.checked_at, record.since) == (UNKNOWN, checked, checked + INTERVAL)
    fakes.clock.advance(INTERVAL)
    assert store.stored["bld-1"].since == checked + INTERVAL


def test_a_disabled_machine_turns_unknown_and_an_unlisted_one_is_forgotten() -> None:
    from slaveapi.health._sweep import FORGET_AFTER

    fakes = _fleet(count=3)
    dead = fakes.hosts.find("bld-2")
    assert dead is not None
    fakes.hosts.power_off(dead)
    store = MemoryHealthStore()
    _service(fakes, store)
    fakes.clock.advance(0)
    assert _verdicts(store)["bld-2"] == DOWN
    checked = store.stored["bld-2"].checked_at

    records = fakes.slavealloc.records
    records["bld-2"] = dataclasses.replace(records["bld-2"], enabled=False)
    del records["bld-3"]
    fakes.clock.advance(INTERVAL)
    disabled = store.stored["bld-2"]
    assert (disabled.verdict, disabled.checked_at) == (UNKNOWN, checked)
    assert disabled.evidence[0].detail == "not enabled in slavealloc: not checked"
    assert store.stored["bld-3"].evidence[0].detail == "not listed in slavealloc"

    # Re-enabled weeks later, still down: down since now, not since weeks ago.
    fakes.clock.advance(FORGET_AFTER)
    records["bld-2"] = dataclasses.replace(records["bld-2"], enabled=True)
    fakes.clock.advance(INTERVAL)
    assert "bld-3" not in store.stored
    assert (store.stored["bld-2"].verdict, store.stored["bld-2"].since) == (DOWN, fakes.clock.seconds())


def test_a_health_database_that_cannot_be_read_leaves_the_store_unavailable(tmp_path: Any) -> None:
    from slaveapi.health import HealthStoreError

    path = tmp_path / "health.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteHealthStore(str(path), Clock())
    assert store.unavailable() is not None
    try:
        store.open()
    except HealthStoreError as error:
        assert "not a readable health database" in str(error)
    else:
        raise AssertionError("a corrupt database opened")
    assert "not a readable health database" in (store.unavailable() or "")

    fakes = _fleet(count=1)
    service = HealthService(store, fakes.context, fakes.clock)
    service.startService()
    fakes.clock.advance(INTERVAL)
    assert fakes.prober.asked == []
    service.stopService()
