"""
One contract, both results stores: the SQLite store (one instance) and the
PostgreSQL store (several instances) must behave alike through
L{IResultStore} and its C{reads}, since the rest of the service cannot tell
which one it has. Each test runs against both.

Time comes from a proxy of the real reactor whose C{seconds()} the test
sets: the SQLite store needs the real reactor for its writer thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from slaveapi.postgres import Database, DatabaseSettings, PostgreSQLResultStore
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import (
    MAX_REQUESTID,
    HistoryEntry,
    IResultReads,
    IResultStore,
    ResultQuery,
    SQLiteResultStore,
    StepRecord,
)

_START = 1_700_000_000


class _Reactor:
    """The real reactor, but C{seconds()} is C{now}, which the test sets."""

    def __init__(self) -> None:
        self.now = float(_START)

    def seconds(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _Stores:
    """A store under test, and the clock its results are requested by."""

    def __init__(self, store: Any, clock: _Reactor) -> None:
        assert IResultStore.providedBy(store)
        assert IResultReads.providedBy(store.reads)
        self.store = store
        self.reads = store.reads
        self.clock = clock


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    """Which store, and where it keeps its results."""
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "results.sqlite"))
    return ("postgresql", request.getfixturevalue("postgres_url"))


@pytest_twisted.async_yield_fixture
async def stores(backend: tuple[str, str]) -> AsyncIterator[_Stores]:
    kind, where = backend
    clock = _Reactor()
    store: Any
    if kind == "sqlite":
        store = SQLiteResultStore(where, clock)
    else:
        store = PostgreSQLResultStore(Database(DatabaseSettings(url=where)), "contract", clock)
    opened = store.open()
    if opened is not None:
        await opened
    try:
        yield _Stores(store, clock)
    finally:
        await store.close()


def _ids(results: list[ActionResult]) -> list[int]:
    return [result.requestid for result in results]


async def _result(
    s: _Stores, slave: str, action: str, state: int = SUCCESS, at: int | None = None, finished: int | None = None
) -> ActionResult:
    """A result of C{action} for C{slave}, requested at C{at}, written in C{state}."""
    if at is not None:
        s.clock.now = at
    result: ActionResult = await s.store.create(slave, action, None)
    if state != PENDING:
        result.state = state
        result.text = f"{slave} {action}"
        result.start_timestamp = result.request_timestamp
        if state in (SUCCESS, FAILURE):
            result.finish_timestamp = finished if finished is not None else result.request_timestamp + 1
        await s.store.save(result)
    return result


@pytest_twisted.ensureDeferred
async def test_a_created_result_reads_back_as_written(stores: _Stores) -> None:
    stores.clock.now = _START + 5.7
    created = await stores.store.create("bld-1", "reboot", "dashboard", {"reason": "stuck"})
    assert created.state == PENDING
    assert created.request_timestamp == _START + 5
    assert created.client == "dashboard"
    read = await stores.reads.get(created.requestid)
    assert read == created and read is not created
    again = await stores.reads.get(created.requestid)
    assert again == created and again is not read


@pytest_twisted.ensureDeferred
async def test_ids_grow_and_are_never_used_again_after_a_prune(stores: _Stores) -> None:
    first = [await _result(stores, "bld-1", "reboot", SUCCESS, finished=_START + 1) for _ in range(3)]
    ids = _ids(first)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert await stores.store.prune(_START + 100) == 3
    assert await stores.reads.find() == []
    later = await stores.store.create("bld-1", "reboot", None)
    assert later.requestid > max(ids)


@pytest_twisted.ensureDeferred
async def test_a_saved_result_reads_back_with_every_field(stores: _Stores) -> None:
    result = await stores.store.create("bld-1", "buildslave_last_activity", "ops")
    result.state, result.start_timestamp, result.text = RUNNING, _START + 1, "working"
    await stores.store.save(result)
    assert await stores.reads.get(result.requestid) == result
    result.state, result.finish_timestamp = SUCCESS, _START + 2
    result.text = {"last_activity": 12, "nested": ["a", 1, None]}
    await stores.store.save(result)
    read = await stores.reads.get(result.requestid)
    assert read == result
    assert read.text == {"last_activity": 12, "nested": ["a", 1, None]}


@pytest_twisted.ensureDeferred
async def test_page_filters_in_request_id_order(stores: _Stores) -> None:
    a = await _result(stores, "bld-1", "reboot", SUCCESS, at=_START)
    b = await _result(stores, "bld-2", "reboot", FAILURE, at=_START + 10)
    c = await _result(stores, "bld-1", "shutdown_buildslave", RUNNING, at=_START + 20)
    d = await _result(stores, "bld-1", "reboot", PENDING, at=_START + 30)
    e = await _result(stores, "bld-2", "shutdown_buildslave", SUCCESS, at=_START + 40)
    page = stores.reads.page
    assert _ids(await page(ResultQuery())) == _ids([a, b, c, d, e])
    assert _ids(await page(ResultQuery(slave="bld-1"))) == _ids([a, c, d])
    assert _ids(await page(ResultQuery(action="reboot"))) == _ids([a, b, d])
    assert _ids(await page(ResultQuery(slave="bld-1", action="reboot"))) == _ids([a, d])
    assert _ids(await page(ResultQuery(state=SUCCESS))) == _ids([a, e])
    assert _ids(await page(ResultQuery(slave="bld-2", state=SUCCESS))) == _ids([e])
    assert _ids(await page(ResultQuery(after_requestid=b.requestid))) == _ids([c, d, e])
    assert _ids(await page(ResultQuery(requested_since=_START + 20))) == _ids([c, d, e])
    assert _ids(await page(ResultQuery(requested_since=_START + 21))) == _ids([d, e])
    assert _ids(await page(ResultQuery(action="reboot", requested_since=_START + 10))) == _ids([b, d])
    assert _ids(await page(ResultQuery(state=SUCCESS, requested_since=_START + 1))) == _ids([e])
    assert _ids(await page(ResultQuery(limit=2))) == _ids([a, b])
    assert _ids(await page(ResultQuery(after_requestid=a.requestid, limit=2))) == _ids([b, c])
    assert _ids(await page(ResultQuery(slave="bld-1", after_requestid=a.requestid, limit=1))) == _ids([c])
    assert await page(ResultQuery(limit=0)) == []
    assert await page(ResultQuery(slave="bld-9")) == []
    assert await page(ResultQuery(after_requestid=e.requestid)) == []
    assert await page(ResultQuery(after_requestid=MAX_REQUESTID)) == []
    assert _ids(await page(ResultQuery(after_requestid=-1))) == _ids([a, b, c, d, e])
    assert await page(ResultQuery(requested_since=_START + 41)) == []
    assert (await page(ResultQuery(slave="bld-1", state=RUNNING))) == [c]


@pytest_twisted.ensureDeferred
async def test_find_is_every_match_oldest_first(stores: _Stores) -> None:
    made = [await _result(stores, f"bld-{n % 2}", "reboot" if n % 3 else "shutdown_buildslave") for n in range(7)]
    assert _ids(await stores.reads.find()) == _ids(made)
    assert _ids(await stores.reads.find(slave="bld-0")) == [r.requestid for r in made if r.slave == "bld-0"]
    assert _ids(await stores.reads.find(action="reboot")) == [r.requestid for r in made if r.action == "reboot"]
    assert _ids(await stores.reads.find("bld-1", "reboot")) == [
        r.requestid for r in made if r.slave == "bld-1" and r.action == "reboot"
    ]
    assert await stores.reads.find("nobody") == []


@pytest_twisted.ensureDeferred
async def test_each_chunk_goes_by_slave_action_and_id_and_continues_after_a_key(stores: _Stores) -> None:
    # Byte order, as SQLite compares: capitals before small letters, "-" before digits.
    names = [("bld1", "reboot"), ("bld-2", "reboot"), ("Bld-3", "reboot"), ("bld-2", "buildslave_uptime")]
    made = [await _result(stores, slave, action) for slave, action in names + names]
    expected = sorted(made, key=lambda r: (r.slave, r.action, r.requestid))
    assert [r.slave for r in expected][:2] == ["Bld-3", "Bld-3"]
    everything = await stores.reads.each_chunk(None, 100)
    assert _ids(everything) == _ids(expected)
    assert everything == expected
    seen: list[ActionResult] = []
    after: tuple[str, str, int] | None = None
    while True:
        chunk = await stores.reads.each_chunk(after, 3)
        assert len(chunk) <= 3
        seen.extend(chunk)
        if len(chunk) < 3:
            break
        after = (chunk[-1].slave, chunk[-1].action, chunk[-1].requestid)
    assert _ids(seen) == _ids(expected)
    last = expected[-1]
    assert await stores.reads.each_chunk((last.slave, last.action, last.requestid), 10) == []


@pytest_twisted.ensureDeferred
async def test_history_is_newest_first_with_fields_and_steps(stores: _Stores) -> None:
    store = stores.store
    old = await store.create("bld-1", "reboot", None, {"reason": "first"})
    await store.save_step(old.requestid, 0, StepRecord("Rebooting over SSH", 10.5, 20.25, "Success!"))
    await store.save_step(old.requestid, 1, StepRecord("Waiting", 21.0))
    other = await store.create("bld-2", "reboot", None, {"reason": "elsewhere"})
    new = await store.create("bld-1", "shutdown_buildslave", None)
    history = await stores.reads.history("bld-1", None, 10)
    assert history == [
        HistoryEntry(new, {}, ()),
        HistoryEntry(
            old,
            {"reason": "first"},
            (StepRecord("Rebooting over SSH", 10.5, 20.25, "Success!"), StepRecord("Waiting", 21.0)),
        ),
    ]
    assert [entry.result.requestid for entry in await stores.reads.history("bld-1", None, 1)] == [new.requestid]
    assert [entry.result for entry in await stores.reads.history("bld-1", new.requestid, 10)] == [old]
    assert await stores.reads.history("bld-1", old.requestid, 10) == []
    assert [entry.fields for entry in await stores.reads.history("bld-2", None, 10)] == [{"reason": "elsewhere"}]
    assert other.requestid not in [entry.result.requestid for entry in history]


@pytest_twisted.ensureDeferred
async def test_save_step_replaces_the_step_with_the_same_number(stores: _Stores) -> None:
    result = await stores.store.create("bld-1", "reboot", None)
    await stores.store.save_step(result.requestid, 0, StepRecord("Rebooting", 1.0))
    await stores.store.save_step(result.requestid, 0, StepRecord("Rebooting", 1.0, 2.5, "Failed: no answer"))
    await stores.store.save_step(result.requestid, 1, StepRecord("Power cycling", 3.0))
    (entry,) = await stores.reads.history("bld-1", None, 10)
    assert entry.steps == (StepRecord("Rebooting", 1.0, 2.5, "Failed: no answer"), StepRecord("Power cycling", 3.0))


@pytest_twisted.ensureDeferred
async def test_prune_forgets_only_results_that_finished_before_the_time(stores: _Stores) -> None:
    store = stores.store
    old_done = await _result(stores, "bld-1", "reboot", SUCCESS, finished=_START + 10)
    old_failed = await _result(stores, "bld-1", "reboot", FAILURE, finished=_START + 20)
    recent = await _result(stores, "bld-1", "reboot", SUCCESS, finished=_START + 100)
    running = await _result(stores, "bld-1", "reboot", RUNNING)
    pending = await _result(stores, "bld-1", "reboot", PENDING)
    await store.save_step(old_done.requestid, 0, StepRecord("Rebooting", 1.0, 2.0, "Success!"))
    await store.save_step(recent.requestid, 0, StepRecord("Rebooting", 3.0, 4.0, "Success!"))
    assert await store.prune(_START + 100) == 2
    kept = [recent, running, pending]
    assert _ids(await stores.reads.find()) == _ids(kept)
    assert await stores.reads.get(old_done.requestid) is None
    assert await stores.reads.get(old_failed.requestid) is None
    history = await stores.reads.history("bld-1", None, 10)
    assert [entry.result.requestid for entry in history] == _ids(kept[::-1])
    assert history[-1].steps == (StepRecord("Rebooting", 3.0, 4.0, "Success!"),)
    assert await store.prune(_START + 100) == 0


@pytest_twisted.ensureDeferred
async def test_unknown_and_impossible_ids_read_as_nothing(stores: _Stores) -> None:
    made = await stores.store.create("bld-1", "reboot", None)
    for requestid in (made.requestid + 1, 0, -1, MAX_REQUESTID, MAX_REQUESTID + 1, -(2**70)):
        assert await stores.reads.get(requestid) is None
    assert await stores.reads.history("bld-1", 0, 10) == []
    assert await stores.reads.history("bld-1", -5, 10) == []
    assert await stores.reads.history("bld-1", None, 0) == []
    assert await stores.reads.history("nobody", None, 10) == []
    assert [entry.result for entry in await stores.reads.history("bld-1", 2**70, 10)] == [made]
