"""
Persistence of action results, so that no result is lost across restarts.

Reads are served from memory; every write goes through to SQLite on one
dedicated thread, so the reactor never waits on the disk and writes reach the
database in the order they were made.

What readers see is only ever what is on disk. A result enters memory (and
so C{get}, C{find}, C{/results} and the answers) once its first row is
written, and each later change becomes visible once its row is written: the
object readers hold is updated from the row just written, never from the
caller's object, so an action that has finished but whose final row is not
yet durable is still shown as it was last recorded. (C{create} hands the
caller a copy of its own for that reason: the rule lives here, and no
caller has to remember not to show what is not written.) A write that fails
(disk full, I/O error) raises L{StoreUnavailable} and changes nothing that
readers see; the connection stays usable, so writes succeed again once the
disk has room.

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
cannot be known; from then on none is lost).

The database and its C{-wal} and C{-shm} files are private (0600): the
database file is created 0600 before SQLite opens it, and SQLite gives its
C{-wal} and C{-shm} files the database file's permissions.

L{IResultStore} is the small surface the rest of the service uses, so that a
PostgreSQL store for several instances can be dropped in later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from slaveapi.datadir import create_private_file
from slaveapi.results import FAILURE, PENDING, RUNNING, ActionResult

#: Text given to an action that was pending or running when the service
#: stopped; the progress it had reached is appended.
INTERRUPTED_TEXT = "Interrupted by a restart of SlaveAPI before it finished."


def interrupted_text(progress: str) -> str:
    """The text of a result a stop interrupted, with the progress it had reached."""
    return INTERRUPTED_TEXT + (f" Progress so far:\n{progress}" if progress else "")


class StoreUnavailable(Exception):
    """
    A write to the results store failed (disk full, I/O error); it may work
    later. The message is the reason, as the database gave it.
    """


class StoreUnreadable(Exception):
    """The results database cannot be read; the message is one line naming the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: not a readable SlaveAPI results database ({reason}); "
            "move it aside to start with an empty store, or restore it from a backup"
        )
        self.path = path


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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
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

_SELECT = (
    "SELECT requestid, slave, action, state, text, request_timestamp,"
    " start_timestamp, finish_timestamp, client FROM results ORDER BY requestid"
)

_UPSERT = """
INSERT INTO results (requestid, slave, action, state, text, request_timestamp,
                     start_timestamp, finish_timestamp, client)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (requestid) DO UPDATE SET
    state = excluded.state, text = excluded.text,
    start_timestamp = excluded.start_timestamp,
    finish_timestamp = excluded.finish_timestamp
"""


class IResultStore(Interface):
    """Where action results are kept."""

    def open() -> None:
        """Load what was stored; fail what a stop interrupted."""

    def close() -> Deferred[None]:
        """Finish pending writes and release the database."""

    def create(slave: str, action: str, client: str | None) -> Deferred[ActionResult]:
        """
        Record a new PENDING result with a fresh request id, higher than any
        handed out before (pruned ones included); it exists for readers once
        written. Fails with L{StoreUnavailable} if it could not be.

        @return: the caller's own copy: changes to it reach readers only
            through C{save}, once written.
        """

    def save(result: ActionResult) -> Deferred[None]:
        """
        Persist C{result} as it is now; readers see this state once it is
        written. Fails with L{StoreUnavailable} if it could not be.
        """

    def get(requestid: int) -> ActionResult | None:
        """The result with this request id, as last written, if any."""

    def find(slave: str | None = None, action: str | None = None) -> list[ActionResult]:
        """Results as last written, oldest first, optionally only one slave's and one action's."""

    def prune(older_than: float) -> Deferred[int]:
        """
        Forget finished results that finished before C{older_than} (Unix
        seconds); their request ids stay used.
        """


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
        db.executescript(_SCHEMA)
    except sqlite3.Error as error:
        db.close()
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    return db


def _recover(db: sqlite3.Connection, path: str, now: float, log: Logger) -> list[ActionResult]:
    """
    Every stored result, oldest first, after recording as failed those a stop
    interrupted (still pending or running).

    @raise StoreUnreadable: if a stored result cannot be read.
    @raise StoreUnavailable: if an interrupted one cannot be recorded.
    """
    try:
        results = [_from_row(row) for row in db.execute(_SELECT)]
    except (sqlite3.Error, ValueError, TypeError) as error:
        raise StoreUnreadable(path, _unreadable_reason(error)) from None
    for result in results:
        if result.state not in (PENDING, RUNNING):
            continue
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
    return results


def _high_water(db: sqlite3.Connection, path: str) -> int:
    """
    The highest request id ever written, as C{meta} records it (0 if it does not yet).

    @raise StoreUnreadable: if it cannot be read.
    """
    try:
        row = db.execute(_SELECT_HIGH_WATER).fetchone()
        return int(row[0]) if row is not None else 0
    except (sqlite3.Error, ValueError, TypeError) as error:
        raise StoreUnreadable(path, _unreadable_reason(error)) from None


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


