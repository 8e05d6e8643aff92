"""
The store and C{GET /results} against a review's findings: POST answers
once recorded even when a read fails, C{next} keeps a time filter, no read
pins a snapshot, reads never wait on a lock, every page is read through an
index, the full answer is streamed, huge numbers are 400s and every read
error is a 503.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
import pytest_twisted

from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult, dictify_results
from slaveapi.store import _SCHEMA, EACH_CHUNK, ResultQuery, SQLiteResultStore, StoreUnavailable, _page_sql
from tests.recorded_now import recorded_now

from .test_web_contract import _Web, web  # noqa: F401  # the fixture, used by name


async def _result(store: SQLiteResultStore, slave: str, action: str = "reboot", state: int = SUCCESS) -> int:
    result = await store.create(slave, action, None)
    if state != PENDING:
        result.state, result.text = state, f"{action} on {slave}"
        await store.save(result)
    return result.requestid


def _insert_raw(store: SQLiteResultStore, rows: list[tuple[Any, ...]]) -> None:
    """Rows written behind the store's back (as an edit of the file would)."""
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        other.close()


# -- 1. a POST recorded and queued never answers 5xx ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_post_whose_reads_fail_answers_202_with_what_was_written(web: _Web) -> None:
    real_get = web.store.get

    def failing_get(requestid: int) -> ActionResult | None:
        raise StoreUnavailable("disk I/O error")

    web.store.get = failing_get  # type: ignore[method-assign]
    try:
        answer = await web.request("POST", "/slaves/bld-1/actions/gated", data={"waittime": "0"})
    finally:
        web.store.get = real_get  # type: ignore[method-assign]
    body = json.loads(answer.raw)
    assert answer.status == 202
    assert body["state"] in (PENDING, RUNNING)
    assert [(r.requestid, r.action) for r in web.store.find()] == [(body["requestid"], "gated_action")]


@pytest_twisted.ensureDeferred
async def test_wait_treats_a_failed_read_as_not_done(store: SQLiteResultStore, processor: ActionProcessor) -> None:
    result = ActionResult(slave="bld-1", action="reboot", requestid=12345)

    def failing_get(requestid: int) -> ActionResult | None:
        raise StoreUnavailable("database is locked")

    store.get = failing_get  # type: ignore[method-assign]
    waiting = processor.wait(result, 0)
    assert waiting.called


def test_recorded_shows_the_last_written_copy_not_the_working_one(
    store: SQLiteResultStore, processor: ActionProcessor
) -> None:
    written = ActionResult(slave="bld-1", action="reboot", requestid=77, state=RUNNING, text="written")
    working = ActionResult(slave="bld-1", action="reboot", requestid=77, state=SUCCESS, text="not written yet")
    processor._written[77] = written
    assert store.get(77) is None
    assert recorded_now(processor, working) == written
    assert processor.last_written(working) == written


# -- 2. next keeps a time filter ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_next_after_a_time_keeps_the_time_and_goes_on_by_requestid(web: _Web) -> None:
    from twisted.internet import reactor

    now = int(reactor.seconds())
    recent = [await _result(web.store, "bld-1") for _ in range(3)]
    old = ActionResult(slave="bld-2", action="reboot", requestid=0, state=SUCCESS, text="old",
                       request_timestamp=now - 86400 * 30, start_timestamp=now - 86400 * 30,
                       finish_timestamp=now - 86400 * 30)
    await web.store.add_finished([old, old])
    await _result(web.store, "bld-3")
    seen: list[int] = []
    path: str | None = f"/results?since=@{now - 60}&limit=1"
    while path is not None:
        answer = await web.request("GET", path)
        assert answer.status == 200
        page = json.loads(answer.raw)
        seen += [entry["requestid"] for entry in page["results"]]
        assert all(entry["request_timestamp"] >= now - 60 for entry in page["results"])
        path = page["next"]
    assert seen == [*recent, recent[-1] + 3]


@pytest_twisted.ensureDeferred
async def test_after_is_a_requestid_bound_and_checked(web: _Web) -> None:
    ids = [await _result(web.store, "bld-1") for _ in range(3)]
    answer = await web.request("GET", f"/results?after={ids[0]}")
    assert [entry["requestid"] for entry in json.loads(answer.raw)["results"]] == ids[1:]
    bad = await web.request("GET", "/results?after=x")
    assert bad.status == 400 and json.loads(bad.raw)["msg"].startswith("after:")


# -- 3. no read pins a snapshot ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_half_read_each_does_not_hide_later_writes(store: SQLiteResultStore) -> None:
    for number in range(3):
        await _result(store, f"bld-{number}")
    half_read = store.each()
    next(half_read)
    later = await _result(store, "bld-9")
    found = store.get(later)
    assert found is not None and found.slave == "bld-9"
    del half_read


@pytest_twisted.ensureDeferred
async def test_an_each_that_fails_half_way_does_not_hide_later_writes(store: SQLiteResultStore) -> None:
    await _result(store, "bld-1")
    _insert_raw(store, [(500, "bld-2", "reboot", SUCCESS, "not json", 1, 1, 1, None)])
    with pytest.raises(StoreUnavailable, match="500") as failed:
        list(store.each())
    later = await _result(store, "bld-9")
    found = store.get(later)
    assert failed.value is not None
    assert found is not None and found.slave == "bld-9"


@pytest_twisted.ensureDeferred
async def test_each_reads_every_result_across_chunks_once_in_order(store: SQLiteResultStore) -> None:
    template = ActionResult(slave="", action="reboot", requestid=0, state=SUCCESS, text="t")
    await store.add_finished(
        ActionResult(**{**template.__dict__, "slave": f"bld-{number % 7}"}) for number in range(EACH_CHUNK * 2 + 5)
    )
    keys = [(r.slave, r.action, r.requestid) for r in store.each()]
    assert keys == sorted(keys)
    assert len(set(keys)) == EACH_CHUNK * 2 + 5


