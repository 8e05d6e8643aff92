"""
The store reads results from SQLite, never from memory: what readers get is
what is committed, nothing is kept per result, and pages in request-id order
are stable while results are added.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Sized
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import MAX_REQUESTID, ResultQuery, SQLiteResultStore

_OLD_SCHEMA = """
CREATE TABLE results (requestid INTEGER PRIMARY KEY, slave TEXT NOT NULL, action TEXT NOT NULL,
    state INTEGER NOT NULL, text TEXT NOT NULL, request_timestamp INTEGER NOT NULL,
    start_timestamp INTEGER NOT NULL, finish_timestamp INTEGER NOT NULL, client TEXT);
CREATE INDEX results_by_slave_action ON results (slave, action);
"""


async def _result(store: SQLiteResultStore, slave: str, action: str, state: int = SUCCESS) -> int:
    """A result of C{action} for C{slave} in C{state}, written; its request id."""
    result = await store.create(slave, action, None)
    if state != PENDING:
        result.state, result.text = state, f"{slave} {action}"
        await store.save(result)
    return result.requestid


def _ids(results: list[ActionResult]) -> list[int]:
    return [result.requestid for result in results]


@pytest_twisted.ensureDeferred
async def test_a_created_result_is_read_at_once_from_the_database(store: SQLiteResultStore) -> None:
    created = await store.create("bld-1", "reboot", "dashboard")
    shown = store.get(created.requestid)
    assert shown is not None and shown is not created
    assert shown == created
    assert _ids(store.find(slave="bld-1", action="reboot")) == [created.requestid]
    assert _ids(store.page(ResultQuery(slave="bld-1"))) == [created.requestid]


@pytest_twisted.ensureDeferred
async def test_readers_see_committed_rows_only(store: SQLiteResultStore) -> None:
    mine = await _result(store, "bld-1", "reboot", RUNNING)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("""INSERT INTO results VALUES (9000, 'bld-2', 'reboot', 2, '"x"', 1, 1, 1, NULL)""")
        other.execute("UPDATE results SET state = 2, text = '\"done\"' WHERE requestid = ?", (mine,))
        # Written but not committed: no reader sees any of it.
        assert store.get(9000) is None
        assert store.get(mine).state == RUNNING
        assert _ids(store.find()) == [mine]
        assert _ids(store.page(ResultQuery(state=SUCCESS))) == []
        assert [result.requestid for result in store.each()] == [mine]
        other.execute("COMMIT")
    finally:
        other.close()
    # Committed (by anyone): every read now sees it, with nothing to refresh.
    assert store.get(9000).slave == "bld-2"
    assert (store.get(mine).state, store.get(mine).text) == (SUCCESS, "done")
    assert _ids(store.page(ResultQuery(state=SUCCESS))) == [mine, 9000]


@pytest_twisted.ensureDeferred
async def test_the_store_keeps_no_result_in_memory(store: SQLiteResultStore) -> None:
    count = 60
    for number in range(count):
        await _result(store, f"memo-{number % 3}", "reboot", SUCCESS if number % 2 else FAILURE)
    gc.collect()
    # No attribute of the store is a collection that grew with the results...
    sizes = {
        name: len(value)
        for name, value in vars(store).items()
        if isinstance(value, Sized) and not isinstance(value, str)
    }
    assert all(size < count for size in sizes.values()), sizes
    # ...and none of these results is alive once the test holds none (other tests' may be: their names differ).
    alive = [obj for obj in gc.get_objects() if isinstance(obj, ActionResult) and obj.slave.startswith("memo-")]
    assert alive == []
    # Yet every one of them is there, read from the database.
    assert len(store.find()) == count


@pytest_twisted.ensureDeferred
async def test_get_returns_a_new_object_each_time(store: SQLiteResultStore) -> None:
    requestid = await _result(store, "bld-1", "reboot")
    first, second = store.get(requestid), store.get(requestid)
    assert first == second and first is not second
    assert store.get(requestid + 1) is None
    assert store.get(MAX_REQUESTID + 1) is None
    assert store.get(-1) is None


@pytest_twisted.ensureDeferred
async def test_page_filters(store: SQLiteResultStore) -> None:
    a = await _result(store, "bld-1", "reboot", SUCCESS)
    b = await _result(store, "bld-1", "buildslave_uptime", FAILURE)
    c = await _result(store, "bld-2", "reboot", RUNNING)
    d = await _result(store, "bld-2", "reboot", PENDING)
    assert _ids(store.page(ResultQuery())) == [a, b, c, d]
    assert _ids(store.page(ResultQuery(slave="bld-1"))) == [a, b]
    assert _ids(store.page(ResultQuery(action="reboot"))) == [a, c, d]
    assert _ids(store.page(ResultQuery(slave="bld-2", action="reboot"))) == [c, d]
    assert _ids(store.page(ResultQuery(state=FAILURE))) == [b]
    assert _ids(store.page(ResultQuery(state=PENDING))) == [d]
    assert _ids(store.page(ResultQuery(after_requestid=b))) == [c, d]
    assert _ids(store.page(ResultQuery(limit=2))) == [a, b]
    assert _ids(store.page(ResultQuery(action="reboot", after_requestid=a, limit=1))) == [c]
    stamp = store.get(a).request_timestamp
    assert _ids(store.page(ResultQuery(requested_since=stamp))) == [a, b, c, d]
    assert _ids(store.page(ResultQuery(requested_since=stamp + 3600))) == []
    assert _ids(store.page(ResultQuery(slave="bld-3"))) == []


@pytest_twisted.ensureDeferred
async def test_paging_is_stable_while_results_are_added(store: SQLiteResultStore) -> None:
    expected = [await _result(store, f"bld-{n % 2}", "reboot") for n in range(7)]
    seen: list[int] = []
    after: int | None = None
    while True:
        page = store.page(ResultQuery(action="reboot", after_requestid=after, limit=3))
        if not page:
            break
        seen.extend(_ids(page))
        after = page[-1].requestid
        if len(expected) < 13:
            # New results arrive between the pages: each shows up once, at the end.
            expected.append(await _result(store, "bld-9", "reboot"))
            await _result(store, "bld-9", "buildslave_uptime")  # not in this listing
    assert seen == expected
    assert len(set(seen)) == len(seen)


@pytest_twisted.ensureDeferred
async def test_each_gives_every_result_by_slave_action_and_requestid(store: SQLiteResultStore) -> None:
    a = await _result(store, "bld-2", "reboot")
    b = await _result(store, "bld-1", "reboot")
    c = await _result(store, "bld-1", "buildslave_uptime")
    d = await _result(store, "bld-2", "reboot")
    assert [(r.slave, r.action, r.requestid) for r in store.each()] == [
        ("bld-1", "buildslave_uptime", c),
        ("bld-1", "reboot", b),
        ("bld-2", "reboot", a),
        ("bld-2", "reboot", d),
    ]


@pytest_twisted.ensureDeferred
async def test_an_older_database_gets_the_indexes_and_pages_use_them(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.close()
    store = SQLiteResultStore(path, reactor)
    store.open()
    try:
        await _result(store, "bld-1", "reboot")
        db = sqlite3.connect(path)
        try:
            indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            plan = " ".join(
                str(row[3])
                for row in db.execute(
                    "EXPLAIN QUERY PLAN SELECT * FROM results WHERE slave = ? AND action = ? AND requestid > ?"
                    " ORDER BY requestid LIMIT 100",
                    ("bld-1", "reboot", 0),
                )
            )
        finally:
            db.close()
        assert {
            "results_by_slave_action",
            "results_by_action",
            "results_by_state",
            "results_by_request_timestamp",
        } <= indexes
        assert "USING INDEX results_by_slave_action" in plan
        assert "TEMP B-TREE" not in plan
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_restart_recovery_and_reads_after_it(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    first = SQLiteResultStore(path, reactor)
    first.open()
    done = await _result(first, "bld-1", "reboot", SUCCESS)
    running = await _result(first, "bld-1", "reboot", RUNNING)
    pending = await _result(first, "bld-2", "reboot", PENDING)
    await first.close()

    second = SQLiteResultStore(path, reactor)
    second.open()
    try:
        assert _ids(second.page(ResultQuery(state=FAILURE))) == [running, pending]
        assert _ids(second.page(ResultQuery(state=RUNNING))) == []
        assert second.get(done).state == SUCCESS
        assert (await second.create("bld-3", "reboot", None)).requestid == pending + 1
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_finished_results_are_added_in_one_go_with_fresh_ids(store: SQLiteResultStore) -> None:
    before = await _result(store, "bld-1", "reboot")
    batch = [
        ActionResult(slave="bld-2", action="reboot", requestid=0, state=SUCCESS, text="ok", finish_timestamp=5),
        ActionResult(slave="bld-3", action="reboot", requestid=0, state=FAILURE, text="no", finish_timestamp=6),
    ]
    ids = await store.add_finished(batch)
    assert ids == [before + 1, before + 2]
    added = store.page(ResultQuery(after_requestid=before))
    assert [(r.slave, r.text) for r in added] == [("bld-2", "ok"), ("bld-3", "no")]
    assert (await store.create("bld-4", "reboot", None)).requestid == before + 3
