"""
What only the PostgreSQL results store has: joining a single-flight request
in flight through any instance, writes fenced by the instance that runs a
result, notifications of each write, schema migrations, and a database that
cannot be reached. (What both stores share is in test_store_contract.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from slaveapi.coordination import Created
from slaveapi.postgres import (
    Database,
    DatabaseSchemaTooNew,
    DatabaseSettings,
    PostgreSQLResultStore,
)
from slaveapi.postgres._database import as_deferred
from slaveapi.postgres._results import without_password
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS
from slaveapi.store import ResultTakenOver, StepRecord, StoreUnavailable, StoreUnreadable
from slaveapi.testing import ThrowawayPostgres

T = TypeVar("T")

#: Seconds a test waits for a notification before it fails (a bound, never a measure).
_WAIT = 30.0


def _later(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    """An asyncio coroutine, awaitable from a Twisted-driven test."""
    return as_deferred(coroutine)


async def _sql(url: str, statement: str, values: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own; the rows it returns, if any."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(statement, values)
        return await cursor.fetchall() if cursor.description else []


def _store(url: str, instance: str = "one") -> PostgreSQLResultStore:
    return PostgreSQLResultStore(Database(DatabaseSettings(url=url)), instance, reactor)


@pytest_twisted.async_yield_fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[PostgreSQLResultStore, PostgreSQLResultStore]]:
    """Two instances' stores on one database."""
    first, second = _store(postgres_url, "one"), _store(postgres_url, "two")
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_of_one_single_flight_action_through_two_instances_join(
    two: tuple[PostgreSQLResultStore, PostgreSQLResultStore],
) -> None:
    first, second = two
    made: list[Created] = await gatherResults(
        [
            first.create_or_join("bld-1", "reboot", "a", {"reason": "x"}, True),
            second.create_or_join("BLD-1", "reboot", "b", {}, True),
            first.create_or_join("Bld-1", "reboot", "c", {}, True),
        ]
    )
    assert len({created.result.requestid for created in made}) == 1
    assert sorted(created.joined for created in made) == [False, True, True]
    (owner,) = [created.result for created in made if not created.joined]
    assert all(created.result == owner for created in made)
    assert len(await first.find()) == 1


@pytest_twisted.ensureDeferred
async def test_a_single_flight_request_after_the_first_finished_is_new(
    two: tuple[PostgreSQLResultStore, PostgreSQLResultStore],
) -> None:
    first, second = two
    running = (await first.create_or_join("bld-1", "reboot", None, {}, True)).result
    running.state = RUNNING
    await first.save(running)
    joined = await second.create_or_join("bld-1", "reboot", None, {}, True)
    assert joined.joined and joined.result.requestid == running.requestid and joined.result.state == RUNNING
    running.state, running.finish_timestamp = SUCCESS, running.request_timestamp + 1
    await first.save(running)
    fresh = await second.create_or_join("bld-1", "reboot", None, {}, True)
    assert not fresh.joined and fresh.result.requestid > running.requestid


@pytest_twisted.ensureDeferred
async def test_requests_that_are_not_single_flight_never_join(
    two: tuple[PostgreSQLResultStore, PostgreSQLResultStore],
) -> None:
    first, second = two
    made = [
        await first.create_or_join("bld-1", "buildslave_uptime", None, {}, False),
        await second.create_or_join("bld-1", "buildslave_uptime", None, {}, False),
    ]
    assert [created.joined for created in made] == [False, False]
    assert made[0].result.requestid < made[1].result.requestid
    # Another machine's, or another action's, flight is its own.
    a = await first.create_or_join("bld-1", "reboot", None, {}, True)
    b = await first.create_or_join("bld-2", "reboot", None, {}, True)
    c = await first.create_or_join("bld-1", "shutdown_buildslave", None, {}, True)
    assert not (a.joined or b.joined or c.joined)


