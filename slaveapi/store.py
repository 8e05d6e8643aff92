"""
Persistence of action results, so that no result is lost across restarts.

Results live only in SQLite: the store keeps no result in memory, finished
or not. Every write goes to the database on one dedicated thread, so the
reactor never waits on the disk and writes reach the database in the order
they were made. Every read (C{get}, C{find}, C{page}, C{each}) is a query on
a second, read-only connection used on the reactor thread itself. In WAL
mode a reader never waits for the writer (it reads the last committed
snapshot while the writer appends to the log), and a look-up by primary key
or by index takes microseconds: a hop to a thread and back would cost more
than the query, so reads are synchronous. The reader's busy timeout is 0
(SQLite's default would be 5 seconds), so a read never stalls the reactor
waiting for a lock: SQLite's own WAL retries cover the brief locks a
checkpoint takes, and a read that still finds the database busy raises
L{StoreUnavailable} at once (a 503 with C{Retry-After}). Every other read
error (C{sqlite3.Error}: a corrupt file, a closed store) is
L{StoreUnavailable} too, and so is a row that cannot be decoded (only an
edit of the file behind SlaveAPI's back makes one, since start-up checks
every row): its message names the request id, so that an operator can find it.

No read leaves a cursor open, so none can pin an old snapshot (which would
hide later commits from every later read on the connection): every read
fetches all its rows before returning, and C{each} reads in chunks, each
chunk a query of its own fetched whole.

What readers see is only ever what is on disk, by construction: they query
the database and nothing else. A result exists for readers once its first
row is committed, and each later change once its row is committed. C{create}
and C{save} fire their Deferreds only after the commit, so a result created
and then read at once on the reactor is found as written. A write that fails
(disk full, I/O error) is rolled back by SQLite, raises L{StoreUnavailable}
and changes nothing readers see; the connection stays usable, so writes
succeed again once the disk has room.

Memory does not grow with the number of results: no per-result object is
kept, and each connection's page cache is bounded (C{PRAGMA cache_size},
L{CACHE_KIB}). Reads go through indexes: C{(slave, action)}, C{(action)},
C{(slave)}, C{(state)} and C{(request_timestamp)}. Every SQLite index entry
ends with the row's id (C{requestid} is the C{INTEGER PRIMARY KEY}), so
C{(slave, action)} is in effect C{(slave, action, requestid)} and C{(state)}
is C{(state, requestid)}: a filtered page in request-id order is a range scan
of one index, without a sort (L{_page_sql} steers the planner to the index
whose order is request-id order; a test checks every filter's plan).
Indexes are created with C{IF NOT EXISTS}, so a database made by an older
release gets them when opened; the writer runs C{PRAGMA optimize} then.

The database runs in write-ahead-log mode with C{synchronous=FULL}: with
WAL, C{NORMAL} syncs only at checkpoints, so a commit that has returned can
still be lost in a power cut; C{FULL} syncs the log on every commit, so a
row that has been written is durable before anybody is told about it.

Request ids are never reused, not even once every result that had one was
pruned: they also key things outside SlaveAPI (the EC2 C{ClientToken} of a
loan, C{slaveapi-<requestid>-<name>}, is idempotent for EC2 for days). The
C{meta} table keeps the highest id ever written (C{last_requestid}), updated
in the same transaction as each new result and as each prune, and the next
id is one more than that or than any stored result, whichever is higher. A
database made before the table existed gets it when opened and goes on from
the ids its results still hold (ids an older release pruned without recording
cannot be known; from then on none is lost). Ids are handed out in the order
results are requested, so they only grow: paging by "after this request id"
is stable while results are added.

At start-up every stored row is read once (streamed, one at a time) to check
it can be read, and results a stop interrupted (still pending or running)
are recorded as failed.

The database and its C{-wal} and C{-shm} files are private (0600): the
database file is created 0600 before SQLite opens it, and SQLite gives its
C{-wal} and C{-shm} files the database file's permissions. The reader opens
the file read-only and creates nothing.

Each result also keeps, for its machine's history (C{GET
/slaves/<slave>/history}), the form fields it was asked with (only the
action's declared, non-secret ones: see L{slaveapi.actions.FormField}) as a
JSON object in the C{result_fields} table (its C{fields} column, keyed by
request id, written in the transaction that creates the result), and the
steps it went through in the C{steps} table, one row per step (C{(requestid,
n)}: its start, end and outcome), written through the same writer as the
result, so that a step is on disk before the result state that follows it.
The fields live beside C{results} rather than in a column of it so that the
C{results} row keeps its shape (tools and older releases insert whole rows).
A machine's history is read newest first through the C{(slave)} index (in
effect C{(slave, requestid)}), backwards, so a page is a range scan without a
sort; its fields and steps by their tables' primary keys. A database made by
an older release gets both tables when opened (its results then have no
fields and no steps). Pruning a result prunes its fields and steps.

L{IResultStore} (writes) and L{IResultReads} (reads, as Deferreds) are the
surface the rest of the service uses; the PostgreSQL store for several
instances (L{slaveapi.postgres}) provides the same. The SQLite store's own
reads (C{get}, C{find}, C{page}, C{each}, C{each_chunk}, C{history}) are
synchronous; L{SynchronousReads} hands them over as Deferreds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from slaveapi.datadir import create_private_file
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult

#: Text given to an action that was pending or running when the service
#: stopped; the progress it had reached is appended.
INTERRUPTED_TEXT = "Interrupted by a restart of SlaveAPI before it finished."

#: The highest request id SQLite can hold (a signed 64-bit integer).
MAX_REQUESTID = 2**63 - 1

#: KiB of page cache each of the store's two connections may use.
CACHE_KIB = 2048


def interrupted_text(progress: str) -> str:
    """The text of a result a stop interrupted, with the progress it had reached."""
    return INTERRUPTED_TEXT + (f" Progress so far:\n{progress}" if progress else "")


class StoreUnavailable(Exception):
    """
    A write to (or a read from) the results store failed (disk full, I/O
    error); it may work later. The message is the reason, as the database gave it.
    """


class ResultTakenOver(StoreUnavailable):
    """
    A result this instance ran was finished or taken over by another
    instance sharing the database (it had been declared stopped): the write
    was refused, and retrying cannot help.
    """


class StoreUnreadable(Exception):
    """The results database cannot be read; the message is one line naming the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: not a readable SlaveAPI results database ({reason}); "
            "move it aside to start with an empty store, or restore it from a backup"
        )
        self.path = path


