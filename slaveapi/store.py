"""
Persistence of action results, so that no result is lost across restarts.

Reads are served from memory (every result of this process is held there);
every write goes through to SQLite on one dedicated thread, so the reactor
never waits on the disk and writes reach the database in the order they were
made. A finished result is on disk before anybody is told it finished.

L{IResultStore} is the small surface the rest of the service uses, so that a
PostgreSQL store for several instances can be dropped in later.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from slaveapi.results import FAILURE, PENDING, RUNNING, ActionResult

#: Text given to an action that was pending or running when the service
#: stopped; the progress it had reached is appended.
INTERRUPTED_TEXT = "Interrupted by a restart of SlaveAPI before it finished."


def interrupted_text(progress: str) -> str:
    """The text of a result a stop interrupted, with the progress it had reached."""
    return INTERRUPTED_TEXT + (f" Progress so far:\n{progress}" if progress else "")

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
"""

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
        """Record a new PENDING result with a fresh request id."""

    def save(result: ActionResult) -> Deferred[None]:
        """Persist C{result} as it is now."""

    def get(requestid: int) -> ActionResult | None:
        """The result with this request id, if any."""

    def find(slave: str | None = None, action: str | None = None) -> list[ActionResult]:
        """Results, oldest first, optionally only one slave's and one action's."""

    def prune(older_than: float) -> Deferred[int]:
        """Forget finished results that finished before C{older_than} (Unix seconds)."""


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


@implementer(IResultStore)
class SQLiteResultStore:
    """
    Results in one SQLite file, written on a single background thread.

    @param path: the database file; its directory must exist.
    """

    _log = Logger()

    def __init__(self, path: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.path = path
        self._reactor = reactor
        self._results: dict[int, ActionResult] = {}
        self._next_id = 1
        self._db: sqlite3.Connection | None = None
        self._writer = ThreadPool(minthreads=1, maxthreads=1, name="slaveapi-store")

    def open(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        interrupted = []
        for row in self._db.execute(
            "SELECT requestid, slave, action, state, text, request_timestamp,"
            " start_timestamp, finish_timestamp, client FROM results ORDER BY requestid"
        ):
            result = ActionResult(
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
            self._results[result.requestid] = result
            if result.state in (PENDING, RUNNING):
                interrupted.append(result)
        if self._results:
            self._next_id = max(self._results) + 1
        for result in interrupted:
            result.text = interrupted_text(result.text if isinstance(result.text, str) else "")
            result.state = FAILURE
            result.finish_timestamp = int(self._reactor.seconds())
            self._db.execute(_UPSERT, _row(result))
            self._log.warn(
                "Result {requestid} ({action} of {slave}) was interrupted by a restart",
                requestid=result.requestid,
                action=result.action,
                slave=result.slave,
            )
        self._writer.start()

    def close(self) -> Deferred[None]:
        def _finish() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        d: Deferred[None] = self._write(_finish)
        d.addBoth(lambda passthrough: (self._writer.stop(), passthrough)[1])
        return d

    def _write(self, work: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._writer, work, *args)

    def _upsert(self, row: tuple[Any, ...]) -> None:
        assert self._db is not None, "store is closed"
        self._db.execute(_UPSERT, row)

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
        self._results[requestid] = result
        return self._write(self._upsert, _row(result)).addCallback(lambda _: result)

    def save(self, result: ActionResult) -> Deferred[None]:
        self._results[result.requestid] = result
        return self._write(self._upsert, _row(result))

    def get(self, requestid: int) -> ActionResult | None:
        return self._results.get(requestid)

    def prune(self, older_than: float) -> Deferred[int]:
        expired = [
            requestid
            for requestid, result in self._results.items()
            if result.is_done() and result.finish_timestamp < older_than
        ]
        for requestid in expired:
            del self._results[requestid]

        def delete() -> None:
            assert self._db is not None, "store is closed"
            self._db.executemany("DELETE FROM results WHERE requestid = ?", [(r,) for r in expired])

        if expired:
            self._log.info("Pruned {count} results finished before {when}", count=len(expired), when=int(older_than))
        return self._write(delete).addCallback(lambda _: len(expired))

    def find(self, slave: str | None = None, action: str | None = None) -> list[ActionResult]:
        return [
            result
            for result in self._results.values()
            if (slave is None or result.slave == slave) and (action is None or result.action == action)
        ]


def default_store_path(data_dir: str) -> str:
    """Where the results database lives under C{--data}."""
    return os.path.join(data_dir, "slaveapi-results.sqlite")