@pytest_twisted.ensureDeferred
async def test_a_result_another_instance_took_over_is_not_overwritten(
    postgres_url: str, two: tuple[PostgreSQLResultStore, PostgreSQLResultStore]
) -> None:
    first, second = two
    result = await first.create("bld-1", "reboot", None)
    result.state = RUNNING
    # Not the second instance's to write.
    with pytest.raises(ResultTakenOver, match=f"request {result.requestid} is no longer this instance's"):
        await second.save(result)
    await _later(_sql(postgres_url, "UPDATE results SET instance = 'two' WHERE requestid = %s", (result.requestid,)))
    with pytest.raises(ResultTakenOver, match="another instance finished or took it over"):
        await first.save(result)
    stored = await first.get(result.requestid)
    assert stored is not None and stored.state == PENDING


@pytest_twisted.ensureDeferred
async def test_a_result_failover_finished_is_not_overwritten(
    postgres_url: str, two: tuple[PostgreSQLResultStore, PostgreSQLResultStore]
) -> None:
    first, _second = two
    result = await first.create("bld-1", "reboot", None)
    await _later(
        _sql(
            postgres_url,
            """UPDATE results SET state = 3, text = '"Interrupted"' WHERE requestid = %s""",
            (result.requestid,),
        )
    )
    result.state, result.text = SUCCESS, "done"
    with pytest.raises(ResultTakenOver):
        await first.save(result)
    stored = await first.get(result.requestid)
    assert stored is not None and (stored.state, stored.text) == (FAILURE, "Interrupted")


@pytest_twisted.ensureDeferred
async def test_writing_the_final_state_again_is_no_change(
    two: tuple[PostgreSQLResultStore, PostgreSQLResultStore],
) -> None:
    first, _second = two
    result = await first.create("bld-1", "reboot", None)
    result.state, result.text, result.finish_timestamp = SUCCESS, "done", result.request_timestamp
    await first.save(result)
    await first.save(result)
    result.text = "changed"
    with pytest.raises(ResultTakenOver):
        await first.save(result)
    assert await first.get(result.requestid) == dataclasses.replace(result, text="done")


@pytest_twisted.ensureDeferred
async def test_creates_and_saves_are_announced(postgres_url: str) -> None:
    store = _store(postgres_url, "one")
    await store.open()
    listening = Database(DatabaseSettings(url=postgres_url))
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    try:
        await _later(listening.open())
        listener = listening.listen(
            ["slaveapi_results"], lambda channel, payload: heard.put_nowait((channel, payload)), lambda: None
        )
        await _later(asyncio.wait_for(listener.listening.wait(), _WAIT))
        result = await store.create("bld-1", "reboot", None)
        assert await _later(asyncio.wait_for(heard.get(), _WAIT)) == (
            "slaveapi_results",
            f"{result.requestid} {PENDING} one",
        )
        result.state = RUNNING
        await store.save(result)
        assert await _later(asyncio.wait_for(heard.get(), _WAIT)) == (
            "slaveapi_results",
            f"{result.requestid} {RUNNING} one",
        )
        joined = await store.create_or_join("bld-2", "reboot", None, {}, True)
        assert (await _later(asyncio.wait_for(heard.get(), _WAIT)))[1] == f"{joined.result.requestid} {PENDING} one"
        # Joining writes nothing, so announces nothing; the next write is the next notice.
        await store.create_or_join("bld-2", "reboot", None, {}, True)
        last = await store.create("bld-3", "reboot", None)
        assert (await _later(asyncio.wait_for(heard.get(), _WAIT)))[1] == f"{last.requestid} {PENDING} one"
    finally:
        await _later(listening.close())
        await store.close()


@pytest_twisted.ensureDeferred
async def test_opening_again_migrates_nothing(postgres_url: str) -> None:
    for _ in range(2):
        store = _store(postgres_url)
        await store.open()
        await store.create("bld-1", "reboot", None)
        await store.close()
    assert await _later(_sql(postgres_url, "SELECT version FROM schema_version")) == [(1,)]
    assert await _later(_sql(postgres_url, "SELECT count(*) FROM results")) == [(2,)]


