"""The SQLite results store: persistence across restarts, interrupted actions."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from slaveapi.results import FAILURE, RUNNING, SUCCESS, dictify_results
from slaveapi.store import INTERRUPTED_TEXT, SQLiteResultStore


@pytest_twisted.ensureDeferred
async def test_results_survive_a_restart(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    first = SQLiteResultStore(path, reactor)
    first.open()
    done = await first.create("bld-1", "buildslave_uptime", "dashboard")
    done.state, done.text, done.start_timestamp, done.finish_timestamp = SUCCESS, 1234, 10, 11
    await first.save(done)
    activity = await first.create("bld-1", "buildslave_last_activity", None)
    activity.state = SUCCESS
    activity.text = {"last_state": "ready", "last_activity_seconds": 5, "uptime": 900}
    await first.save(activity)
    await first.close()

    second = SQLiteResultStore(path, reactor)
    second.open()
    try:
        again = second.get(done.requestid)
        assert again is not None
        assert again.to_dict(include_requestid=True) == done.to_dict(include_requestid=True)
        assert again.client == "dashboard"
        assert second.get(activity.requestid).text == activity.text
        fresh = await second.create("bld-2", "buildslave_uptime", None)
        assert fresh.requestid > activity.requestid
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_unfinished_results_become_interrupted_failures(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    first = SQLiteResultStore(path, reactor)
    first.open()
    running = await first.create("bld-1", "buildslave_uptime", None)
    running.state, running.text = RUNNING, "Connecting over SSH..."
    await first.save(running)
    pending = await first.create("bld-2", "buildslave_uptime", None)
    await first.close()

    second = SQLiteResultStore(path, reactor)
    second.open()
    try:
        for requestid in (running.requestid, pending.requestid):
            result = second.get(requestid)
            assert result.state == FAILURE
            assert result.text.startswith(INTERRUPTED_TEXT)
            assert result.finish_timestamp > 0
        assert "Connecting over SSH..." in second.get(running.requestid).text
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_find_filters_by_slave_and_action(store: SQLiteResultStore) -> None:
    a = await store.create("bld-1", "buildslave_uptime", None)
    b = await store.create("bld-1", "buildslave_last_activity", None)
    c = await store.create("bld-2", "buildslave_uptime", None)
    assert [r.requestid for r in store.find(slave="bld-1")] == [a.requestid, b.requestid]
    assert [r.requestid for r in store.find(action="buildslave_uptime")] == [a.requestid, c.requestid]
    assert [r.requestid for r in store.find(slave="bld-2", action="buildslave_uptime")] == [c.requestid]
    nested = dictify_results(store.find())
    assert set(nested) == {"bld-1", "bld-2"}
    assert set(nested["bld-1"]) == {"buildslave_uptime", "buildslave_last_activity"}
    assert nested["bld-2"]["buildslave_uptime"][str(c.requestid)]["state"] == 0


@pytest_twisted.ensureDeferred
async def test_prune_forgets_only_old_finished_results(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    first = SQLiteResultStore(path, reactor)
    first.open()
    old = await first.create("bld-1", "reboot", None)
    old.state, old.finish_timestamp = SUCCESS, 1000
    await first.save(old)
    recent = await first.create("bld-1", "reboot", None)
    recent.state, recent.finish_timestamp = FAILURE, 5000
    await first.save(recent)
    running = await first.create("bld-2", "reboot", None)
    running.state = RUNNING
    await first.save(running)
    assert await first.prune(older_than=2000) == 1
    assert first.get(old.requestid) is None
    assert {r.requestid for r in first.find()} == {recent.requestid, running.requestid}
    await first.close()

    second = SQLiteResultStore(path, reactor)
    second.open()
    try:
        assert second.get(old.requestid) is None
        assert second.get(recent.requestid).text == recent.text
    finally:
        await second.close()


async def _finished(store: SQLiteResultStore, finish_timestamp: int) -> int:
    """Create a result that finished at C{finish_timestamp}; its request id."""
    result = await store.create("bld-1", "reboot", None)
    result.state, result.finish_timestamp = SUCCESS, finish_timestamp
    await store.save(result)
    return result.requestid


@pytest_twisted.ensureDeferred
async def test_request_ids_are_never_reused_after_every_result_was_pruned(tmp_path: Any) -> None:
    # EC2 loans use the id in their ClientToken: an id again would be the old loan again.
    path = str(tmp_path / "r.sqlite")
    first = SQLiteResultStore(path, reactor)
    first.open()
    handed_out = [await _finished(first, 1000) for _ in range(3)]
    assert await first.prune(older_than=2000) == 3
    assert first.find() == []
    after_prune = await first.create("bld-2", "reboot", None)
    assert after_prune.requestid > max(handed_out)
    handed_out.append(after_prune.requestid)
    after_prune.state, after_prune.finish_timestamp = SUCCESS, 1000
    await first.save(after_prune)
    assert await first.prune(older_than=2000) == 1
    await first.close()

    second = SQLiteResultStore(path, reactor)
    second.open()
    try:
        assert second.find() == []
        fresh = await second.create("bld-3", "reboot", None)
        assert fresh.requestid > max(handed_out)
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_a_database_from_before_the_high_water_mark_keeps_its_ids_used(tmp_path: Any) -> None:
    # A file the previous release made: a results table without AUTOINCREMENT and no meta table.
    path = str(tmp_path / "r.sqlite")
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE results (requestid INTEGER PRIMARY KEY, slave TEXT NOT NULL, action TEXT NOT NULL,
            state INTEGER NOT NULL, text TEXT NOT NULL, request_timestamp INTEGER NOT NULL,
            start_timestamp INTEGER NOT NULL, finish_timestamp INTEGER NOT NULL, client TEXT);
        INSERT INTO results VALUES (41, 'bld-1', 'reboot', 2, '"done"', 1, 1, 1000, NULL);
        INSERT INTO results VALUES (42, 'bld-1', 'reboot', 2, '"done"', 1, 1, 1000, NULL);
        """
    )
    old.close()

    first = SQLiteResultStore(path, reactor)
    first.open()
    assert await first.prune(older_than=2000) == 2
    await first.close()

    second = SQLiteResultStore(path, reactor)
    second.open()
    try:
        assert (await second.create("bld-1", "reboot", None)).requestid == 43
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_a_new_result_and_its_high_water_mark_are_written_together(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    store = SQLiteResultStore(path, reactor)
    store.open()
    try:
        created = await store.create("bld-1", "reboot", None)
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT value FROM meta WHERE key = 'last_requestid'").fetchone() == (created.requestid,)
        finally:
            db.close()
    finally:
        await store.close()
