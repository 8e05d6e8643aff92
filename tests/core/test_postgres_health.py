"""
The health loop shared by several instances on a real PostgreSQL: what one
instance's store writes the others see (after the notification), the sweep
lease goes to one holder at a time, and the loop sweeps only while it holds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, LoopingCall

from slaveapi.health import DOWN, OK, Evidence, HealthRecord, HealthService
from slaveapi.health._sweep import SWEEP_LEASE
from slaveapi.postgres._database import Database, DatabaseSettings, DatabaseUnavailable, as_deferred
from slaveapi.postgres._health import PostgreSQLHealthStore, SweepLease
from slaveapi.postgres._schema import migrate

from .test_health_sweep import INTERVAL, MemoryHealthStore, _fleet, _Remediation

#: Bound on any wait for a notification to be acted on (seconds); a slow machine gets there far sooner.
_WAIT = 30.0


def _record(name: str, verdict: str = OK, checked_at: float = 20.0) -> HealthRecord:
    return HealthRecord(name, verdict, (Evidence("probe", "ok", f"{name} answers"),), 10.0, checked_at, "pool-a")


class _Store(PostgreSQLHealthStore):
    """A store the test can wait on: until it opened, until what it reloaded satisfies a condition."""

    def __init__(self, database: Database, reactor: Any) -> None:
        super().__init__(database, reactor)
        self.done_opening: Deferred[None] = Deferred()
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def open(self) -> Deferred[None]:
        opening = super().open()

        def opened(outcome: Any) -> Any:
            self.done_opening.callback(None)
            return outcome

        return opening.addBoth(opened)

    def until(self, condition: Callable[[], bool]) -> Deferred[None]:
        """Fires once C{condition()} holds, checked now and after each reload."""
        from twisted.internet import reactor

        if condition():
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting.append((condition, waiting))
        return waiting.addTimeout(_WAIT, reactor)

    def _changed(self) -> None:
        for condition, waiting in list(self._waiting):
            if not waiting.called and condition():
                self._waiting.remove((condition, waiting))
                waiting.callback(None)


async def _database(url: str) -> Database:
    database = Database(DatabaseSettings(url, statement_timeout=30.0, acquire_timeout=30.0, connect_timeout=30.0))
    await as_deferred(database.open())
    return database


@pytest_twisted.async_yield_fixture
async def databases(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two instances' connections to one migrated database."""
    first = await _database(postgres_url)
    second = await _database(postgres_url)
    try:
        await first.run(migrate)
        yield first, second
    finally:
        await as_deferred(first.close())
        await as_deferred(second.close())


async def _opened(database: Database, reactor: Any = None) -> _Store:
    if reactor is None:
        from twisted.internet import reactor
    store = _Store(database, reactor)
    await store.open()
    return store


@pytest_twisted.ensureDeferred
async def test_a_sweep_stored_through_one_instance_is_served_by_the_other(
    databases: tuple[Database, Database],
) -> None:
    one, other = await _opened(databases[0]), await _opened(databases[1])
    try:
        assert other.unavailable() is None
        assert (other.records(), other.last_sweep(), other.last_reboots()) == ({}, None, {})
        first, second = _record("bld-1"), _record("bld-2", DOWN)
        await one.save_sweep([first, second], 100.0)
        assert one.records() == {"bld-1": first, "bld-2": second}

        await other.until(lambda: other.last_sweep() == 100.0)
        assert other.records() == {"bld-1": first, "bld-2": second}
        assert other.get("bld-2") == second

        again = _record("bld-1", DOWN, checked_at=120.0)
        await one.save_sweep([again], 130.0, forget=["bld-2"])
        await other.until(lambda: other.last_sweep() == 130.0)
        assert other.records() == {"bld-1": again}
        assert other.get("bld-2") is None
    finally:
        await one.close()
        await other.close()
    assert one.unavailable() is not None


@pytest_twisted.ensureDeferred
async def test_the_loops_reboots_are_shared(databases: tuple[Database, Database]) -> None:
    one, other = await _opened(databases[0]), await _opened(databases[1])
    try:
        await one.record_reboot("bld-1", 50.0)
        await one.record_reboot("bld-2", 60.0)
        await other.until(lambda: other.last_reboots() == {"bld-1": 50.0, "bld-2": 60.0})

        await one.forget_reboot("bld-1", None)
        await one.forget_reboot("bld-2", 40.0)
        await other.until(lambda: other.last_reboots() == {"bld-2": 40.0})
        # The writer reloads on its own announcements too: a reload of the earlier one may land
        # after its later write, until the later announcement's reload follows.
        await one.until(lambda: one.last_reboots() == {"bld-2": 40.0})
    finally:
        await one.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_a_store_opened_later_reads_everything_stored(databases: tuple[Database, Database]) -> None:
    one = await _opened(databases[0])
    record = _record("bld-1", DOWN)
    try:
        await one.save_sweep([record], 100.0)
        await one.record_reboot("bld-1", 90.0)
    finally:
        await one.close()
    later = await _opened(databases[1])
    try:
        assert (later.records(), later.last_sweep(), later.last_reboots()) == (
            {"bld-1": record},
            100.0,
            {"bld-1": 90.0},
        )
    finally:
        await later.close()