@pytest_twisted.ensureDeferred
async def test_a_database_a_newer_slaveapi_migrated_is_refused_in_one_line(postgres_url: str) -> None:
    migrated = _store(postgres_url)
    await migrated.open()
    await migrated.close()
    await _later(_sql(postgres_url, "INSERT INTO schema_version (version) VALUES (999)"))
    store = _store(postgres_url)
    try:
        with pytest.raises(DatabaseSchemaTooNew) as refused:
            await store.open()
    finally:
        await store.close()
    message = str(refused.value)
    assert isinstance(refused.value, StoreUnreadable)
    assert "\n" not in message
    assert "version 999" in message and "(1)" in message
    assert without_password(postgres_url) in message
    password = psycopg.conninfo.conninfo_to_dict(postgres_url)["password"]
    assert isinstance(password, str) and password and password not in message


@pytest_twisted.ensureDeferred
async def test_a_database_that_cannot_be_reached_fails_open_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed.
    settings = DatabaseSettings(
        url=f"postgresql://slaveapi@127.0.0.1:{port}/slaveapi",
        password="very-secret-password",
        connect_timeout=2,
    )
    store = PostgreSQLResultStore(Database(settings), "one", reactor)
    try:
        with pytest.raises(StoreUnavailable) as failed:
            await store.open()
    finally:
        await store.close()
    assert "cannot connect to the database" in str(failed.value)
    assert "very-secret-password" not in str(failed.value)


@pytest_twisted.ensureDeferred
async def test_a_row_that_cannot_be_decoded_is_named(postgres_url: str) -> None:
    store = _store(postgres_url)
    await store.open()
    try:
        result = await store.create("bld-1", "reboot", None)
        await _later(
            _sql(postgres_url, "UPDATE results SET text = 'not json' WHERE requestid = %s", (result.requestid,))
        )
        with pytest.raises(StoreUnavailable, match=f"stored result {result.requestid} is malformed"):
            await store.get(result.requestid)
        with pytest.raises(StoreUnavailable, match=f"stored result {result.requestid} is malformed"):
            await store.find()
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_prune_removes_the_fields_and_steps_of_what_it_forgets(postgres_url: str) -> None:
    store = _store(postgres_url)
    await store.open()
    try:
        gone = await store.create("bld-1", "reboot", None, {"reason": "old"})
        kept = await store.create("bld-1", "reboot", None, {"reason": "new"})
        for result, finished in ((gone, 10), (kept, 1000)):
            await store.save_step(result.requestid, 0, StepRecord("Rebooting", 1.0, 2.0, "Success!"))
            result.state, result.finish_timestamp = SUCCESS, finished
            await store.save(result)
        assert await store.prune(100) == 1
        for table in ("results", "result_fields", "steps"):
            assert await _later(_sql(postgres_url, f"SELECT requestid FROM {table}")) == [(kept.requestid,)]  # noqa: S608
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_added_finished_results_get_fresh_ids_in_order(postgres_url: str) -> None:
    store = _store(postgres_url)
    await store.open()
    try:
        first = await store.create("bld-1", "reboot", None)
        made = [await store.get(first.requestid)]
        assert made[0] is not None
        finished = [dataclasses.replace(made[0], text=f"done {n}") for n in range(3)]
        for result in finished:
            result.state, result.finish_timestamp = SUCCESS, 5
        ids = await store.add_finished(finished)
        assert ids == sorted(ids) and ids[0] > first.requestid and len(set(ids)) == 3
        assert [r.text for r in await store.find()] == ["", "done 0", "done 1", "done 2"]
        assert await store.add_finished([]) == []
        with pytest.raises(ValueError, match="only finished results"):
            store.add_finished([first])
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_close_waits_for_the_writes_in_progress(postgres_url: str) -> None:
    store = _store(postgres_url)
    await store.open()
    creating = [store.create(f"bld-{n}", "reboot", None) for n in range(5)]
    written: list[Any] = []
    for d in creating:
        d.addCallback(written.append)
    await store.close()
    assert len(written) == 5
    reopened = _store(postgres_url)
    await reopened.open()
    try:
        assert sorted(r.requestid for r in await reopened.find()) == sorted(r.requestid for r in written)
    finally:
        await reopened.close()


