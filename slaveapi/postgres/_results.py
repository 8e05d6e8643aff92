"""
Action results in PostgreSQL, shared by every SlaveAPI instance on the database.

L{PostgreSQLResultStore} provides L{IResultStore} and L{IResultReads} with
the SQLite store's semantics (same encoding of a row, same orders, same
paging filters), so that the rest of the service cannot tell them apart;
what differs is what several instances need:

  - request ids come from the C{requestids} sequence, so instances never
    hand out the same one and none is used twice, pruned or not;
  - each result records the instance that runs it (C{instance}), and a
    write of it is fenced: it only changes a result that is still this
    instance's and still pending or running. Once failover has recorded it
    as interrupted (or another instance took it over), a late write from
    this instance fails with L{ResultTakenOver} instead of overwriting
    what the others now see;
  - a new request for a single-flight action joins the one already pending
    or running on that machine, through whichever instance
    (L{PostgreSQLResultStore.create_or_join}, the body of
    L{slaveapi.coordination.ICluster.create}); the unique index on C{flight}
    decides which request came first;
  - every write of a result announces it on the C{slaveapi_results}
    channel in the same transaction, so that other instances hear of a
    change only once it is committed.

Opening the store migrates the schema (L{slaveapi.postgres._schema}); it
does not fail interrupted results, since with several instances a pending
result may be another, live instance's: that is failover's job.

Every statement is a constant (page filters are assembled from constant
fragments) and every value a parameter. Every database failure is
L{StoreUnavailable} with the database's one-line reason, never with the
password.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from psycopg import AsyncConnection
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.coordination import Created
from slaveapi.postgres._cluster import RESULTS_CHANNEL
from slaveapi.postgres._database import Database, DatabaseUnavailable, as_deferred
from slaveapi.postgres._schema import SchemaTooNew, migrate
from slaveapi.results import ActionResult
from slaveapi.store import (
    MAX_REQUESTID,
    HistoryEntry,
    IResultReads,
    IResultStore,
    ResultQuery,
    ResultTakenOver,
    StepRecord,
    StoreUnavailable,
    StoreUnreadable,
    _row,
    decode_results,
)

T = TypeVar("T")

#: Times L{PostgreSQLResultStore.create_or_join} tries to insert, then to
#: read the result it would join, while that result keeps finishing in between.
JOIN_ATTEMPTS = 5

#: Statements one write makes at most, to bound how long L{PostgreSQLResultStore.close} waits for it.
_STATEMENTS_PER_WRITE = 4

_COLUMNS = "requestid, slave, action, state, text, request_timestamp, start_timestamp, finish_timestamp, client"
_SELECT = f"SELECT {_COLUMNS} FROM results"  # noqa: S608

# flight is NULL for a request that does not join: it never conflicts.
# One statement (one round trip, its own transaction): the new row with a
# fresh id, its fields when there are any, and its announcement
# ("<requestid> <state> <instance>"); no row at all when its flight is taken.
_INSERT = """
WITH created AS (
    INSERT INTO results (requestid, slave, action, state, text, request_timestamp,
                         start_timestamp, finish_timestamp, client, instance, flight)
    VALUES (nextval('requestids'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (flight) WHERE flight IS NOT NULL DO NOTHING
    RETURNING requestid
), kept AS (
    INSERT INTO result_fields (requestid, fields)
    SELECT requestid, %s::text FROM created WHERE %s::text IS NOT NULL
)
SELECT requestid, pg_notify(%s, requestid::text || ' ' || %s) FROM created
"""
_SELECT_FLIGHT = f"{_SELECT} WHERE flight = %s"

# One statement, so one round trip and its own transaction: the fenced update
# and, for the row it changed, the announcement (none when it changed nothing).
_SAVE = """
WITH saved AS (
    UPDATE results SET state = %s, text = %s, start_timestamp = %s, finish_timestamp = %s,
        flight = CASE WHEN %s THEN NULL ELSE flight END
    WHERE requestid = %s AND instance = %s AND state IN (0, 1)
    RETURNING requestid
)
SELECT pg_notify(%s, %s) FROM saved
"""
_SELECT_WRITTEN = "SELECT state, text, start_timestamp, finish_timestamp, instance FROM results WHERE requestid = %s"

_UPSERT_STEP = """
INSERT INTO steps (requestid, n, heading, started, finished, outcome) VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (requestid, n) DO UPDATE SET
    heading = excluded.heading, started = excluded.started,
    finished = excluded.finished, outcome = excluded.outcome
"""

# Finished results (the results_finished index's predicate, state IN (2, 3)),
# their fields and steps first, in the same transaction.
_PRUNE_EXTRAS = tuple(
    f"""
DELETE FROM {table} WHERE requestid IN (
    SELECT requestid FROM results WHERE state IN (2, 3) AND finish_timestamp < %s
)
"""  # noqa: S608  # constants
    for table in ("result_fields", "steps")
)
_PRUNE = "DELETE FROM results WHERE state IN (2, 3) AND finish_timestamp < %s"

_NEXT_IDS = "SELECT nextval('requestids') FROM generate_series(1, %s)"
_INSERT_FINISHED = """
INSERT INTO results (requestid, slave, action, state, text, request_timestamp,
                     start_timestamp, finish_timestamp, client, instance, flight)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL)
"""

_GET = f"{_SELECT} WHERE requestid = %s"
# Page filters, in the order ResultQuery's fields are checked; LIMIT NULL is no limit.
_PAGE_SLAVE = "slave = %s"
_PAGE_ACTION = "action = %s"
_PAGE_STATE = "state = %s"
_PAGE_AFTER = "requestid > %s"
_PAGE_SINCE = "request_timestamp >= %s"
_PAGE_ORDER = " ORDER BY requestid LIMIT %s"

_EACH_FIRST = f"{_SELECT} ORDER BY slave, action, requestid LIMIT %s"
_EACH_NEXT = f"{_SELECT} WHERE (slave, action, requestid) > (%s, %s, %s) ORDER BY slave, action, requestid LIMIT %s"

_HISTORY = f"{_SELECT} WHERE slave = %s AND requestid < %s ORDER BY requestid DESC LIMIT %s"
_HISTORY_FIELDS = "SELECT requestid, fields FROM result_fields WHERE requestid = ANY(%s)"
_HISTORY_STEPS = (
    "SELECT requestid, n, heading, started, finished, outcome FROM steps WHERE requestid = ANY(%s)"
    " ORDER BY requestid, n"
)


class DatabaseSchemaTooNew(StoreUnreadable):
    """
    The database was migrated by a newer SlaveAPI than this one: the message
    is one line naming the database (without its password) and both versions.
    """

    def __init__(self, where: str, reason: str) -> None:
        Exception.__init__(self, f"{where}: {reason}")
        self.path = where


def without_password(url: str) -> str:
    """
    C{url} as it may be shown: a C{postgresql://} URL without the password in
    its user part or its query string; anything else as C{"the database"}.
    """
    if "://" not in url:
        return "the database"
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, host = netloc.rsplit("@", 1)
        netloc = f"{user_info.split(':', 1)[0]}@{host}"
    query = urllib.parse.urlencode(
        [
            (key, value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if key != "password"
        ]
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _page_sql(query: ResultQuery) -> tuple[str, list[Any]]:
    """C{query}'s statement (constant fragments only) and parameters, as the SQLite store's C{_page_sql}."""
    where: list[str] = []
    values: list[Any] = []
    for fragment, value in (
        (_PAGE_SLAVE, query.slave),
        (_PAGE_ACTION, query.action),
        (_PAGE_STATE, query.state),
        (_PAGE_AFTER, query.after_requestid),
        (_PAGE_SINCE, query.requested_since),
    ):
        if value is not None:
            where.append(fragment)
            values.append(value)
    condition = (" WHERE " + " AND ".join(where)) if where else ""
    values.append(None if query.limit < 0 else query.limit)
    return f"{_SELECT}{condition}{_PAGE_ORDER}", values


@implementer(IResultStore, IResultReads)
class PostgreSQLResultStore:
    """
    Results in a PostgreSQL database shared by several instances.

    @param database: the database (opened by L{open}, closed by L{close}).
    @param instance: this instance's name, unique among those sharing the
        database: recorded on each result it creates, and required of each
        result it saves.
    @param reactor: gives the time (C{seconds()}) results are requested at.
    """

    _log = Logger()

    def __init__(self, database: Database, instance: str, reactor: Any, reader: Database | None = None) -> None:
        self.instance = instance
        self.reads = self
        self._database = database
        # Reads go through a pool of their own when given one: a burst of writes queued for
        # connections must not make a reader wait behind it.
        self._reader = reader if reader is not None else database
        self._reactor = reactor
        self._writes: set[asyncio.Future[Any]] = set()
        # requestid -> its latest write not yet ended: the next write of that request waits for it.
        self._last_write: dict[int, asyncio.Future[Any]] = {}
        self._where = without_password(database.settings.url)

    # -- opening and closing ---------------------------------------------------------------

    def open(self) -> Deferred[None]:
        """
        Open the database and bring its schema up to date.

        Fails with L{StoreUnavailable} if the database cannot be reached,
        or with L{DatabaseSchemaTooNew} (a L{StoreUnreadable}) if a newer
        SlaveAPI migrated it.
        """
        return as_deferred(self._open())

    async def _open(self) -> None:
        try:
            await self._database.open()
        except DatabaseUnavailable as error:
            raise StoreUnavailable(str(error)) from None
        try:
            applied = await self._database.execute(migrate)
        except SchemaTooNew as error:
            await self._database.close()
            raise DatabaseSchemaTooNew(self._where, str(error)) from None
        except DatabaseUnavailable as error:
            await self._database.close()
            raise StoreUnavailable(str(error)) from None
        except BaseException:
            await self._database.close()
            raise
        if self._reader is not self._database:
            try:
                await self._reader.open()
            except DatabaseUnavailable as error:
                await self._database.close()
                raise StoreUnavailable(str(error)) from None
        if applied:
            self._log.info(
                "Migrated {database} to schema version {versions}",
                database=self._where,
                versions=", ".join(str(version) for version in applied),
            )

    def close(self) -> Deferred[None]:
        """Wait for the writes in progress (each bounded by the database's timeouts), then close the database."""
        return as_deferred(self._close())

    async def _close(self) -> None:
        if self._writes:
            settings = self._database.settings
            bound = settings.acquire_timeout + settings.statement_timeout * _STATEMENTS_PER_WRITE
            _done, pending = await asyncio.wait(set(self._writes), timeout=bound)
            if pending:
                self._log.warn(
                    "Closing {database} with {count} writes still in progress after {bound:g}s",
                    database=self._where,
                    count=len(pending),
                    bound=bound,
                )
        if self._reader is not self._database:
            await self._reader.close()
        await self._database.close()

    # -- plumbing --------------------------------------------------------------------------

    def _write(self, work: Coroutine[Any, Any, T], requestid: int | None = None) -> Deferred[T]:
        """
        Run the write C{work}, kept among the writes L{close} waits for until
        it ends. Writes of one C{requestid} are made in the order they were
        asked for (each waits for the one before, whatever its outcome), as
        the SQLite store's single writer makes them: on a pool, two writes
        could otherwise commit in either order (a progress report after the
        result it precedes). Writes of different requests go on at once.
        """
        before = self._last_write.get(requestid) if requestid is not None else None
        task = asyncio.ensure_future(_after(before, work))
        # A task cancelled before its first step never starts _after: its work must not linger unawaited.
        task.add_done_callback(lambda _: work.close())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        if requestid is not None:
            self._last_write[requestid] = task

            def forget(done: asyncio.Future[Any]) -> None:
                if self._last_write.get(requestid) is done:
                    del self._last_write[requestid]

            task.add_done_callback(forget)
        return Deferred.fromFuture(task)

    async def _execute(
        self, work: Callable[[AsyncConnection[Any]], Awaitable[T]], database: Database | None = None
    ) -> T:
        """
        C{work} on a pooled connection (of C{database}, by default the
        writers'); a L{DatabaseUnavailable} as L{StoreUnavailable}.
        """
        try:
            return await (database or self._database).execute(work)
        except DatabaseUnavailable as error:
            raise StoreUnavailable(str(error)) from None

    async def _rows(self, sql: str, values: tuple[Any, ...] | list[Any]) -> list[tuple[Any, ...]]:
        """The rows a read selects, on the readers' pool."""

        async def query(connection: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await connection.execute(sql, values)
            return await cursor.fetchall()

        return await self._execute(query, self._reader)

    async def _results(self, sql: str, values: tuple[Any, ...] | list[Any]) -> list[ActionResult]:
        """
        Every result C{sql} selects.

        @raise StoreUnavailable: if the database cannot be read, or a row
            cannot be decoded (named by its request id).
        """
        return decode_results(await self._rows(sql, values), self._where, self._log)

    def _notice(self, requestid: int, state: int) -> tuple[str, str]:
        return (RESULTS_CHANNEL, f"{requestid} {state} {self.instance}")

    # -- writes ----------------------------------------------------------------------------

    def create(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str] | None = None
    ) -> Deferred[ActionResult]:
        return self._write(self._create(slave, action, client, fields or {}))

    async def _create(self, slave: str, action: str, client: str | None, fields: Mapping[str, str]) -> ActionResult:
        created = await self._create_or_join(slave, action, client, fields, single_flight=False)
        return created.result

    def create_or_join(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str], single_flight: bool
    ) -> Deferred[Created]:
        """
        Record a new PENDING result run by this instance or, when
        C{single_flight} and the same action is pending or running on
        C{slave} (compared case-insensitively) through any instance, that
        result (C{joined}). Fails with L{StoreUnavailable}.
        """
        return self._write(self._create_or_join(slave, action, client, fields, single_flight))

    async def _create_or_join(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str], single_flight: bool
    ) -> Created:
        flight = f"{slave.lower()} {action}" if single_flight else None
        kept = json.dumps(dict(fields)) if fields else None
        for _attempt in range(JOIN_ATTEMPTS):
            result = ActionResult(
                slave=slave,
                action=action,
                requestid=0,
                request_timestamp=int(self._reactor.seconds()),
                client=client,
            )
            requestid = await self._insert(result, kept, flight)
            if requestid is not None:
                result.requestid = requestid
                return Created(result, joined=False)
            # The pending one may finish before it is read: then insert again.
            existing = await self._results(_SELECT_FLIGHT, (flight,))
            if existing:
                return Created(existing[0], joined=True)
        self._log.error(
            "[{slave} {action}] Could not create or join the request: the one in flight"
            " kept finishing in between, {attempts} times",
            slave=slave,
            action=action,
            attempts=JOIN_ATTEMPTS,
        )
        raise StoreUnavailable(
            f"could not create or join {action} on {slave}: the request in flight kept finishing"
            f" in between, {JOIN_ATTEMPTS} times"
        )

    async def _insert(self, result: ActionResult, fields: str | None, flight: str | None) -> int | None:
        """
        Insert C{result} with a fresh id, its C{fields} and its notice in one
        transaction: its id, or C{None} when C{flight} is already taken.
        """
        row = _row(result)

        async def insert(connection: AsyncConnection[Any]) -> int | None:
            cursor = await connection.execute(
                _INSERT,
                (*row[1:], self.instance, flight, fields, fields, RESULTS_CHANNEL, f"{result.state} {self.instance}"),
            )
            inserted = await cursor.fetchone()
            return None if inserted is None else int(inserted[0])

        try:
            return await self._execute(insert)
        except StoreUnavailable as error:
            self._log.error(
                "[{slave} {action}] Could not write the new request to {database}: {reason}",
                slave=result.slave,
                action=result.action,
                database=self._where,
                reason=str(error),
            )
            raise

    def save(self, result: ActionResult) -> Deferred[None]:
        """
        Write C{result} as it is now, if it is still this instance's and
        still pending or running (saving the state it already has again is
        no change, and succeeds); otherwise fails with L{ResultTakenOver} (a
        L{StoreUnavailable}). Fails with L{StoreUnavailable} when the
        database cannot be written.
        """
        # As it is now: the caller goes on changing its result while the write waits its turn.
        return self._write(self._save(dataclasses.replace(result)), result.requestid)

    async def _save(self, result: ActionResult) -> None:
        row = _row(result)
        written = (result.state, row[4], result.start_timestamp, result.finish_timestamp, self.instance)

        async def update(connection: AsyncConnection[Any]) -> bool:
            cursor = await connection.execute(
                _SAVE,
                (*written[:4], result.is_done(), result.requestid, self.instance, *self._notice(
                    result.requestid, result.state
                )),
            )
            if cursor.rowcount == 1:
                return True
            # Not changed: unless this very state is what is stored (a
            # retried write whose commit was not acknowledged), it is not ours.
            cursor = await connection.execute(_SELECT_WRITTEN, (result.requestid,))
            stored = await cursor.fetchone()
            return stored is not None and tuple(stored) == written

        try:
            saved = await self._execute(update)
        except StoreUnavailable as error:
            self._log.error(
                "[{slave} #{requestid} {action}] Could not write the result to {database}: {reason}",
                slave=result.slave,
                requestid=result.requestid,
                action=result.action,
                database=self._where,
                reason=str(error),
            )
            raise
        if not saved:
            self._log.error(
                "[{slave} #{requestid} {action}] Not recorded: the request is no longer this instance's"
                " ({instance}): another instance finished or took it over",
                slave=result.slave,
                requestid=result.requestid,
                action=result.action,
                instance=self.instance,
            )
            raise ResultTakenOver(
                f"request {result.requestid} is no longer this instance's: another instance finished or took it over"
            )

    def save_step(self, requestid: int, n: int, step: StepRecord) -> Deferred[None]:
        return self._write(self._save_step(requestid, n, step), requestid)

    async def _save_step(self, requestid: int, n: int, step: StepRecord) -> None:
        row = (requestid, n, step.heading, step.started, step.finished, step.outcome)

        async def upsert(connection: AsyncConnection[Any]) -> None:
            await connection.execute(_UPSERT_STEP, row)

        try:
            await self._execute(upsert)
        except StoreUnavailable as error:
            self._log.error(
                "[#{requestid}] Could not write step {n} to {database}: {reason}",
                requestid=requestid,
                n=n,
                database=self._where,
                reason=str(error),
            )
            raise

    def prune(self, older_than: float) -> Deferred[int]:
        return self._write(self._prune(older_than))

    async def _prune(self, older_than: float) -> int:
        async def delete(connection: AsyncConnection[Any]) -> int:
            async with connection.transaction():
                for statement in _PRUNE_EXTRAS:
                    await connection.execute(statement, (older_than,))
                cursor = await connection.execute(_PRUNE, (older_than,))
                return cursor.rowcount

        count = await self._execute(delete)
        if count:
            self._log.info("Pruned {count} results finished before {when}", count=count, when=int(older_than))
        return count

    def add_finished(self, results: Iterable[ActionResult]) -> Deferred[list[int]]:
        """
        Record results that have already finished (an import, a benchmark's
        fill) in one transaction: each gets a fresh request id, in order, and
        readers see all of them or, when the write fails (L{StoreUnavailable}),
        none. C{results} are not changed.

        @return: their request ids.
        @raise ValueError: (at once) if one of them has not finished.
        """
        rows: list[tuple[Any, ...]] = []
        for result in results:
            if not result.is_done():
                raise ValueError(f"only finished results can be added, not state {result.state}")
            rows.append(_row(result)[1:])
        return self._write(self._add_finished(rows))

    async def _add_finished(self, rows: list[tuple[Any, ...]]) -> list[int]:
        if not rows:
            return []

        async def insert(connection: AsyncConnection[Any]) -> list[int]:
            async with connection.transaction():
                cursor = await connection.execute(_NEXT_IDS, (len(rows),))
                ids = sorted(int(row[0]) for row in await cursor.fetchall())
                async with connection.cursor() as inserting:
                    await inserting.executemany(
                        _INSERT_FINISHED,
                        [(requestid, *row, self.instance) for requestid, row in zip(ids, rows, strict=True)],
                    )
            return ids

        try:
            return await self._execute(insert)
        except StoreUnavailable as error:
            self._log.error(
                "Could not add {count} results to {database}: {reason}",
                count=len(rows),
                database=self._where,
                reason=str(error),
            )
            raise

    # -- reads -----------------------------------------------------------------------------

    def get(self, requestid: int) -> Deferred[ActionResult | None]:
        return as_deferred(self._get(requestid))

    async def _get(self, requestid: int) -> ActionResult | None:
        if not 0 <= requestid <= MAX_REQUESTID:
            return None  # never handed out, and no bigint
        found = await self._results(_GET, (requestid,))
        return found[0] if found else None

    def find(self, slave: str | None = None, action: str | None = None) -> Deferred[list[ActionResult]]:
        return self.page(ResultQuery(slave=slave, action=action, limit=-1))

    def page(self, query: ResultQuery) -> Deferred[list[ActionResult]]:
        return as_deferred(self._page(query))

    async def _page(self, query: ResultQuery) -> list[ActionResult]:
        if query.after_requestid is not None and query.after_requestid >= MAX_REQUESTID:
            return []
        sql, values = _page_sql(query)
        return await self._results(sql, values)

    def each_chunk(self, after: tuple[str, str, int] | None, limit: int) -> Deferred[list[ActionResult]]:
        if after is None:
            return as_deferred(self._results(_EACH_FIRST, (limit,)))
        return as_deferred(self._results(_EACH_NEXT, (*after, limit)))

    def history(self, slave: str, before: int | None, limit: int) -> Deferred[list[HistoryEntry]]:
        return as_deferred(self._history(slave, before, limit))

    async def _history(self, slave: str, before: int | None, limit: int) -> list[HistoryEntry]:
        """Three reads, each of its own snapshot, as the SQLite store's."""
        bound = MAX_REQUESTID if before is None else min(before, MAX_REQUESTID)
        if bound <= 0 or limit <= 0:
            return []
        results = await self._results(_HISTORY, (slave, bound, limit))
        if not results:
            return []
        ids = [result.requestid for result in results]
        fields: dict[int, dict[str, str]] = {}
        for requestid, raw in await self._rows(_HISTORY_FIELDS, (ids,)):
            try:
                fields[requestid] = json.loads(raw)
            except ValueError as error:
                raise StoreUnavailable(f"stored result {requestid} has malformed fields: {error}") from None
        steps: dict[int, list[StepRecord]] = {}
        for requestid, _n, heading, started, finished, outcome in await self._rows(_HISTORY_STEPS, (ids,)):
            steps.setdefault(requestid, []).append(StepRecord(heading, started, finished, outcome))
        return [
            HistoryEntry(result, fields.get(result.requestid, {}), tuple(steps.get(result.requestid, ())))
            for result in results
        ]


async def _after(before: asyncio.Future[Any] | None, work: Coroutine[Any, Any, T]) -> T:
    """C{work}, once C{before} (if any) has ended, however it ended."""
    if before is not None:
        try:
            await asyncio.wait([before])
        except BaseException:
            work.close()  # cancelled before it began: it never runs
            raise
    return await work
