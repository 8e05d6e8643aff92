"""
A machine's history: what the store keeps of each request (its declared,
non-secret form fields and its steps), how it pages newest first through an
index, how a database made by the previous schema gets the new tables, and
what C{GET /slaves/<slave>/history} answers.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from slaveapi.actions import Action, ActionFailure, ActionRun, FormField, StatusLines
from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, SUCCESS, ActionResult
from slaveapi.store import _HISTORY_SQL, _HISTORY_STEPS_SQL, SQLiteResultStore, StepRecord
from slaveapi.web.actions import ActionView, history_fields
from slaveapi.web.errors import HTTPProblem
from slaveapi.web.history import history_entry, machine_history
from slaveapi.web.routes import SlaveAPIWeb

from .conftest import make_config

# The results table and its indexes as the release before history made them.
_PREVIOUS_SCHEMA = """
CREATE TABLE results (
    requestid INTEGER PRIMARY KEY, slave TEXT NOT NULL, action TEXT NOT NULL, state INTEGER NOT NULL,
    text TEXT NOT NULL, request_timestamp INTEGER NOT NULL, start_timestamp INTEGER NOT NULL,
    finish_timestamp INTEGER NOT NULL, client TEXT
);
CREATE INDEX results_by_slave_action ON results (slave, action);
CREATE INDEX results_by_action ON results (action);
CREATE INDEX results_by_slave ON results (slave);
CREATE INDEX results_by_state ON results (state);
CREATE INDEX results_by_request_timestamp ON results (request_timestamp);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO results VALUES (7, 'bld-1', 'reboot', 2, '"Rebooted."', 100, 101, 102, 'dashboard');
INSERT INTO meta VALUES ('last_requestid', 7);
"""

_SECRET = "hunter2-never-stored"


async def _within(d: Deferred[Any], seconds: float = 5.0) -> Any:
    """Await C{d}, failing the test (rather than hanging) if it takes longer in real time."""
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


async def _finished(store: SQLiteResultStore, action: str, slave: str = "bld-1", **fields: str) -> int:
    result = await store.create(slave, action, None, fields)
    result.state = SUCCESS
    await store.save(result)
    return result.requestid


def _ids(entries: list[Any]) -> list[int]:
    return [entry.result.requestid for entry in entries]


# -- the store --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_is_newest_first_paged_by_requestid_and_per_machine(store: SQLiteResultStore) -> None:
    first = await _finished(store, "reboot", reason="first")
    await _finished(store, "reboot", slave="bld-2")
    second = await _finished(store, "disable", reason="second")
    third = await _finished(store, "reboot")

    assert _ids(store.history("bld-1", None, 10)) == [third, second, first]
    assert _ids(store.history("bld-1", None, 2)) == [third, second]
    assert _ids(store.history("bld-1", second, 2)) == [first]
    assert _ids(store.history("bld-1", first, 2)) == []
    assert _ids(store.history("bld-9", None, 2)) == []
    newest = store.history("bld-1", None, 3)
    assert [entry.fields for entry in newest] == [{}, {"reason": "second"}, {"reason": "first"}]


@pytest_twisted.ensureDeferred
async def test_steps_are_kept_in_order_and_rewritten_when_they_end(store: SQLiteResultStore) -> None:
    requestid = await _finished(store, "reboot")
    other = await _finished(store, "reboot")
    await store.save_step(requestid, 0, StepRecord("Attempting SSH reboot", 10.0))
    await store.save_step(requestid, 1, StepRecord("Attempting IPMI reboot", 20.0))
    await store.save_step(requestid, 0, StepRecord("Attempting SSH reboot", 10.0, 15.5, "Failed: refused"))
    await store.save_step(other, 0, StepRecord("Elsewhere", 1.0, 2.0, "Success!"))

    (entry,) = [entry for entry in store.history("bld-1", None, 10) if entry.result.requestid == requestid]
    assert entry.steps == (
        StepRecord("Attempting SSH reboot", 10.0, 15.5, "Failed: refused"),
        StepRecord("Attempting IPMI reboot", 20.0, None, None),
    )


@pytest_twisted.ensureDeferred
async def test_a_history_page_is_read_through_indexes_without_a_sort(store: SQLiteResultStore) -> None:
    await _finished(store, "reboot")
    db = sqlite3.connect(store.path)
    try:
        pages = " ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + _HISTORY_SQL, ("bld-1", 9, 50)))
        steps = " ".join(
            str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + _HISTORY_STEPS_SQL.format(marks="?, ?"), (1, 2))
        )
    finally:
        db.close()
    assert "USING INDEX results_by_slave" in pages
    assert "USING PRIMARY KEY" in steps
    assert "TEMP B-TREE" not in pages + steps
    assert "SCAN" not in pages.replace("SCAN results USING INDEX", "") + steps


@pytest_twisted.ensureDeferred
async def test_pruning_a_result_prunes_its_fields_and_steps(store: SQLiteResultStore) -> None:
    requestid = await _finished(store, "disable", reason="gone")
    await store.save_step(requestid, 0, StepRecord("Disabling in slavealloc", 1.0, 2.0, "Success!"))
    assert await store.prune(older_than=10**12) == 1
    db = sqlite3.connect(store.path)
    try:
        left = [db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("result_fields", "steps")]  # noqa: S608  # constants
    finally:
        db.close()
    assert left == [0, 0]


@pytest_twisted.ensureDeferred
async def test_a_database_of_the_previous_schema_gets_history_when_opened(tmp_path: Any) -> None:
    from twisted.internet import reactor

    path = str(tmp_path / "previous.sqlite")
    old = sqlite3.connect(path)
    old.executescript(_PREVIOUS_SCHEMA)
    old.close()
    store = SQLiteResultStore(path, reactor)
    store.open()
    try:
        (kept,) = store.history("bld-1", None, 10)
        assert (kept.result.requestid, kept.result.client, kept.result.text) == (7, "dashboard", "Rebooted.")
        assert (kept.fields, kept.steps) == ({}, ())
        newer = await _finished(store, "disable", reason="after the upgrade")
        await store.save_step(newer, 0, StepRecord("Disabling in slavealloc", 5.0, 6.0, "Success!"))
        entries = store.history("bld-1", None, 10)
        assert _ids(entries) == [newer, 7]
        assert entries[0].fields == {"reason": "after the upgrade"}
        assert entries[0].steps == (StepRecord("Disabling in slavealloc", 5.0, 6.0, "Success!"),)
    finally:
        await store.close()
    # Opening it again changes nothing more.
    again = SQLiteResultStore(path, reactor)
    again.open()
    try:
        assert _ids(again.history("bld-1", None, 10)) == [newer, 7]
    finally:
        await again.close()


# -- the processor: fields and steps as an action runs ----------------------------------------


def _stepping(clock: Clock) -> Callable[..., Any]:
    async def run(run: ActionRun, **arguments: Any) -> str:
        status = StatusLines(run)

        async def ssh() -> str:
            clock.advance(3)
            if arguments.get("fail_first", False):
                raise ActionFailure("connection refused")
            return "done."

        async def ipmi() -> None:
            clock.advance(7)

        await status.step("Attempting SSH reboot", ssh, fatal=False)
        await status.step("Attempting IPMI reboot", ipmi)
        return status.text

    return run


def _parse(form: Mapping[str, str]) -> dict[str, Any]:
    return {"fail_first": form.get("mode") == "fail"}


def _action(clock: Clock) -> Action:
    return Action(
        name="stepper",
        run=_stepping(clock),
        arguments=_parse,
        fields=(
            FormField("mode", choices=("ok", "fail")),
            FormField("password", secret=True),
            FormField("unused"),
        ),
    )


@pytest_twisted.ensureDeferred
async def test_steps_are_recorded_with_times_from_the_reactor_clock(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor()
    action = _action(clock)
    form = {"mode": "fail", "password": _SECRET, "waittime": "10", "undeclared": "x"}
    fields = history_fields(action, form)
    result = await processor.submit("bld-1", action, action.arguments(form), "dashboard", fields=fields)
    await _within(processor.wait(result, 3600))
    await store.flushed()

    (entry,) = store.history("bld-1", None, 10)
    assert entry.result.state == SUCCESS
    assert entry.result.client == "dashboard"
    assert entry.fields == {"mode": "fail"}
    start = entry.steps[0].started
    assert start == clock.seconds() - 10
    assert entry.steps == (
        StepRecord("Attempting SSH reboot", start, start + 3, "Failed: connection refused"),
        StepRecord("Attempting IPMI reboot", start + 3, start + 10, "Success!"),
    )
    assert history_entry(entry)["steps"][1] == {
        "heading": "Attempting IPMI reboot",
        "started": start + 3,
        "finished": start + 10,
        "outcome": "Success!",
    }


class _CountingProcessor:
    """Records whether anything was submitted: a bad request must be refused before."""

    def __init__(self) -> None:
        self.submitted = 0

    async def submit(self, *args: Any, **kwargs: Any) -> ActionResult:
        self.submitted += 1
        raise AssertionError("a bad request reached the processor")


@pytest_twisted.ensureDeferred
async def test_a_declared_field_that_is_not_utf8_is_a_400_before_the_processor(clock: Clock) -> None:
    request = DummyRequest([])
    request.method = b"POST"
    request.args = {b"mode": [b"ok"], b"unused": [b"\xff\xfe"]}
    processor = _CountingProcessor()
    with pytest.raises(HTTPProblem) as raised:
        await ActionView(_action(clock)).post(cast(Any, processor), cast(Any, request), "bld-1", None, cast(Any, None))
    assert raised.value.status == 400 and raised.value.msg == "unused: expected UTF-8 text"
    assert processor.submitted == 0


@pytest_twisted.ensureDeferred
async def test_secret_fields_are_never_written_to_the_database(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor], clock: Clock
) -> None:
    processor = make_processor()
    action = _action(clock)
    form = {"mode": "ok", "password": _SECRET}
    result = await processor.submit("bld-1", action, action.arguments(form), None, fields=history_fields(action, form))
    await _within(processor.wait(result, 3600))
    await store.flushed()

    (entry,) = store.history("bld-1", None, 10)
    assert entry.fields == {"mode": "ok"}
    db = sqlite3.connect(store.path)
    try:
        dumped = "\n".join(db.iterdump())
    finally:
        db.close()
    assert '{"mode": "ok"}' in dumped
    assert _SECRET not in dumped


class _OtherFailure(ActionFailure):
    """A failure the step does not declare."""


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ValueError("bug"), "Failed: unexpected error"),
        (_OtherFailure("the master said no"), "Failed: the master said no"),
        (CancelledError(), "Interrupted"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_step_ended_by_an_undeclared_error_says_how_it_ended(
    store: SQLiteResultStore,
    make_processor: Callable[..., ActionProcessor],
    clock: Clock,
    error: BaseException,
    outcome: str,
) -> None:
    async def crashes(run: ActionRun) -> str:
        async def work() -> None:
            clock.advance(2)
            raise error

        await StatusLines(run).step("Asking the master", work, failures=(KeyError,))
        return "unreachable"

    processor = make_processor()
    result = await processor.submit("bld-1", Action(name="crasher", run=crashes))
    await _within(processor.wait(result, 3600))
    await store.flushed()

    (entry,) = store.history("bld-1", None, 10)
    assert entry.result.state == FAILURE
    (step,) = entry.steps
    assert (step.heading, step.finished, step.outcome) == ("Asking the master", step.started + 2, outcome)


@pytest.mark.parametrize("at_once", [False, True], ids=["write fails", "writer refuses at once"])
@pytest_twisted.ensureDeferred
async def test_a_step_that_cannot_be_recorded_does_not_stop_the_action(
    store: SQLiteResultStore, make_processor: Callable[..., ActionProcessor], clock: Clock, at_once: bool
) -> None:
    class _NoSteps:
        """The real store, whose step writes fail (or raise, as a closed store's writer pool does)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def save_step(self, requestid: int, n: int, step: StepRecord) -> Deferred[None]:
            if at_once:
                raise RuntimeError("the writer's thread pool is stopped")
            failed: Deferred[None] = Deferred()
            failed.errback(sqlite3.OperationalError("disk I/O error"))
            return failed

    processor = make_processor(on=_NoSteps())
    action = _action(clock)
    result = await processor.submit("bld-1", action, {"fail_first": False})
    await _within(processor.wait(result, 3600))

    finished = store.get(result.requestid)
    assert finished is not None
    assert finished.state == SUCCESS
    assert finished.text == "Attempting SSH reboot...done.\nAttempting IPMI reboot...Success!"


# -- the web view ----------------------------------------------------------------------------


def _request(**args: str) -> IRequest:
    request = DummyRequest([b""])
    request.args = {key.encode(): [value.encode()] for key, value in args.items()}
    return cast(IRequest, request)


async def _page(store: SQLiteResultStore, ctx: Any, name: str, **args: str) -> dict[str, Any]:
    body: bytes = await machine_history(store, ctx, _request(**args), name)
    return cast(dict[str, Any], json.loads(body))


@pytest_twisted.ensureDeferred
async def test_the_view_pages_with_next_until_null(store: SQLiteResultStore, context_box: SimpleNamespace) -> None:
    made = [await _finished(store, "reboot") for _ in range(3)]
    ctx = context_box.context

    seen: list[int] = []
    page = await _page(store, ctx, "bld-1", limit="2")
    assert page["slave"] == "bld-1"
    assert page["next"] == f"/slaves/bld-1/history?limit=2&before={made[1]}"
    seen += [entry["requestid"] for entry in page["history"]]
    page = await _page(store, ctx, "bld-1", limit="2", before=str(made[1]))
    assert page["next"] is None
    seen += [entry["requestid"] for entry in page["history"]]
    assert seen == made[::-1]
    assert set(page["history"][0]) == {
        "requestid", "action", "state", "client", "fields", "request_timestamp", "start_timestamp",
        "finish_timestamp", "steps", "text",
    }  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_the_view_defaults_to_50_and_refuses_bad_parameters(
    store: SQLiteResultStore, context_box: SimpleNamespace
) -> None:
    ctx = context_box.context
    assert (await _page(store, ctx, "bld-1"))["history"] == []
    for args, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": "-1"}, "before"),
        ({"before": "9" * 40}, "before"),
    ):
        with pytest.raises(HTTPProblem) as raised:
            await _page(store, ctx, "bld-1", **args)
        assert raised.value.status == 400
        assert raised.value.msg.startswith(f"{field}: expected a whole number")