@pytest_twisted.ensureDeferred
async def test_names_sort_byte_by_byte_whatever_the_databases_locale(postgres_server: ThrowawayPostgres) -> None:
    name = f"icu_{uuid.uuid4().hex}"
    try:
        await _later(
            _sql(
                postgres_server.url("postgres"),
                f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0",
            )
        )
    except psycopg.Error as error:
        if os.environ.get("CI") == "true":  # Debian's PostgreSQL is built with ICU: CI must run this
            pytest.fail(f"this PostgreSQL has no ICU collations: {error}")
        pytest.skip(f"this PostgreSQL has no ICU collations: {error}")
    store = _store(postgres_server.url(name))
    await store.open()
    try:
        # en-US would put "bld-2" first; SQLite (and so this store) compares bytes: "B" < "b".
        for slave in ("bld-2", "Bld-3", "bld1"):
            await store.create(slave, "reboot", None)
        assert [r.slave for r in await store.each_chunk(None, 10)] == ["Bld-3", "bld-2", "bld1"]
        assert [r.slave for r in await store.each_chunk(("Bld-3", "reboot", 0), 10)] == ["Bld-3", "bld-2", "bld1"]
        assert [r.slave for r in await store.each_chunk(("bld-2", "reboot", 2**40), 10)] == ["bld1"]
    finally:
        await store.close()


class _HeldDatabase(Database):
    """Holds its works from the C{hold}th on until the test releases them (a slow connection)."""

    def __init__(self, settings: DatabaseSettings) -> None:
        super().__init__(settings)
        self.hold_from: int | None = None
        self.count = 0
        self.release = asyncio.Event()

    async def execute(self, work: Any) -> Any:
        self.count += 1
        if self.hold_from is not None and self.count == self.hold_from:
            await self.release.wait()
        return await super().execute(work)


@pytest_twisted.ensureDeferred
async def test_writes_of_one_request_are_made_in_the_order_asked_even_when_the_first_is_slow(
    postgres_url: str,
) -> None:
    database = _HeldDatabase(DatabaseSettings(url=postgres_url))
    store = PostgreSQLResultStore(database, "one", reactor)
    await store.open()
    try:
        result = await store.create("bld-1", "reboot", None)
        result.state, result.text = RUNNING, "Attempting SSH reboot..."
        database.hold_from = database.count + 1
        progress = store.save(result)  # held on its connection
        result.state, result.text, result.finish_timestamp = SUCCESS, "Success!", result.request_timestamp + 5
        final = store.save(result)
        other = await store.create("bld-2", "reboot", None)  # another request's write goes on meanwhile
        assert not progress.called and not final.called
        database.release.set()
        await progress
        await final
        shown = await store.get(result.requestid)
        assert shown is not None and (shown.state, shown.text) == (SUCCESS, "Success!")
        assert (await store.get(other.requestid)) is not None
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_reads_go_through_the_readers_pool_and_writes_never_do(postgres_url: str) -> None:
    reader = _HeldDatabase(DatabaseSettings(url=postgres_url))
    store = PostgreSQLResultStore(Database(DatabaseSettings(url=postgres_url)), "one", reactor, reader=reader)
    await store.open()
    try:
        result = await store.create("bld-1", "reboot", None, {"force": "yes"})
        result.state = RUNNING
        await store.save(result)
        await store.save_step(result.requestid, 0, StepRecord("Attempting SSH reboot", 1.0))
        assert reader.count == 0
        shown = await store.get(result.requestid)
        assert shown is not None and shown.state == RUNNING
        assert [found.requestid for found in await store.find(slave="bld-1")] == [result.requestid]
        (entry,) = await store.history("bld-1", None, 10)
        assert (entry.fields, [step.heading for step in entry.steps]) == ({"force": "yes"}, ["Attempting SSH reboot"])
        assert reader.count == 5  # get, find, and history's three reads
    finally:
        await store.close()