@dataclass(frozen=True)
class ResultQuery:
    """
    Which results a page holds: every given filter must match.

    @ivar after_requestid: only results with a greater request id.
    @ivar requested_since: only results requested at or after this Unix
        second (request timestamps are kept to the second).
    @ivar limit: at most this many results, those with the lowest request ids.
    """

    slave: str | None = None
    action: str | None = None
    state: int | None = None
    after_requestid: int | None = None
    requested_since: int | None = None
    limit: int = 100


_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    requestid INTEGER PRIMARY KEY,
    slave TEXT NOT NULL,
    action TEXT NOT NULL,
    state INTEGER NOT NULL,
    text TEXT NOT NULL,
    request_timestamp INTEGER NOT NULL,
    start_timestamp INTEGER NOT NULL,
    finish_timestamp INTEGER NOT NULL,
    client TEXT
);
CREATE INDEX IF NOT EXISTS results_by_slave_action ON results (slave, action);
CREATE INDEX IF NOT EXISTS results_by_action ON results (action);
CREATE INDEX IF NOT EXISTS results_by_slave ON results (slave);
CREATE INDEX IF NOT EXISTS results_by_state ON results (state);
CREATE INDEX IF NOT EXISTS results_by_request_timestamp ON results (request_timestamp);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS result_fields (
    requestid INTEGER PRIMARY KEY,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    requestid INTEGER NOT NULL,
    n INTEGER NOT NULL,
    heading TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT,
    PRIMARY KEY (requestid, n)
) WITHOUT ROWID;
"""

#: The C{meta} key of the highest request id ever written.
_LAST_REQUESTID = "last_requestid"

# Raises the high-water mark to the highest id in results now (never lowers
# it). It takes no parameters: the id comes from the table itself, in the
# same transaction as the insert it follows or the delete it precedes.
# ("WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT.)
_RAISE_HIGH_WATER = f"""
INSERT INTO meta (key, value)
SELECT '{_LAST_REQUESTID}', coalesce(max(requestid), 0) FROM results WHERE true
ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)
"""  # noqa: S608  # interpolates a module constant, never input

_SELECT_HIGH_WATER = f"SELECT value FROM meta WHERE key = '{_LAST_REQUESTID}'"  # noqa: S608  # a constant

_COLUMNS = "requestid, slave, action, state, text, request_timestamp, start_timestamp, finish_timestamp, client"

_SELECT = f"SELECT {_COLUMNS} FROM results"  # noqa: S608  # a constant

# Every result by slave, action and request id, one chunk at a time: the first
# chunk, then those after a (slave, action, requestid) key. Both are range
# scans of the (slave, action) index, which is in effect (slave, action, requestid).
_EACH_SQL_FIRST = f"{_SELECT} ORDER BY slave, action, requestid LIMIT ?"
_EACH_SQL_NEXT = f"{_SELECT} WHERE (slave, action, requestid) > (?, ?, ?) ORDER BY slave, action, requestid LIMIT ?"

#: Results C{each} reads per query.
EACH_CHUNK = 1000

_SELECT_MAX_REQUESTID = "SELECT coalesce(max(requestid), 0) FROM results"

_UPSERT = """
INSERT INTO results (requestid, slave, action, state, text, request_timestamp,
                     start_timestamp, finish_timestamp, client)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (requestid) DO UPDATE SET
    state = excluded.state, text = excluded.text,
    start_timestamp = excluded.start_timestamp,
    finish_timestamp = excluded.finish_timestamp