@implementer(IResultStore)
class SQLiteResultStore:
    """
    Results in one SQLite file, written on a single background thread.

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
        self._results: dict[int, ActionResult] = {}
        self._next_id = 1
        self._db: sqlite3.Connection | None = None
        self._writer = ThreadPool(minthreads=1, maxthreads=1, name="slaveapi-store")

    def open(self) -> None:
        """
        @raise StoreUnreadable: if the database cannot be read.
        @raise StoreUnavailable: if the results a stop interrupted cannot be
            recorded as failed.
        """
        db = _open_database(self.path, self._connect)
        try:
            loaded = _recover(db, self.path, self._reactor.seconds(), self._log)
        except Exception:
            db.close()
            raise
        try:
            used = _high_water(db, self.path)
        except StoreUnreadable:
            db.close()
            raise
        self._db = db
        for result in loaded:
            self._results[result.requestid] = result
        # Never an id handed out before: pruned ones live on in the high-water mark.
        self._next_id = max([used, *self._results]) + 1
        self._writer.start()

    def close(self) -> Deferred[None]:
        if not self._writer.started:
            return succeed(None)

        def _finish() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def _stop_writer(passthrough: Failure | None) -> Failure | None:
            self._writer.stop()
            return passthrough

        d: Deferred[None] = self._write(_finish)
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

    def _insert(self, row: tuple[Any, ...]) -> None:
        """Write a new result and raise the high-water mark to its id, in one transaction."""
        db = self._open_db()

        def statements() -> None:
            db.execute(_UPSERT, row)
            db.execute(_RAISE_HIGH_WATER)

        _in_transaction(db, statements)

    def _write_row(
        self, row: tuple[Any, ...], what: str, write: Callable[[tuple[Any, ...]], None] | None = None
    ) -> Deferred[None]:
        """
        Write C{row} (by C{write}, default an upsert); a failure becomes
        L{StoreUnavailable}, logged once here.
        """

        def failed(failure: Failure) -> Failure:
            if not failure.check(sqlite3.Error):
                return failure
            reason = str(failure.value) or type(failure.value).__name__
            self._log.error(
                "[{slave} #{requestid} {action}] Could not write {what} to {path}: {reason}",
                slave=row[1],
                requestid=row[0],
                action=row[2],
                what=what,
                path=self.path,
                reason=reason,
            )
            return Failure(StoreUnavailable(reason))

        return self._write(write or self._upsert, row).addErrback(failed)

    def create(self, slave: str, action: str, client: str | None) -> Deferred[ActionResult]:
        requestid = self._next_id
        self._next_id += 1
        result = ActionResult(
            slave=slave,
            action=action,
            requestid=requestid,
            request_timestamp=int(self._reactor.seconds()),
            client=client,
        )

        def recorded(_: None) -> ActionResult:
            self._results[requestid] = result
            return dataclasses.replace(result)

        return self._write_row(_row(result), "the new request", self._insert).addCallback(recorded)

    def save(self, result: ActionResult) -> Deferred[None]:
        row = _row(result)
        return self._write_row(row, "the result").addCallback(lambda _: self._publish(row))

    def _publish(self, row: tuple[Any, ...]) -> None:
        """Show readers the state of C{row}, just written."""
        written = _from_row(row)
        shown = self._results.get(written.requestid)
        if shown is None:
            self._results[written.requestid] = written
            return
        shown.state = written.state
        shown.text = written.text
        shown.start_timestamp = written.start_timestamp
        shown.finish_timestamp = written.finish_timestamp

    def get(self, requestid: int) -> ActionResult | None:
        return self._results.get(requestid)

    def prune(self, older_than: float) -> Deferred[int]:
        expired = [
            requestid
            for requestid, result in self._results.items()
            if result.is_done() and result.finish_timestamp < older_than
        ]

        def delete() -> None:
            db = self._open_db()
            if not expired:
                return

            def statements() -> None:
                # Before the rows go: their ids must stay used.
                db.execute(_RAISE_HIGH_WATER)
                db.executemany("DELETE FROM results WHERE requestid = ?", [(r,) for r in expired])

            _in_transaction(db, statements)

        def deleted(_: None) -> int:
            for requestid in expired:
                self._results.pop(requestid, None)
            if expired:
                self._log.info(
                    "Pruned {count} results finished before {when}", count=len(expired), when=int(older_than)
                )
            return len(expired)

        return self._write(delete).addCallback(deleted)

    def find(self, slave: str | None = None, action: str | None = None) -> list[ActionResult]:
        return [
            result
            for result in self._results.values()
            if (slave is None or result.slave == slave) and (action is None or result.action == action)
        ]


def default_store_path(data_dir: str) -> str:
    """Where the results database lives under C{--data}."""
    return os.path.join(data_dir, "slaveapi-results.sqlite")