# -- 4. reads never wait on a lock -------------------------------------------------------


def test_the_reader_has_no_busy_timeout_and_is_read_only(store: SQLiteResultStore) -> None:
    assert store._reader is not None
    assert store._reader.execute("PRAGMA busy_timeout").fetchone() == (0,)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._reader.execute("DELETE FROM results")


# -- 5. every page through an index, never sorted ----------------------------------------

_PLAN_CASES = {
    "since a time": ResultQuery(requested_since=1_700_000_000, limit=101),
    "since a time, after a requestid": ResultQuery(requested_since=1_700_000_000, after_requestid=50, limit=101),
    "slave": ResultQuery(slave="bld-7", limit=101),
    "slave and state": ResultQuery(slave="bld-7", state=FAILURE, limit=101),
    "slave and time": ResultQuery(slave="bld-7", requested_since=1_700_000_000, limit=101),
    "slave and action": ResultQuery(slave="bld-7", action="reboot", limit=101),
    "action": ResultQuery(action="reboot", limit=101),
    "action and state": ResultQuery(action="reboot", state=FAILURE, limit=101),
    "state": ResultQuery(state=FAILURE, limit=101),
    "state after a requestid": ResultQuery(state=FAILURE, after_requestid=500, limit=101),
    "state and time": ResultQuery(state=FAILURE, requested_since=1_700_000_000, limit=101),
    "after a requestid": ResultQuery(after_requestid=500, limit=101),
}


@pytest.mark.parametrize("name", sorted(_PLAN_CASES))
def test_every_page_is_read_through_an_index_without_a_sort(tmp_path: Any, name: str) -> None:
    db = sqlite3.connect(str(tmp_path / "plans.sqlite"))
    db.executescript(_SCHEMA)
    actions = ["reboot", "buildslave_uptime", "shutdown_buildslave", "disable"]
    db.executemany(
        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((i, f"bld-{i % 50}", actions[i % 4], SUCCESS if i % 10 else FAILURE, '"t"',
          1_700_000_000 + i, 0, 0, None) for i in range(1, 5001)),
    )
    db.execute("PRAGMA optimize")
    sql, values = _page_sql(_PLAN_CASES[name])
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, values)]
    assert plan[0].startswith("SEARCH results USING"), plan
    assert not any("TEMP B-TREE" in step or step.startswith("SCAN") for step in plan), plan
    db.close()


# -- 6. the full answer is streamed, in the 2015 shape -----------------------------------


@pytest_twisted.ensureDeferred
async def test_the_full_answer_spans_chunks_in_the_2015_shape(web: _Web) -> None:
    template = ActionResult(slave="", action="reboot", requestid=0, state=SUCCESS, text={"n": [1, None]})
    await web.store.add_finished(
        ActionResult(**{**template.__dict__, "slave": f"bld-{number % 3}"}) for number in range(EACH_CHUNK + 10)
    )
    answer = await web.request("GET", "/results")
    assert answer.status == 200
    assert json.loads(answer.raw) == json.loads(json.dumps(dictify_results(web.store.find())))


# -- 7. huge numbers --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["limit", "since", "state", "after"])
@pytest_twisted.ensureDeferred
async def test_a_huge_number_is_a_400_naming_its_field(web: _Web, field: str) -> None:
    answer = await web.request("GET", f"/results?{field}={'9' * 4301}")
    assert answer.status == 400
    assert json.loads(answer.raw)["msg"].startswith(f"{field}:")


@pytest.mark.parametrize("since", ["2026-11-29T10:00:00 01:00", "2026-11-29t09:00:00z", "2026-11-29T09:00:00%2B00:00"])
@pytest_twisted.ensureDeferred
async def test_since_takes_lowercase_and_an_unencoded_plus(web: _Web, since: str) -> None:
    answer = await web.request("GET", "/results?since=" + since.replace(" ", "+"))
    assert answer.status == 200, answer.raw


# -- 8. every read error is a 503 --------------------------------------------------------


class _Broken:
    def __init__(self, error: sqlite3.Error) -> None:
        self.error = error

    def execute(self, *args: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error", [sqlite3.DatabaseError("database disk image is malformed"), sqlite3.ProgrammingError("closed")]
)
@pytest_twisted.ensureDeferred
async def test_any_database_error_on_a_read_is_a_503(web: _Web, error: sqlite3.Error) -> None:
    real = web.store._reader
    web.store._reader = _Broken(error)  # type: ignore[assignment]
    try:
        answers = [
            await web.request("GET", path)
            for path in ("/results?limit=5", "/results", "/slaves/bld-1/actions/fake?requestid=1")
        ]
    finally:
        web.store._reader = real
    assert [answer.status for answer in answers] == [503, 503, 503]
    assert all(answer.headers.getRawHeaders(b"retry-after") == [b"30"] for answer in answers)


@pytest_twisted.ensureDeferred
async def test_a_malformed_row_is_a_503_naming_its_requestid(web: _Web) -> None:
    _insert_raw(web.store, [(500, "bld-1", "fake_action", SUCCESS, "not json", 1, 1, 1, None)])
    answers = [
        await web.request("GET", path)
        for path in ("/results", "/results?slave=bld-1", "/slaves/bld-1/actions/fake?requestid=500")
    ]
    other = sqlite3.connect(web.store.path, isolation_level=None)
    other.execute("DELETE FROM results WHERE requestid = 500")
    other.close()
    assert [answer.status for answer in answers] == [503, 503, 503]
    assert all("stored result 500 is malformed" in json.loads(answer.raw)["msg"] for answer in answers)