"""

_DELETE_EXPIRED = f"DELETE FROM results WHERE state IN ({SUCCESS}, {FAILURE}) AND finish_timestamp < ?"  # noqa: S608  # constants
# Run before the results go, in the same transaction: what belongs to them.
_DELETE_EXPIRED_EXTRAS = tuple(
    f"""
DELETE FROM {table} WHERE requestid IN (
    SELECT requestid FROM results WHERE state IN ({SUCCESS}, {FAILURE}) AND finish_timestamp < ?
)
"""  # noqa: S608  # constants
    for table in ("result_fields", "steps")
)

_INSERT_FIELDS = "INSERT OR REPLACE INTO result_fields (requestid, fields) VALUES (?, ?)"

_UPSERT_STEP = """
INSERT INTO steps (requestid, n, heading, started, finished, outcome) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (requestid, n) DO UPDATE SET
    heading = excluded.heading, started = excluded.started,
    finished = excluded.finished, outcome = excluded.outcome
"""

# A machine's results newest first: the (slave) index, which is in effect
# (slave, requestid), read backwards from the bound (never the (slave, action)
# one, whose order would need a sort).
_HISTORY_SQL = (
    f"{_SELECT} INDEXED BY results_by_slave WHERE slave = ? AND requestid < ? ORDER BY requestid DESC LIMIT ?"
)
_HISTORY_FIELDS_SQL = "SELECT requestid, fields FROM result_fields WHERE requestid IN ({marks})"
_HISTORY_STEPS_SQL = (
    "SELECT requestid, n, heading, started, finished, outcome FROM steps WHERE requestid IN ({marks})"
    " ORDER BY requestid, n"
)


@dataclass(frozen=True)
class StepRecord:
    """
    One step of an action, for its machine's history.

    @ivar started: when it started (Unix seconds, from the reactor's clock).
    @ivar finished: when it ended; C{None} while it runs (or when it was
        cut short by a stop).
    @ivar outcome: what its status line said at its end (C{Success!},
        C{Failed: ...}); C{None} while it runs.
    """

    heading: str
    started: float
    finished: float | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """
    One result in a machine's history: the result, the declared non-secret
    form fields it was asked with, and its steps in order.
    """

    result: ActionResult
    fields: dict[str, str]
    steps: tuple[StepRecord, ...]


class IResultReads(Interface):
    """
    Reading results, for the web layer and the processor: each read is a
    Deferred, since a store may have to ask a database server over the
    network (the SQLite store answers at once, see L{SynchronousReads}).
    Each fails with L{StoreUnavailable} when the store cannot be read.
    """

    def get(requestid: int) -> Deferred[ActionResult | None]:
        """The result with this request id, as last written, if any: a new object on each call."""

    def find(slave: str | None = None, action: str | None = None) -> Deferred[list[ActionResult]]:
        """Results as last written, oldest first, optionally only one slave's and one action's."""

    def page(query: ResultQuery) -> Deferred[list[ActionResult]]:
        """Up to C{query.limit} results matching C{query}, in ascending request-id order."""

    def each_chunk(after: tuple[str, str, int] | None, limit: int) -> Deferred[list[ActionResult]]:
        """
        Up to C{limit} results by slave, then action, then request id: the
        first ones, or those after the key C{(slave, action, requestid)} C{after}.
        """

    def history(slave: str, before: int | None, limit: int) -> Deferred[list[HistoryEntry]]:
        """
        Up to C{limit} results of C{slave} with a request id below C{before}
        (all when C{None}), newest first, each with its fields and steps.
        """


class IResultStore(Interface):
    """
    Where action results are kept: writes here, reads through C{reads}.

    The SQLite store (one instance, the default) and the PostgreSQL store
    (L{slaveapi.postgres}, several instances on one database) both provide it.
    """

    reads = Attribute("The store's L{IResultReads}.")

    def open() -> Deferred[None] | None:
        """
        Check what was stored (and, for a store of one instance, fail what a
        stop interrupted); a Deferred when it has to wait for a server.
        """

    def close() -> Deferred[None]:
        """Finish pending writes and release the database."""

    def create(
        slave: str, action: str, client: str | None, fields: Mapping[str, str] | None = None
    ) -> Deferred[ActionResult]:
        """
        Record a new PENDING result with a fresh request id, higher than any
        handed out before (pruned ones included); it exists for readers once
        written, before the Deferred fires. Fails with L{StoreUnavailable} if
        it could not be.

        @param fields: the form fields to keep for the history (the caller
            leaves out secret ones).

        @return: the caller's own object: changes to it reach readers only
            through C{save}, once written.
        """

    def save(result: ActionResult) -> Deferred[None]:
        """
        Persist C{result} as it is now; readers see this state once it is
        written, before the Deferred fires. Fails with L{StoreUnavailable} if
        it could not be.
        """

    def prune(older_than: float) -> Deferred[int]:
        """
        Forget finished results that finished before C{older_than} (Unix
        seconds), and their steps; their request ids stay used.
        """

    def save_step(requestid: int, n: int, step: StepRecord) -> Deferred[None]:
        """
        Persist step C{n} (from 0) of request C{requestid} as it is now,
        after every write asked for before. Fails with L{StoreUnavailable}
        if it could not be.
        """


@implementer(IResultReads)
class SynchronousReads:
    """
    The L{IResultReads} of a store whose reads are synchronous (the SQLite
    store's): each read is made at once and its answer (or its
    L{StoreUnavailable}) handed over in an already-fired Deferred.
    """

    def __init__(self, store: SQLiteResultStore) -> None:
        self._store = store

    def get(self, requestid: int) -> Deferred[ActionResult | None]:
        return maybeDeferred(self._store.get, requestid)

    def find(self, slave: str | None = None, action: str | None = None) -> Deferred[list[ActionResult]]:
        return maybeDeferred(self._store.find, slave, action)

    def page(self, query: ResultQuery) -> Deferred[list[ActionResult]]:
        return maybeDeferred(self._store.page, query)

    def each_chunk(self, after: tuple[str, str, int] | None, limit: int) -> Deferred[list[ActionResult]]:
        return maybeDeferred(self._store.each_chunk, after, limit)

    def history(self, slave: str, before: int | None, limit: int) -> Deferred[list[HistoryEntry]]:
        return maybeDeferred(self._store.history, slave, before, limit)


def _row(result: ActionResult) -> tuple[Any, ...]:
    return (
        result.requestid,
        result.slave,
        result.action,
        result.state,
        json.dumps(result.text),
        result.request_timestamp,
        result.start_timestamp,
        result.finish_timestamp,
        result.client,
    )


def _from_row(row: tuple[Any, ...]) -> ActionResult:
    return ActionResult(
        requestid=row[0],
        slave=row[1],
        action=row[2],
        state=row[3],
        text=json.loads(row[4]),
        request_timestamp=row[5],
        start_timestamp=row[6],
        finish_timestamp=row[7],
        client=row[8],
    )


def decode_results(rows: Iterable[tuple[Any, ...]], where: str, log: Logger) -> list[ActionResult]:
    """
    Each stored row as a result.

    @raise StoreUnavailable: for a row that cannot be decoded (only an edit
        behind SlaveAPI's back makes one), logged with its request id and
        C{where} (the file or database), so that an operator can find it.
    """
    results: list[ActionResult] = []
    for row in rows:
        try:
            results.append(_from_row(row))
        except (ValueError, TypeError, IndexError) as error:
            log.error("Stored result {requestid} in {where} is malformed: {reason}", requestid=row[0], where=where,
                      reason=str(error))
            raise StoreUnavailable(f"stored result {row[0]} is malformed: {error}") from None
    return results


def _unreadable_reason(error: Exception) -> str:
    if isinstance(error, (ValueError, TypeError)):
        return f"a stored result is malformed: {error}"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _open_database(path: str, connect: Callable[..., sqlite3.Connection]) -> sqlite3.Connection:
    """The database at C{path}, created 0600 if missing, in WAL mode with every commit synced."""
    try:
        create_private_file(path)
        db = connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as error:
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.executescript(_SCHEMA)
        db.execute("PRAGMA optimize")
    except sqlite3.Error as error:
        db.close()
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    return db


def _open_reader(path: str, connect: Callable[..., sqlite3.Connection]) -> sqlite3.Connection:
    """
    A read-only connection (C{mode=ro}) to the database at C{path} (which the
    writer has opened, so it exists and is in WAL mode), with a bounded page
    cache and no busy timeout: a read that finds the database locked fails at
    once rather than stall the reactor.
    """
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        db = connect(uri, uri=True, timeout=0, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as error:
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    try:
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    except sqlite3.Error as error:
        db.close()
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    return db


def _recover(db: sqlite3.Connection, path: str, now: float, log: Logger) -> None:
    """
    Check that every stored result can be read (one row at a time, none
    kept), then record as failed those a stop interrupted (still pending or
    running).

    @raise StoreUnreadable: if a stored result cannot be read.
    @raise StoreUnavailable: if an interrupted one cannot be recorded.
    """
    interrupted: list[ActionResult] = []
    try:
        for row in db.execute(_SELECT):
            result = _from_row(row)
            if result.state in (PENDING, RUNNING):
                interrupted.append(result)
    except (sqlite3.Error, ValueError, TypeError) as error:
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    for result in interrupted:
        result.text = interrupted_text(result.text if isinstance(result.text, str) else "")
        result.state = FAILURE
        result.finish_timestamp = int(now)
        try:
            db.execute(_UPSERT, _row(result))
        except sqlite3.Error as error:
            raise StoreUnavailable(
                f"{path}: cannot record the results a restart interrupted ({error}); "
                "make room on the disk and start again"
            ) from None
        log.warn(
            "[{slave} #{requestid} {action}] Interrupted by a restart",
            requestid=result.requestid,
            action=result.action,
            slave=result.slave,
        )


def _high_water(db: sqlite3.Connection, path: str) -> int:
    """
    The highest request id ever used: the larger of what C{meta} records and
    the highest stored id (0 for an empty database).

    @raise StoreUnreadable: if it cannot be read.
    """
    try:
        rows = db.execute(_SELECT_HIGH_WATER).fetchall()
        recorded = int(rows[0][0]) if rows else 0
        stored = int(db.execute(_SELECT_MAX_REQUESTID).fetchall()[0][0])
    except (sqlite3.Error, ValueError, TypeError) as error:
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    return max(recorded, stored)


def _in_transaction(db: sqlite3.Connection, statements: Callable[[], None]) -> None:
    """
    Run C{statements} in one transaction: all of their changes are
    committed together, or (when one fails) none is.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        statements()
        db.execute("COMMIT")
    except BaseException:
        # On some errors SQLite has already ended the transaction: nothing to roll back.
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def prepare_store_file(
    path: str, now: float, log: Logger, connect: Callable[..., sqlite3.Connection] = sqlite3.connect
) -> None:
    """
    Open the database at C{path} once (creating it, 0600, if missing), record
    the results a stop interrupted, and close it: done at start-up before
    anything else starts (and before twistd forks, which an open SQLite
    connection must not cross), so that a database that cannot be used stops
    start-up with one line.

    @raise StoreUnreadable: if it is not a readable results database.
    @raise StoreUnavailable: if it cannot be written.
    """
    db = _open_database(path, connect)
    try:
        _recover(db, path, now, log)
    finally:
        db.close()


def _page_sql(query: ResultQuery) -> tuple[str, list[Any]]:
    """
    The statement and parameters of C{query}: only constant SQL, every value a parameter.

    Each page is read through the index whose order is already request-id
    order, so SQLite stops after C{limit} matches and never sorts: with
    C{slave} or C{action} given, that one's index (C{+state} and
    C{+request_timestamp}, whose unary C{+} keeps SQLite from using their
    index, are then checked row by row along it); with only C{state}, the
    C{(state)} index; with only a time, the request ids from the first one
    requested at or after it (found on the C{(request_timestamp)} index),
    checking each row's time, since ids and times need not grow together
    (L{SQLiteResultStore.add_finished} gives old results new ids; a clock
    can step back).
    """
    where: list[str] = []
    values: list[Any] = []
    by_name = query.slave is not None or query.action is not None
    for column, value in (("slave", query.slave), ("action", query.action)):
        if value is not None:
            where.append(f"{column} = ?")
            values.append(value)
    if query.state is not None:
        where.append("+state = ?" if by_name else "state = ?")
        values.append(query.state)
    if query.after_requestid is not None:
        where.append("requestid > ?")
        values.append(query.after_requestid)
    if query.requested_since is not None:
        if not by_name and query.state is None:
            where.append(
                "requestid >= (SELECT min(requestid) FROM results INDEXED BY results_by_request_timestamp"
                " WHERE request_timestamp >= ?)"
            )
            values.append(query.requested_since)
        where.append("+request_timestamp >= ?")
        values.append(query.requested_since)
    condition = (" WHERE " + " AND ".join(where)) if where else ""
    values.append(query.limit)
    return f"{_SELECT}{condition} ORDER BY requestid LIMIT ?", values


@implementer(IResultStore)
class SQLiteResultStore:
    """
    Results in one SQLite file, written on a single background thread and
    read on the reactor thread through a read-only connection.

    @param path: the database file; its directory must exist.
    @param connect: opens the database (L{sqlite3.connect}'s signature); a
        test may hand in connections whose writes fail.
    """

    _log = Logger()

    def __init__(
        self, path: str, reactor: Any = None, connect: Callable[..., sqlite3.Connection] = sqlite3.connect
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.path = path
        self._reactor = reactor
        self._connect = connect
        self._next_id = 1
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer = ThreadPool(minthreads=1, maxthreads=1, name="slaveapi-store")
        self.reads = SynchronousReads(self)

    def open(self) -> None:
        """
        @raise StoreUnreadable: if the database cannot be read.
        @raise StoreUnavailable: if the results a stop interrupted cannot be
            recorded as failed.
        """
        db = _open_database(self.path, self._connect)
        try:
            _recover(db, self.path, self._reactor.seconds(), self._log)
            # Never an id handed out before: pruned ones live on in the high-water mark.
            used = _high_water(db, self.path)
            reader = _open_reader(self.path, self._connect)
        except Exception:
            db.close()
            raise
        self._db = db
        self._reader = reader
        self._next_id = used + 1
        self._writer.start()

    def close(self) -> Deferred[None]:
        if not self._writer.started:
            return succeed(None)

        def _close_reader(passthrough: Any) -> Any:
            # Every write has been made; the writer closes last, so that it
            # can checkpoint the log into the database and remove it.
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            return passthrough

        def _finish() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def _stop_writer(passthrough: Failure | None) -> Failure | None:
            self._writer.stop()
            return passthrough

        d: Deferred[None] = self.flushed()
        d.addBoth(_close_reader)
        d.addBoth(lambda _: self._write(_finish))
        d.addBoth(_stop_writer)
        return d

    def flushed(self) -> Deferred[None]:
        """Fires once every write asked for before has been done (or has failed)."""
        return self._write(lambda: None)

    def _write(self, work: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._writer, work, *args)

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the results store is closed")
        return self._db

    def _upsert(self, row: tuple[Any, ...]) -> None:
        self._open_db().execute(_UPSERT, row)

    def _insert(self, row: tuple[Any, ...], fields: str | None = None) -> None:
        """
        Write a new result (with its form fields, as JSON, if any) and raise
        the high-water mark to its id, in one transaction.
        """
        db = self._open_db()

        def statements() -> None:
            db.execute(_UPSERT, row)
            if fields is not None:
                db.execute(_INSERT_FIELDS, (row[0], fields))
            db.execute(_RAISE_HIGH_WATER)

        _in_transaction(db, statements)

    def _write_row(
        self, row: tuple[Any, ...], what: str, write: Callable[[tuple[Any, ...]], None] | None = None
    ) -> Deferred[None]:
        """
        Write C{row} (by C{write}, default an upsert); a failure becomes
        L{StoreUnavailable}, logged once here.
        """

        return self._write(write or self._upsert, row).addErrback(
            self._unavailable,
            "[{slave} #{requestid} {action}] Could not write {what} to {path}: {reason}",
            slave=row[1],
            requestid=row[0],
            action=row[2],
            what=what,
        )

    def _unavailable(self, failure: Failure, /, format: str, **fields: Any) -> Failure:
        """
        A write's C{sqlite3.Error} as L{StoreUnavailable}, logged once with
        C{format} (given C{path}, C{reason} and C{fields}); other failures
        unchanged.
        """
        if not failure.check(sqlite3.Error):
            return failure
        reason = str(failure.value) or type(failure.value).__name__
        self._log.error(format, path=self.path, reason=reason, **fields)
        return Failure(StoreUnavailable(reason))

    def create(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str] | None = None
    ) -> Deferred[ActionResult]:
        requestid = self._next_id
        self._next_id += 1
        result = ActionResult(
            slave=slave,
            action=action,
            requestid=requestid,
            request_timestamp=int(self._reactor.seconds()),
            client=client,
        )
        row = _row(result)
        kept = json.dumps(dict(fields)) if fields else None

        def insert(row: tuple[Any, ...]) -> None:
            self._insert(row, kept)

        # Fires on the reactor once the row is committed: a read then finds it.
        return self._write_row(row, "the new request", insert).addCallback(lambda _: result)

    def save(self, result: ActionResult) -> Deferred[None]:
        return self._write_row(_row(result), "the result")

    def add_finished(self, results: Iterable[ActionResult]) -> Deferred[list[int]]:
        """
        Record results that have already finished (an import, a benchmark's
        fill) in one transaction: each gets a fresh request id, in order, and
        readers see all of them or, when the write fails (L{StoreUnavailable}),
        none. C{results} are not changed.

        @return: their request ids.
        """
        rows: list[tuple[Any, ...]] = []
        for result in results:
            if not result.is_done():
                raise ValueError(f"only finished results can be added, not state {result.state}")
            rows.append(_row(dataclasses.replace(result, requestid=self._next_id)))
            self._next_id += 1

        def insert() -> None:
            db = self._open_db()

            def statements() -> None:
                db.executemany(_UPSERT, rows)
                db.execute(_RAISE_HIGH_WATER)

            _in_transaction(db, statements)

        def failed(failure: Failure) -> Failure:
            if not failure.check(sqlite3.Error):
                return failure
            reason = str(failure.value) or type(failure.value).__name__
            self._log.error(
                "Could not add {count} results to {path}: {reason}", count=len(rows), path=self.path, reason=reason
            )
            return Failure(StoreUnavailable(reason))

        return self._write(insert).addCallbacks(lambda _: [row[0] for row in rows], failed)

    # -- reads: on the reactor thread, from what is committed -----------------------------------

    def _rows(self, sql: str, values: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        """
        Every row C{sql} selects, read to the end and the cursor closed
        whatever happens (which ends the read transaction at once, so that
        no snapshot outlives the call).

        @raise StoreUnavailable: if the database cannot be read (busy, I/O
            error, corrupt, closed).
        """
        try:
            if self._reader is None:
                raise sqlite3.ProgrammingError("the results store is closed")
            cursor = self._reader.execute(sql, values)
            try:
                return cursor.fetchall()
            finally:
                cursor.close()
        except sqlite3.Error as error:
            raise StoreUnavailable(str(error) or type(error).__name__) from None

    def _query(self, sql: str, values: tuple[Any, ...] | list[Any] = ()) -> list[ActionResult]:
        """
        Every result C{sql} selects (see L{_rows}).

        @raise StoreUnavailable: if the database cannot be read, or a row
            cannot be decoded (named by its request id).
        """
        return decode_results(self._rows(sql, values), self.path, self._log)

    def get(self, requestid: int) -> ActionResult | None:
        if not 0 <= requestid <= MAX_REQUESTID:
            return None  # never handed out, and SQLite could not take it as a parameter
        found = self._query(f"{_SELECT} WHERE requestid = ?", (requestid,))
        return found[0] if found else None

    def find(self, slave: str | None = None, action: str | None = None) -> list[ActionResult]:
        return self.page(ResultQuery(slave=slave, action=action, limit=-1))

    def page(self, query: ResultQuery) -> list[ActionResult]:
        sql, values = _page_sql(query)
        return self._query(sql, values)

    def history(self, slave: str, before: int | None, limit: int) -> list[HistoryEntry]:
        """
        Three reads, each of its own snapshot: a result written in between
        shows its fields and steps as they are at the later reads.
        """
        bound = MAX_REQUESTID if before is None else min(before, MAX_REQUESTID)
        results = self._query(_HISTORY_SQL, (slave, bound, limit)) if bound > 0 and limit > 0 else []
        if not results:
            return []
        ids = [result.requestid for result in results]
        marks = ", ".join("?" * len(ids))
        fields: dict[int, dict[str, str]] = {}
        for requestid, raw in self._rows(_HISTORY_FIELDS_SQL.format(marks=marks), ids):
            try:
                fields[requestid] = json.loads(raw)
            except ValueError as error:
                raise StoreUnavailable(f"stored result {requestid} has malformed fields: {error}") from None
        steps: dict[int, list[StepRecord]] = {}
        for requestid, _n, heading, started, finished, outcome in self._rows(
            _HISTORY_STEPS_SQL.format(marks=marks), ids
        ):
            steps.setdefault(requestid, []).append(StepRecord(heading, started, finished, outcome))
        return [
            HistoryEntry(result, fields.get(result.requestid, {}), tuple(steps.get(result.requestid, ())))
            for result in results
        ]

    def save_step(self, requestid: int, n: int, step: StepRecord) -> Deferred[None]:
        row = (requestid, n, step.heading, step.started, step.finished, step.outcome)

        def upsert() -> None:
            self._open_db().execute(_UPSERT_STEP, row)

        return self._write(upsert).addErrback(
            self._unavailable, "[#{requestid}] Could not write step {n} to {path}: {reason}", requestid=requestid, n=n
        )

    def each(self) -> Iterator[ActionResult]:
        """
        Every result, by slave, action and request id (the order of the
        C{(slave, action)} index), read L{EACH_CHUNK} at a time by
        L{each_chunk}: no cursor stays open between results, so a caller
        may stop half-way (or fail) without pinning a snapshot. Chunks are
        separate reads: a result written meanwhile shows as last written
        when its chunk is read; none is given twice.
        """
        after: tuple[str, str, int] | None = None
        while True:
            chunk = self.each_chunk(after, EACH_CHUNK)
            yield from chunk
            if len(chunk) < EACH_CHUNK:
                return
            last = chunk[-1]
            after = (last.slave, last.action, last.requestid)

    def each_chunk(self, after: tuple[str, str, int] | None, limit: int) -> list[ActionResult]:
        if after is None:
            return self._query(_EACH_SQL_FIRST, (limit,))
        return self._query(_EACH_SQL_NEXT, (*after, limit))

    def prune(self, older_than: float) -> Deferred[int]:
        def delete() -> int:
            db = self._open_db()
            deleted = 0

            def statements() -> None:
                nonlocal deleted
                # Before the rows go: their ids must stay used.
                db.execute(_RAISE_HIGH_WATER)
                for statement in _DELETE_EXPIRED_EXTRAS:
                    db.execute(statement, (older_than,))
                deleted = db.execute(_DELETE_EXPIRED, (older_than,)).rowcount

            _in_transaction(db, statements)
            return deleted

        def deleted(count: int) -> int:
            if count:
                self._log.info("Pruned {count} results finished before {when}", count=count, when=int(older_than))
            return count

        return self._write(delete).addCallback(deleted)


def default_store_path(data_dir: str) -> str:
    """Where the results database lives under C{--data}."""
    return os.path.join(data_dir, "slaveapi-results.sqlite")
