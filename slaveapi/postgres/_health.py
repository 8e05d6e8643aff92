"""
The health loop's verdicts in PostgreSQL, shared by every instance, and the
lease that lets one instance of the cluster sweep at a time.

L{PostgreSQLHealthStore} answers from memory, as the SQLite store does: it
is read on every C{GET /health}, and a fleet's verdicts are a few hundred
small rows. Memory is loaded when the store opens and kept current by
notifications: every write announces itself on the C{slaveapi_health}
channel in its own transaction (C{sweep} after a sweep's verdicts,
C{reboot <slave>} after a reboot of the loop's is remembered or forgotten),
and every instance, the writer too, reloads what the notification names,
one query a reload. Reloads run one at a time, in the order of the
notifications, and notifications that arrive while one runs are merged, so
that a burst costs a few queries and the last reload reads the last commit.
When the listening connection was lost, notifications may have been missed:
everything is read again.

Only the instance that holds the C{health-sweep} lease (L{SweepLease}, a
row of C{leases}) sweeps and remediates; the others skip their turn and
serve what it stored. Lease times come from the reactor's clock, so the
instances' clocks must agree within a fraction of the lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from psycopg import AsyncConnection
from twisted.internet.defer import Deferred, DeferredLock, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from slaveapi.health._store import HealthStoreError, IHealthStore, RememberedHealth, decode_record, encode_record
from slaveapi.health._verdict import HealthRecord
from slaveapi.postgres._database import Database, DatabaseUnavailable, _Listener, as_deferred
from slaveapi.postgres._schema import SchemaTooNew, migrate

#: The channel health writes are announced on.
HEALTH_CHANNEL = "slaveapi_health"
#: The notification payload after a sweep's verdicts were stored.
SWEEP_CHANGED = "sweep"
#: The first word of the payload C{reboot <slave>}, after a reboot of the loop's was remembered or forgotten.
REBOOT_CHANGED = "reboot"

_UPSERT_RECORD = (
    "INSERT INTO health (slave, record) VALUES (%s, %s) ON CONFLICT (slave) DO UPDATE SET record = excluded.record"
)
_DELETE_RECORD = "DELETE FROM health WHERE slave = %s"
_UPSERT_SWEEP = (
    "INSERT INTO health_sweeps (id, finished) VALUES (1, %s)"
    " ON CONFLICT (id) DO UPDATE SET finished = excluded.finished"
)
_UPSERT_REBOOT = (
    "INSERT INTO health_reboots (slave, at) VALUES (%s, %s) ON CONFLICT (slave) DO UPDATE SET at = excluded.at"
)
_DELETE_REBOOT = "DELETE FROM health_reboots WHERE slave = %s"
_NOTIFY = "SELECT pg_notify(%s, %s)"

# Each load is one statement, hence one snapshot. Rows: (kind, slave, record, time), where kind
# is 'r' (a record), 'b' (a reboot: slave, at) or 's' (the last sweep: finished).
_LOAD_SWEEP = """
SELECT 'r', slave, record, NULL::double precision FROM health
UNION ALL SELECT 's', NULL, NULL, finished FROM health_sweeps
"""
_LOAD_ALL = """
SELECT 'r', slave, record, NULL::double precision FROM health
UNION ALL SELECT 's', NULL, NULL, finished FROM health_sweeps
UNION ALL SELECT 'b', slave, NULL, at FROM health_reboots
"""
_LOAD_REBOOT = "SELECT at FROM health_reboots WHERE slave = %s"

_TAKE_LEASE = """
INSERT INTO leases (name, holder, expires) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE leases.expires < %s OR leases.holder = %s
RETURNING holder
"""
_RELEASE_LEASE = "DELETE FROM leases WHERE name = %s AND holder = %s"


class _Loaded:
    """What a load read, decoded; C{last_sweep}/C{reboots} stay C{None} when the load did not read them."""

    def __init__(self, rows: list[tuple[Any, ...]], with_reboots: bool) -> None:
        self.records: dict[str, HealthRecord] = {}
        self.reboots: dict[str, float] | None = {} if with_reboots else None
        self.last_sweep: float | None = None
        for kind, slave, record, at in rows:
            if kind == "r":
                self.records[slave] = decode_record(slave, record)
            elif kind == "s":
                self.last_sweep = float(at)
            elif self.reboots is not None:
                self.reboots[slave] = float(at)


def _fetch(
    sql: str, params: tuple[Any, ...] = ()
) -> Callable[[AsyncConnection[Any]], Awaitable[list[tuple[Any, ...]]]]:
    async def fetch(connection: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cursor = await connection.execute(sql, params)
        return await cursor.fetchall()

    return fetch


def _shielded(deferred: Deferred[None], log: Logger, what: str) -> Deferred[None]:
    """
    C{deferred}'s outcome, on a Deferred whose cancelling leaves C{deferred}
    running: a write the caller stops waiting for (the loop stopping) is
    still made, as the SQLite store's would be.
    """
    outcome: Deferred[None] = Deferred()

    def passed(result: Any) -> None:
        if not outcome.called:
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(None)
        elif isinstance(result, Failure):
            log.warn("health: could not store {what}: {reason}", what=what, reason=result.getErrorMessage())

    deferred.addBoth(passed)
    return outcome


@implementer(IHealthStore)
class PostgreSQLHealthStore(RememberedHealth):
    """
    Verdicts, the last sweep's end and the loop's reboots in the shared
    database, answered from memory (see the module docstring).

    @param database: the open database (its owner closes it, after L{close}).
    """

    _log = Logger(namespace="slaveapi.health")

    def __init__(self, database: Database, reactor: Any) -> None:
        super().__init__()
        self._database = database
        self._reactor = reactor
        self._unavailable: str | None = "the health store is not open"
        self._opened = False
        self._listener: _Listener | None = None
        self._writes = DeferredLock()
        # What notifications said changed and is not reloaded yet (reboots: an ordered set).
        self._stale_everything = False
        self._stale_sweep = False
        self._stale_reboots: dict[str, None] = {}
        self._reloading: Deferred[None] | None = None

    def open(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        listener = self._listener = self._database.listen([HEALTH_CHANNEL], self._notified, self._reconnected)
        try:
            # Listening first: a write committed after the load is announced, and reloaded.
            waited = asyncio.wait_for(listener.listening.wait(), self._database.settings.connect_timeout)
            try:
                await as_deferred(waited)
            except TimeoutError:
                raise DatabaseUnavailable(
                    f"not listening for health notifications after {self._database.settings.connect_timeout:g}s"
                ) from None
            # The results store migrates the schema as it opens, at the same time: whichever
            # comes first migrates, under the migration lock, and the other finds it done.
            await self._database.run(migrate)
            loaded = _Loaded(await self._database.run(_fetch(_LOAD_ALL)), with_reboots=True)
        except SchemaTooNew as error:
            await self._stop_listening()
            self._unavailable = str(error)
            raise HealthStoreError(self._unavailable) from None
        except DatabaseUnavailable as error:
            await self._stop_listening()
            self._unavailable = f"the health tables cannot be read: {error}"
            raise HealthStoreError(self._unavailable) from None
        except (ValueError, TypeError, KeyError) as error:
            await self._stop_listening()
            self._unavailable = f"the health tables hold a record that cannot be read ({error})"
            raise HealthStoreError(self._unavailable) from None
        self._apply(loaded)
        self._opened = True
        self._unavailable = None
        self._reload_soon()

    async def _stop_listening(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await as_deferred(listener.stop())

    def unavailable(self) -> str | None:
        return self._unavailable

    def close(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        self._opened = False
        if self._unavailable is None:
            self._unavailable = "the health store is closed"
        await self._stop_listening()
        if self._reloading is not None:
            self._reloading.cancel()
        # The writes under way end within the database's timeouts.
        await self._writes.acquire()
        self._writes.release()

    def save_sweep(
        self, records: Iterable[HealthRecord], finished_at: float, forget: Iterable[str] = ()
    ) -> Deferred[None]:
        chosen, forgotten = self._remember_sweep(records, finished_at, forget)
        upserts = [(record.name, encode_record(record)) for record in chosen]

        async def save(connection: AsyncConnection[Any]) -> None:
            async with connection.transaction():
                async with connection.cursor() as cursor:
                    if upserts:
                        await cursor.executemany(_UPSERT_RECORD, upserts)
                    if forgotten:
                        await cursor.executemany(_DELETE_RECORD, [(name,) for name in forgotten])
                await connection.execute(_UPSERT_SWEEP, (finished_at,))
                await connection.execute(_NOTIFY, (HEALTH_CHANNEL, SWEEP_CHANGED))

        return self._write(save, "the verdicts")

    def record_reboot(self, name: str, at: float) -> Deferred[None]:
        self._reboots[name] = at
        return self._write(self._reboot_write(name, _UPSERT_REBOOT, (name, at)), f"the reboot of {name}")

    def forget_reboot(self, name: str, previous: float | None) -> Deferred[None]:
        if previous is not None:
            return self.record_reboot(name, previous)
        self._reboots.pop(name, None)
        return self._write(self._reboot_write(name, _DELETE_REBOOT, (name,)), f"the reboot of {name}")

    def _reboot_write(
        self, name: str, sql: str, params: tuple[Any, ...]
    ) -> Callable[[AsyncConnection[Any]], Awaitable[None]]:
        async def write(connection: AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute(sql, params)
                await connection.execute(_NOTIFY, (HEALTH_CHANNEL, f"{REBOOT_CHANGED} {name}"))

        return write

    def _write(self, work: Callable[[AsyncConnection[Any]], Awaitable[None]], what: str) -> Deferred[None]:
        """Run C{work} after the writes before it (in order, as they were asked for)."""
        if not self._opened:
            return fail(HealthStoreError(self._unavailable or "the health store is not open"))
        written: Deferred[None] = self._writes.run(lambda: self._database.run(work))
        return _shielded(written, self._log, what)

    # Notifications and reloads.

    def _notified(self, channel: str, payload: str) -> None:
        kind, _, slave = payload.partition(" ")
        if kind == SWEEP_CHANGED:
            self._stale_sweep = True
        elif kind == REBOOT_CHANGED and slave:
            self._stale_reboots[slave] = None
        else:
            self._log.warn("health: an unexpected notification: {payload!r}", payload=payload[:100])
            return
        self._reload_soon()

    def _reconnected(self) -> None:
        self._stale_everything = True
        self._reload_soon()

    def _reload_soon(self) -> None:
        """Start reloading what is stale, unless a reload runs (it goes on to it) or the store is not open."""
        if self._reloading is not None or not self._opened:
            return
        if not (self._stale_everything or self._stale_sweep or self._stale_reboots):
            return
        reloading = self._reloading = Deferred.fromCoroutine(self._reload())

        def ended(outcome: Any) -> None:
            self._reloading = None
            if isinstance(outcome, Failure) and not outcome.check(DatabaseUnavailable):
                self._log.failure("health: reloading the verdicts failed", outcome)

        reloading.addBoth(ended)

    async def _reload(self) -> None:
        try:
            while self._opened:
                if self._stale_everything:
                    self._stale_everything = self._stale_sweep = False
                    self._stale_reboots.clear()
                    self._apply(_Loaded(await self._database.run(_fetch(_LOAD_ALL)), with_reboots=True))
                elif self._stale_sweep:
                    self._stale_sweep = False
                    self._apply(_Loaded(await self._database.run(_fetch(_LOAD_SWEEP)), with_reboots=False))
                elif self._stale_reboots:
                    slave = next(iter(self._stale_reboots))
                    del self._stale_reboots[slave]
                    rows = await self._database.run(_fetch(_LOAD_REBOOT, (slave,)))
                    if rows:
                        self._reboots[slave] = float(rows[0][0])
                    else:
                        self._reboots.pop(slave, None)
                else:
                    return
                self._changed()
        except (DatabaseUnavailable, ValueError, TypeError, KeyError) as error:
            # Whatever else changed meanwhile is unknown: the next notification reloads everything.
            self._stale_everything = True
            self._log.warn(
                "health: could not reload the verdicts (until the next change): {reason}",
                reason=str(error).splitlines()[0] if str(error) else type(error).__name__,
            )

    def _changed(self) -> None:
        """Memory was reloaded from the database (tests wait on this)."""

    def _apply(self, loaded: _Loaded) -> None:
        self._records = loaded.records
        self._last_sweep = loaded.last_sweep
        if loaded.reboots is not None:
            self._reboots = loaded.reboots


class SweepLease:
    """
    A named lease in the C{leases} table: at most one holder at a time
    until it expires.

    @param holder: who takes it (the instance's name).
    @param reactor: its clock gives the times (a C{Clock} in tests).
    """

    def __init__(self, database: Database, holder: str, reactor: Any) -> None:
        self._database = database
        self.holder = holder
        self._reactor = reactor

    def take(self, name: str, seconds: float) -> Deferred[bool]:
        """
        Take the lease C{name} for C{seconds} from now, if it is free, expired
        or already ours (that renews it); whether it is ours now.

        @raise DatabaseUnavailable: (as a failure) when the database cannot say.
        """
        now = self._reactor.seconds()
        params = (name, self.holder, now + seconds, now, self.holder)

        async def take(connection: AsyncConnection[Any]) -> bool:
            cursor = await connection.execute(_TAKE_LEASE, params)
            return await cursor.fetchone() is not None

        return self._database.run(take)

    def release(self, name: str) -> Deferred[None]:
        """Give the lease C{name} up, if it is ours."""

        async def release(connection: AsyncConnection[Any]) -> None:
            await connection.execute(_RELEASE_LEASE, (name, self.holder))

        return self._database.run(release)