@pytest_twisted.ensureDeferred
async def test_after_its_listening_connection_is_lost_a_store_reads_everything_again(
    databases: tuple[Database, Database],
) -> None:
    store = await _opened(databases[1])
    record = _record("bld-1", DOWN)

    async def behind_its_back(connection: Any) -> None:
        # Written without a notification, as if it had been sent while the store was not listening.
        async with connection.transaction():
            await connection.execute(
                "INSERT INTO health (slave, record) VALUES (%s, %s)",
                ("bld-1", '{"verdict": "down", "evidence": [], "since": 1.0, "checked_at": 2.0, "pool": null}'),
            )
            await connection.execute("INSERT INTO health_sweeps (id, finished) VALUES (1, 3.0)")
            await connection.execute("INSERT INTO health_reboots (slave, at) VALUES ('bld-1', 4.0)")
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN \"slaveapi_health\"'"
        )

    try:
        await databases[0].run(behind_its_back)
        await store.until(lambda: store.last_sweep() == 3.0)
        assert store.last_reboots() == {"bld-1": 4.0}
        assert store.get("bld-1") == HealthRecord("bld-1", DOWN, (), 1.0, 2.0, None)
        assert record.name in store.records()
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_store_on_a_database_a_newer_slaveapi_migrated_does_not_open(postgres_url: str) -> None:
    from slaveapi.health import HealthStoreError

    database = await _database(postgres_url)

    async def newer(connection: Any) -> None:
        await connection.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        await connection.execute("INSERT INTO schema_version (version) VALUES (999)")

    await database.run(newer)
    store = _Store(database, Clock())
    try:
        try:
            await store.open()
        except HealthStoreError as error:
            assert "schema is version 999, newer than this SlaveAPI's" in str(error)
        else:
            raise AssertionError("the store opened a schema it does not know")
        assert "newer than this SlaveAPI's" in (store.unavailable() or "")
    finally:
        await store.close()
        await as_deferred(database.close())


@pytest_twisted.ensureDeferred
async def test_the_sweep_lease_has_one_holder_until_it_expires(databases: tuple[Database, Database]) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    first, second = SweepLease(databases[0], "a", clock), SweepLease(databases[1], "b", clock)

    assert await first.take(SWEEP_LEASE, 60.0) is True
    assert await second.take(SWEEP_LEASE, 60.0) is False
    assert await first.take("another-lease", 60.0) is True  # leases are independent

    clock.advance(30)
    assert await first.take(SWEEP_LEASE, 60.0) is True  # renewed: until 90 s from the start
    clock.advance(40)
    assert await second.take(SWEEP_LEASE, 60.0) is False
    clock.advance(21)
    assert await second.take(SWEEP_LEASE, 60.0) is True  # expired
    assert await first.take(SWEEP_LEASE, 60.0) is False

    await first.release(SWEEP_LEASE)  # not its lease: nothing changes
    assert await first.take(SWEEP_LEASE, 60.0) is False
    await second.release(SWEEP_LEASE)
    assert await first.take(SWEEP_LEASE, 60.0) is True


class _Lease:
    """A lease answering as the test says; C{asked} lists the durations asked for."""

    def __init__(self, answer: Callable[[], Deferred[bool]]) -> None:
        self.answer = answer
        self.asked: list[tuple[str, float]] = []
        self.released: list[str] = []

    def take(self, name: str, seconds: float) -> Deferred[bool]:
        self.asked.append((name, seconds))
        return self.answer()

    def release(self, name: str) -> Deferred[None]:
        self.released.append(name)
        return succeed(None)


def test_an_instance_that_does_not_get_the_lease_does_not_sweep() -> None:
    fakes = _fleet(count=2)
    store = MemoryHealthStore()
    lease = _Lease(lambda: succeed(False))
    service = HealthService(store, fakes.context, fakes.clock, lease=lease)
    service.startService()
    fakes.clock.advance(0)
    fakes.clock.advance(INTERVAL)
    limits = fakes.config.health
    assert lease.asked == [(SWEEP_LEASE, limits.interval + limits.machine_timeout)] * 2
    assert store.saves == 0 and fakes.prober.asked == []
    service.stopService()
    assert lease.released == [] and store.closed


