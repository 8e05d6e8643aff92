"""
Where verdicts live, so that they survive a restart.

L{IHealthStore} is the small surface the health loop and the web layer use,
so that a store shared by several instances (PostgreSQL,
L{slaveapi.postgres._health}) can replace L{SQLiteHealthStore}. That one keeps its own SQLite file beside the
results database (C{slaveapi-health.sqlite} under C{--data}, 0600): one row
per machine (its latest record), when the last sweep ended, and when the
loop last rebooted each machine (so C{[health] min_reboot_interval} holds
across restarts). A store that could not be opened says why
(L{IHealthStore.unavailable}): the web answers 503 with that, rather
than serving a fleet of C{unknown} verdicts.

The table is small (one row a machine) and read on every C{GET /health}:
the store reads it once when opened and then answers from memory, which it
updates as it writes. Writes go to the file on one thread of their own, in
order, one transaction a sweep, so the reactor never waits on the disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from slaveapi.datadir import create_private_file
from slaveapi.health._verdict import Evidence, HealthRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    name TEXT PRIMARY KEY,
    verdict TEXT NOT NULL,
    evidence TEXT NOT NULL,
    since REAL,
    checked_at REAL,
    pool TEXT
);
CREATE TABLE IF NOT EXISTS reboots (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    key TEXT PRIMARY KEY,
    finished_at REAL NOT NULL
);
"""

_UPSERT_VERDICT = """
INSERT INTO verdicts (name, verdict, evidence, since, checked_at, pool) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET verdict = excluded.verdict, evidence = excluded.evidence,
    since = excluded.since, checked_at = excluded.checked_at, pool = excluded.pool
"""
_UPSERT_SWEEP = (
    "INSERT INTO sweeps (key, finished_at) VALUES ('last', ?)"
    " ON CONFLICT (key) DO UPDATE SET finished_at = excluded.finished_at"
)
_UPSERT_REBOOT = "INSERT INTO reboots (name, at) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET at = excluded.at"
_DELETE_REBOOT = "DELETE FROM reboots WHERE name = ?"
_DELETE_VERDICT = "DELETE FROM verdicts WHERE name = ?"


class HealthStoreError(Exception):
    """The health database cannot be read or written; the message names the file and why."""


class IHealthStore(Interface):
    """Where verdicts, the last sweep's time and the loop's reboots are kept."""

    def open() -> Deferred[None] | None:
        """
        Read what was stored (raises L{HealthStoreError}): at once (C{None}),
        or by the time the Deferred it returns fires (a L{HealthStoreError}
        failure when it could not).
        """

    def unavailable() -> str | None:
        """Why the store cannot answer (not opened, or it could not be), or C{None} when it can."""

    def close() -> Deferred[None]:
        """Finish pending writes and release the database."""

    def get(name: str) -> HealthRecord | None:
        """The latest record of the machine C{name} (canonical), if it was ever checked."""

    def records() -> dict[str, HealthRecord]:
        """Every stored record, by machine name (a copy)."""

    def last_sweep() -> float | None:
        """When the last sweep ended (Unix seconds), or C{None}."""

    def save_sweep(records: Iterable[HealthRecord], finished_at: float, forget: Iterable[str] = ()) -> Deferred[None]:
        """Store a sweep's records and its end, and drop the records of C{forget}, in one transaction."""

    def last_reboots() -> dict[str, float]:
        """When the loop last submitted a reboot of each machine (a copy)."""

    def record_reboot(name: str, at: float) -> Deferred[None]:
        """Remember that the loop submitted a reboot of C{name} at C{at}."""

    def forget_reboot(name: str, previous: float | None) -> Deferred[None]:
        """Undo L{record_reboot}: C{name}'s last reboot is C{previous} again (C{None}: none)."""


class RememberedHealth:
    """
    What a health store answers from at once: the verdicts by machine name,
    the last sweep's end and the loop's reboots, in memory. Each store
    (SQLite, PostgreSQL) writes them through to its database.
    """

    def __init__(self) -> None:
        self._records: dict[str, HealthRecord] = {}
        self._reboots: dict[str, float] = {}
        self._last_sweep: float | None = None

    def get(self, name: str) -> HealthRecord | None:
        return self._records.get(name)

    def records(self) -> dict[str, HealthRecord]:
        return dict(self._records)

    def last_sweep(self) -> float | None:
        return self._last_sweep

    def last_reboots(self) -> dict[str, float]:
        return dict(self._reboots)

    def _remember_sweep(
        self, records: Iterable[HealthRecord], finished_at: float, forget: Iterable[str]
    ) -> tuple[list[HealthRecord], list[str]]:
        """
        Keep a sweep's C{records} and end, and drop C{forget}'s records,
        before its write is made; the records and names, as lists.
        """
        chosen, forgotten = list(records), list(forget)
        for record in chosen:
            self._records[record.name] = record
        for name in forgotten:
            self._records.pop(name, None)
        self._last_sweep = finished_at
        return chosen, forgotten