@pytest_twisted.ensureDeferred
async def test_an_unknown_machine_is_404(store: SQLiteResultStore, context_box: SimpleNamespace) -> None:
    with pytest.raises(HTTPProblem) as raised:
        await _page(store, context_box.context, "nowhere-1")
    assert (raised.value.status, raised.value.error) == (404, "not_found")


@pytest_twisted.ensureDeferred
async def test_the_route_needs_a_read_token_when_reads_are_protected(
    store: SQLiteResultStore, processor: ActionProcessor, context_box: SimpleNamespace
) -> None:
    await _finished(store, "reboot")
    context_box.context = dataclasses.replace(
        context_box.context, config=make_config(tokens={"dashboard": "t" * 32}, protect_reads=True)
    )
    web = SlaveAPIWeb(processor, store, lambda: context_box.context)
    stub = StubTreq(web.resource())
    url = "http://127.0.0.1/slaves/bld-1/history"
    refused = await stub.get(url)  # type: ignore[attr-defined]  # StubTreq builds its methods at run time
    assert refused.code == 401
    allowed = await stub.get(url, headers={b"Authorization": [b"Bearer " + b"t" * 32]})  # type: ignore[attr-defined]
    body = json.loads(await stub.content(allowed))  # type: ignore[attr-defined]  # as above
    assert allowed.code == 200
    assert [entry["action"] for entry in body["history"]] == ["reboot"]


def test_an_entry_shows_what_the_contract_says() -> None:
    from slaveapi.store import HistoryEntry

    result = ActionResult("bld-1", "disable", 5, SUCCESS, "Done.", 1, 2, 3, "dashboard")
    entry = history_entry(HistoryEntry(result, {"reason": "flaky"}, (StepRecord("Disabling", 2.0, 2.5, "Success!"),)))
    assert entry == {
        "requestid": 5,
        "action": "disable",
        "state": SUCCESS,
        "client": "dashboard",
        "fields": {"reason": "flaky"},
        "request_timestamp": 1,
        "start_timestamp": 2,
        "finish_timestamp": 3,
        "steps": [{"heading": "Disabling", "started": 2.0, "finished": 2.5, "outcome": "Success!"}],
        "text": "Done.",
    }