def test_the_lease_holder_sweeps_and_gives_the_lease_up_when_it_stops() -> None:
    fakes = _fleet(count=2)
    store = MemoryHealthStore()
    answers = [True, False, True]
    lease = _Lease(lambda: succeed(answers.pop(0)))
    service = HealthService(store, fakes.context, fakes.clock, lease=lease)
    service.startService()
    fakes.clock.advance(0)
    assert store.saves == 1
    fakes.clock.advance(INTERVAL)  # another instance took it over meanwhile
    assert store.saves == 1
    fakes.clock.advance(INTERVAL)
    assert store.saves == 2 and len(lease.asked) == 3
    service.stopService()
    assert lease.released == [SWEEP_LEASE]


def test_an_unreachable_lease_skips_the_sweep_and_the_next_one_still_comes() -> None:
    fakes = _fleet(count=1)
    store = MemoryHealthStore()
    answers: list[Deferred[bool]] = [fail(DatabaseUnavailable("the database connection is closed")), succeed(True)]
    lease = _Lease(lambda: answers.pop(0))
    service = HealthService(store, fakes.context, fakes.clock, lease=lease)
    service.startService()
    fakes.clock.advance(0)
    assert store.saves == 0
    fakes.clock.advance(INTERVAL)
    assert store.saves == 1
    service.stopService()


@pytest.mark.parametrize(("renewed", "remediated"), [(True, [{"bld-1", "bld-2"}]), (False, [])])
def test_a_sweep_remediates_only_if_it_still_holds_the_lease_at_its_end(
    renewed: bool, remediated: list[set[str]]
) -> None:
    fakes = _fleet(count=2)
    store = MemoryHealthStore()
    answers = [True, renewed]
    lease = _Lease(lambda: succeed(answers.pop(0)))
    remediation = _Remediation()
    service = HealthService(
        store,
        fakes.context,
        fakes.clock,
        remediation=remediation,  # type: ignore[arg-type]
        lease=lease,
    )
    service.startService()
    fakes.clock.advance(0)
    limits = fakes.config.health
    assert store.saves == 1
    assert lease.asked == [(SWEEP_LEASE, limits.interval + limits.machine_timeout)] * 2
    assert remediation.asked == remediated
    service.stopService()


class _RecordedLease(SweepLease):
    """A real lease whose answers the test can wait for."""

    def __init__(self, database: Database, holder: str, reactor: Any) -> None:
        super().__init__(database, holder, reactor)
        self.answered: Deferred[bool] = Deferred()

    def take(self, name: str, seconds: float) -> Deferred[bool]:
        def answered(taken: Any) -> Any:
            if not self.answered.called:
                self.answered.callback(taken)
            return taken

        return super().take(name, seconds).addBoth(answered)


def _swept(store: PostgreSQLHealthStore) -> Callable[[], bool]:
    return lambda: store.last_sweep() is not None


@pytest_twisted.ensureDeferred
async def test_two_instances_sweep_once_and_both_serve_the_verdicts(databases: tuple[Database, Database]) -> None:
    from twisted.internet import reactor

    fakes = _fleet(count=2)
    stores = [_Store(database, fakes.clock) for database in databases]
    leases = [_RecordedLease(database, f"instance-{n}", fakes.clock) for n, database in enumerate(databases)]
    services = [
        HealthService(store, fakes.context, fakes.clock, lease=lease)
        for store, lease in zip(stores, leases, strict=True)
    ]
    # The fakes finish their work at the clock's next turn: turn it while the real database answers.
    pump = LoopingCall(fakes.clock.advance, 0)
    pump.clock = reactor
    pump.start(0.01)
    for service in services:
        service.startService()
    try:
        for store in stores:
            await store.done_opening
        taken = [await lease.answered for lease in leases]
        assert sorted(taken) == [False, True]
        for store in stores:
            await store.until(_swept(store))
            assert {name: record.verdict for name, record in store.records().items()} == {"bld-1": OK, "bld-2": OK}
        # Each machine was checked once: by the holder alone.
        assert sorted(fakes.prober.asked) == sorted(set(fakes.prober.asked))
    finally:
        for service in services:
            await service.stopService()
        pump.stop()

    async def holders(connection: Any) -> list[tuple[Any, ...]]:
        cursor = await connection.execute("SELECT holder FROM leases")
        return await cursor.fetchall()

    assert await databases[0].run(holders) == []