def _row(record: HealthRecord) -> tuple[Any, ...]:
    evidence = json.dumps([item.to_json() for item in record.evidence])
    return (record.name, record.verdict, evidence, record.since, record.checked_at, record.pool)


def _record(row: tuple[Any, ...]) -> HealthRecord:
    name, verdict, evidence, since, checked_at, pool = row
    return HealthRecord(
        name=name,
        verdict=verdict,
        evidence=tuple(Evidence.from_json(item) for item in json.loads(evidence)),
        since=since,
        checked_at=checked_at,
        pool=pool,
    )


def encode_record(record: HealthRecord) -> str:
    """C{record} but its name as one JSON text, for a store that keeps it in one column."""
    _, verdict, evidence, since, checked_at, pool = _row(record)
    return json.dumps(
        {"verdict": verdict, "evidence": json.loads(evidence), "since": since, "checked_at": checked_at, "pool": pool}
    )


def decode_record(name: str, text: str) -> HealthRecord:
    """The record L{encode_record} gave C{text} for (C{ValueError}, C{TypeError} or C{KeyError} if it is not one)."""
    fields = json.loads(text)
    evidence = json.dumps(fields["evidence"])
    return _record((name, fields["verdict"], evidence, fields["since"], fields["checked_at"], fields["pool"]))


@implementer(IHealthStore)
class SQLiteHealthStore(RememberedHealth):
    """Verdicts in one SQLite file, answered from memory and written on a thread of their own."""

    def __init__(self, path: str, reactor: Any) -> None:
        super().__init__()
        self.path = path
        self._reactor = reactor
        self._db: sqlite3.Connection | None = None
        self._writer = ThreadPool(minthreads=1, maxthreads=1, name="slaveapi-health-store")
        self._unavailable: str | None = f"{path}: the health database is not open"

    def open(self) -> None:
        try:
            self._open()
        except HealthStoreError as error:
            self._unavailable = str(error)
            raise
        self._unavailable = None

    def unavailable(self) -> str | None:
        return self._unavailable

    def _open(self) -> None:
        try:
            create_private_file(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise HealthStoreError(f"{self.path}: cannot open the health database ({error})") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            rows = db.execute("SELECT name, verdict, evidence, since, checked_at, pool FROM verdicts").fetchall()
            self._records = {row[0]: _record(row) for row in rows}
            self._reboots = dict(db.execute("SELECT name, at FROM reboots").fetchall())
            last = db.execute("SELECT finished_at FROM sweeps WHERE key = 'last'").fetchall()
        except (sqlite3.Error, ValueError, TypeError, KeyError) as error:
            db.close()
            raise HealthStoreError(
                f"{self.path}: not a readable health database ({error}); move it aside to start afresh"
            ) from None
        self._last_sweep = last[0][0] if last else None
        self._db = db
        self._writer.start()

    def close(self) -> Deferred[None]:
        if not self._writer.started:
            return succeed(None)
        self._unavailable = f"{self.path}: the health database is closed"

        def finish() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def stop_writer(passthrough: Any) -> Any:
            self._writer.stop()
            return passthrough

        closing: Deferred[None] = self._write(finish)
        return closing.addBoth(stop_writer)

    def _write(self, work: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._writer, work, *args)

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        if self._db is None:
            raise sqlite3.ProgrammingError("the health store is closed")
        with self._db:
            for sql, values in statements:
                self._db.execute(sql, values)

    def save_sweep(
        self, records: Iterable[HealthRecord], finished_at: float, forget: Iterable[str] = ()
    ) -> Deferred[None]:
        chosen, forgotten = self._remember_sweep(records, finished_at, forget)
        statements = [(_UPSERT_VERDICT, _row(record)) for record in chosen]
        statements += [(_DELETE_VERDICT, (name,)) for name in forgotten]
        statements.append((_UPSERT_SWEEP, (finished_at,)))
        return self._write(self._transaction, statements)

    def record_reboot(self, name: str, at: float) -> Deferred[None]:
        self._reboots[name] = at
        return self._write(self._transaction, [(_UPSERT_REBOOT, (name, at))])

    def forget_reboot(self, name: str, previous: float | None) -> Deferred[None]:
        if previous is None:
            self._reboots.pop(name, None)
            return self._write(self._transaction, [(_DELETE_REBOOT, (name,))])
        return self.record_reboot(name, previous)


def default_health_path(data_dir: str) -> str:
    """Where the health database lives under C{--data}."""
    return os.path.join(data_dir, "slaveapi-health.sqlite")
