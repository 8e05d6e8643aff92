"""The SQLite results store: persistence across restarts, interrupted actions."""

from __future__ import annotations

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
