"""
The HTTP contract of SlaveAPI, exercised in memory with C{StubTreq}.

The app runs against the real processor and SQLite store (whose writer thread
answers through the real reactor) with fake actions. Because an answer may be
finished after C{StubTreq}'s first pump, the app is wrapped in a resource
that flushes the in-memory connection once each answer has been finished; no
test sleeps or polls.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import quote

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request

from slaveapi.actions import Action, ActionFailure, ActionRun, ArgumentError
from slaveapi.actions.registry import ACTIONS
from slaveapi.config import ApiToken
from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS
from slaveapi.store import SQLiteResultStore
from slaveapi.web.actions import route_table
from slaveapi.web.routes import SlaveAPIWeb

from .conftest import make_config

_TOKEN = "dashboard-token-0123456789abcdef"
_OTHER_TOKEN = "buildduty-token-fedcba9876543210"


class _FlushWhenFinished(Resource):
    """
    The app, plus a flush of StubTreq's in-memory connections after each
    answer is finished, so that answers finished later reach the client too.
    """

    isLeaf = True

    def __init__(self, app: Resource) -> None:
        super().__init__()
        self._app = app
        self.stub: StubTreq | None = None

    def render(self, request: IRequest) -> Any:
        from twisted.internet import reactor

        def flush(_: object) -> None:
            # Not from inside the pump that may be running right now.
            reactor.callLater(0, self._flush)

        cast(Request, request).notifyFinish().addBoth(flush)
        return self._app.render(request)

    def _flush(self) -> None:
        assert self.stub is not None
        self.stub.flush()


@dataclass
class _Answer:
    """One HTTP answer: status, headers and the raw and decoded body."""

    status: int
    headers: Any
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def content_type(self) -> list[bytes]:
        return self.headers.getRawHeaders(b"content-type")


class _Gates:
    """Deferreds that gated actions wait on, one per run, fired by the test."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self._released: list[Any] = []

    async def wait(self, run: ActionRun) -> str:
        gate: Deferred[Any] = Deferred()
        self.pending.append(gate)
        run.progress("Waiting for the gate...")
        if self._released:
            # A run that starts after release_all (once its start is written) goes through too.
            gate.callback(self._released[0])
        return await gate

    def release_all(self, payload: Any = "released") -> None:
        self._released[:] = [payload]
        for gate in self.pending:
            if not gate.called:
                gate.callback(payload)


async def _quick(run: ActionRun, **arguments: Any) -> Any:
    return {"slave": run.slave, "arguments": arguments}


async def _refuses(run: ActionRun) -> str:
    run.progress("Trying SSH...")
    raise ActionFailure("Could not do it.")


async def _crashes(run: ActionRun) -> str:
    run.progress("Trying SSH...")
    raise ValueError("unexpected thing\nTraceback (most recent call last): nope")


def _parse_count(form: Mapping[str, str]) -> dict[str, Any]:
    raw = form.get("count", "1")
    if not raw.isdigit():
        raise ArgumentError("count", f"expected an integer, got {raw!r}")
    return {"count": int(raw)}


def _parse_badly(form: Mapping[str, str]) -> dict[str, Any]:
    raise RuntimeError("parser bug /home/slaveapi/secret.py")


class _Web:
    """The app under test and what it runs on."""

    def __init__(self, store: SQLiteResultStore, processor: ActionProcessor, context_box: SimpleNamespace) -> None:
        self.store = store
        self.processor = processor
        self.context_box = context_box
        self.gates = _Gates()
        actions = [
            Action(name="fake_action", run=_quick, routes=("fake",)),
            Action(name="counted_action", run=_quick, arguments=_parse_count, routes=("counted",)),
            Action(name="gated_action", run=self.gates.wait, routes=("gated",)),
            Action(name="locked_action", run=self.gates.wait, exclusive=True, routes=("locked",)),
            Action(name="refusing_action", run=_refuses, routes=("refuses",)),
            Action(name="crashing_action", run=_crashes, routes=("crashes",)),
            Action(name="fake_action", run=_quick, arguments=_parse_badly, routes=("badparser",)),
        ]
        app = SlaveAPIWeb(processor, store, lambda: context_box.context, actions=actions)
        self._root = _FlushWhenFinished(app.resource())
        self.stub = StubTreq(self._root)
        self._root.stub = self.stub

    def configure(self, tokens: dict[str, str | ApiToken] | None = None, protect_reads: bool = False) -> None:
        config = make_config(tokens=tokens, protect_reads=protect_reads)
        self.context_box.context = dataclasses.replace(self.context_box.context, config=config)

    async def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> _Answer:
        from twisted.internet import reactor

        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode()]
        d = self.stub.request(  # type: ignore[attr-defined]  # StubTreq builds its methods at run time
            method, "http://127.0.0.1" + path, headers=headers, **kwargs)
        response = await d.addTimeout(5, reactor)
        raw = await self.stub.content(response).addTimeout(5, reactor)  # type: ignore[attr-defined]  # as above
        return _Answer(response.code, response.headers, raw)

    async def finished(self, requestid: int) -> None:
        """Wait (in real time) until the result is finished and persisted."""
        from twisted.internet import reactor

        result = self.store.get(requestid)
        assert result is not None
        await self.processor.wait(result, 60).addTimeout(5, reactor)
        finished = self.store.get(requestid)
        assert finished is not None and finished.is_done()


@pytest_twisted.async_yield_fixture
async def web(
    store: SQLiteResultStore, processor: ActionProcessor, context_box: SimpleNamespace
) -> AsyncIterator[_Web]:
    from twisted.internet import reactor

    under_test = _Web(store, processor, context_box)
    yield under_test
    # Let nothing run on past the test into a closed store.
    under_test.gates.release_all()
    for result in store.find():
        await processor.wait(result, 60).addTimeout(5, reactor)


def _assert_problem(answer: _Answer, status: int, error: str) -> dict[str, str]:
    """A JSON error answer: exactly {"error", "msg"}, JSON content type, no traceback."""
    assert answer.status == status, answer.raw
    assert answer.content_type() == [b"application/json"]
    body = answer.json
    assert set(body) == {"error", "msg"}
    assert body["error"] == error
    assert isinstance(body["msg"], str) and body["msg"]
    assert b"Traceback" not in answer.raw
    assert b"<html" not in answer.raw.lower()
    return body


# -- POST -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_post_without_waittime_answers_202_with_the_requestid(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/gated")
    assert answer.status == 202
    assert answer.content_type() == [b"application/json"]
    body = answer.json
    result = web.store.get(body["requestid"])
    assert result is not None
    assert (result.slave, result.action) == ("bld-1", "gated_action")
    assert body["request_timestamp"] == result.request_timestamp
    # Answered at once, with what is committed then: the new request, or its
    # start if the writer thread committed that first (never a state not on disk).
    assert (body["state"], body["text"]) in ((PENDING, ""), (RUNNING, ""))
    assert (body["start_timestamp"] > 0) == (body["state"] == RUNNING)
    assert body["finish_timestamp"] == 0
    await web.store.flushed()
    assert web.store.get(body["requestid"]).state == RUNNING

    explicit = await web.request("POST", "/slaves/bld-1/actions/gated", data={"waittime": "0"})
    assert explicit.status == 202
    assert explicit.json["state"] in (PENDING, RUNNING)
    assert explicit.json["requestid"] != body["requestid"]


@pytest_twisted.ensureDeferred
async def test_post_answers_pending_while_the_slave_is_locked(web: _Web) -> None:
    first = await web.request("POST", "/slaves/bld-1/actions/locked")
    await web.store.flushed()
    assert web.store.get(first.json["requestid"]).state == RUNNING
    second = await web.request("POST", "/slaves/bld-1/actions/locked")
    await web.store.flushed()
    assert first.status == 202
    assert (second.status, second.json["state"]) == (202, PENDING)
    assert web.store.get(second.json["requestid"]).state == PENDING
    assert second.json["start_timestamp"] == 0
    assert second.json["text"] == ""


@pytest_twisted.ensureDeferred
async def test_post_with_waittime_in_the_form_answers_200_when_done(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/counted", data={"waittime": "5", "count": "3"})
    assert answer.status == 200
    assert answer.content_type() == [b"application/json"]
    body = answer.json
    assert body["state"] == SUCCESS
    assert body["text"] == {"slave": "bld-1", "arguments": {"count": 3}}
    assert body == web.store.get(body["requestid"]).to_dict(include_requestid=True)
    assert body["finish_timestamp"] >= body["start_timestamp"] >= body["request_timestamp"] > 0


@pytest_twisted.ensureDeferred
async def test_post_with_waittime_in_the_query_answers_200_when_done(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/fake?waittime=5")
    assert answer.status == 200
    body = answer.json
    assert body["state"] == SUCCESS
    assert body["text"] == {"slave": "bld-1", "arguments": {}}
    assert body == web.store.get(body["requestid"]).to_dict(include_requestid=True)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("where", ["form", "query"])
async def test_post_waiting_for_a_gated_action_answers_when_it_finishes(
    web: _Web, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from twisted.internet import reactor

    # Learn when the POST has started waiting for its action.
    waiting: Deferred[float] = Deferred()
    original_wait = web.processor.wait

    def wait(result: Any, seconds: float) -> Deferred[None]:
        d = original_wait(result, seconds)
        if not waiting.called:
            waiting.callback(seconds)
        return d

    monkeypatch.setattr(web.processor, "wait", wait)
    if where == "form":
        posting = web.request("POST", "/slaves/bld-1/actions/gated", data={"waittime": "30"})
    else:
        posting = web.request("POST", "/slaves/bld-1/actions/gated?waittime=30")
    answering = Deferred.fromCoroutine(posting)
    assert await waiting.addTimeout(5, reactor) == 30.0
    await web.store.flushed()
    # The action is running and the answer is held until it finishes.
    assert not answering.called
    assert len(web.gates.pending) == 1
    web.gates.pending[0].callback("opened")
    answer = await answering
    assert answer.status == 200
    assert (answer.json["state"], answer.json["text"]) == (SUCCESS, "opened")


@pytest_twisted.ensureDeferred
async def test_post_answers_202_when_waittime_runs_out(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/gated", data={"waittime": "0.01"})
    assert answer.status == 202
    # Pending or running, depending on how far the writes got in that time.
    assert answer.json["state"] in (PENDING, RUNNING)
    assert answer.json["finish_timestamp"] == 0


@pytest_twisted.ensureDeferred
async def test_post_of_a_failing_action_answers_its_failure(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/refuses?waittime=5")
    assert answer.status == 200
    assert (answer.json["state"], answer.json["text"]) == (FAILURE, "Could not do it.")


@pytest_twisted.ensureDeferred
async def test_action_raising_unexpectedly_still_answers_json(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/crashes", data={"waittime": "5"})
    assert answer.status == 200
    assert answer.content_type() == [b"application/json"]
    body = answer.json
    assert body["state"] == FAILURE
    assert body["text"] == "Trying SSH...\nUnexpected error: ValueError: unexpected thing"
    assert b"Traceback" not in answer.raw


@pytest_twisted.ensureDeferred
async def test_argument_parser_crashing_answers_500_json(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/badparser")
    body = _assert_problem(answer, 500, "internal_error")
    assert body["msg"] == "internal error; see the server log"
    assert b"secret.py" not in answer.raw
    assert web.store.find() == []


# -- GET ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_with_requestid_answers_that_result(web: _Web) -> None:
    posted = (await web.request("POST", "/slaves/bld-1/actions/fake", data={"waittime": "5"})).json
    answer = await web.request("GET", f"/slaves/bld-1/actions/fake?requestid={posted['requestid']}")
    assert answer.status == 200
    assert answer.content_type() == [b"application/json"]
    expected = dict(posted)
    del expected["requestid"]
    assert answer.json == expected


@pytest_twisted.ensureDeferred
async def test_get_without_requestid_answers_all_of_this_action_for_this_slave(web: _Web) -> None:
    one = (await web.request("POST", "/slaves/bld-1/actions/fake", data={"waittime": "5"})).json["requestid"]
    two = (await web.request("POST", "/slaves/bld-1/actions/fake", data={"waittime": "5"})).json["requestid"]
    await web.request("POST", "/slaves/bld-2/actions/fake", data={"waittime": "5"})
    await web.request("POST", "/slaves/bld-1/actions/refuses", data={"waittime": "5"})

    answer = await web.request("GET", "/slaves/bld-1/actions/fake")
    assert answer.status == 200
    assert answer.json == {
        "fake_action": {
            str(one): web.store.get(one).to_dict(),
            str(two): web.store.get(two).to_dict(),
        }
    }
    nothing = await web.request("GET", "/slaves/bld-3/actions/fake")
    assert (nothing.status, nothing.json) == (200, {"fake_action": {}})


@pytest_twisted.ensureDeferred
async def test_results_nest_by_slave_action_and_requestid(web: _Web) -> None:
    assert (await web.request("GET", "/results")).json == {}
    a = (await web.request("POST", "/slaves/bld-1/actions/fake", data={"waittime": "5"})).json["requestid"]
    b = (await web.request("POST", "/slaves/bld-1/actions/refuses", data={"waittime": "5"})).json["requestid"]
    c = (await web.request("POST", "/slaves/bld-2/actions/fake", data={"waittime": "5"})).json["requestid"]
    answer = await web.request("GET", "/results")
    assert answer.status == 200
    assert answer.content_type() == [b"application/json"]
    get = web.store.get
    assert answer.json == {
        "bld-1": {
            "fake_action": {str(a): get(a).to_dict()},
            "refusing_action": {str(b): get(b).to_dict()},
        },
        "bld-2": {"fake_action": {str(c): get(c).to_dict()}},
    }


# -- 400 ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_slave_names_are_400(web: _Web) -> None:
    for name in ("bad_name", quote("a b"), "a" * 300, "a..b", "-bld", quote("bld;reboot")):
        for method in ("GET", "POST"):
            answer = await web.request(method, f"/slaves/{name}/actions/fake")
            body = _assert_problem(answer, 400, "bad_request")
            assert body["msg"] == (
                "slave: expected a hostname (letters, digits, '.' and '-', at most 253 characters)"
            )
        answer = await web.request("GET", f"/slaves/{name}")
        _assert_problem(answer, 400, "bad_request")
    assert web.store.find() == []


@pytest_twisted.ensureDeferred
async def test_longest_valid_slave_name_is_accepted(web: _Web) -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    answer = await web.request("GET", f"/slaves/{name}/actions/fake")
    assert (answer.status, answer.json) == (200, {"fake_action": {}})


@pytest_twisted.ensureDeferred
async def test_malformed_requestid_is_400(web: _Web) -> None:
    answer = await web.request("GET", "/slaves/bld-1/actions/fake?requestid=abc")
    body = _assert_problem(answer, 400, "bad_request")
    assert body["msg"] == "requestid: expected an integer, got 'abc'"
    negative = await web.request("GET", "/slaves/bld-1/actions/fake?requestid=-3")
    assert _assert_problem(negative, 400, "bad_request")["msg"] == (
        "requestid: expected a non-negative integer, got -3"
    )


@pytest_twisted.ensureDeferred
async def test_malformed_waittime_is_400_and_queues_nothing(web: _Web) -> None:
    for raw in ("-1", "soon", "nan"):
        in_form = await web.request("POST", "/slaves/bld-1/actions/fake", data={"waittime": raw})
        body = _assert_problem(in_form, 400, "bad_request")
        assert body["msg"] == f"waittime: expected a number of seconds >= 0, got {raw!r}"
        in_query = await web.request("POST", f"/slaves/bld-1/actions/fake?waittime={raw}")
        assert _assert_problem(in_query, 400, "bad_request") == body
    assert web.store.find() == []


@pytest_twisted.ensureDeferred
async def test_action_argument_errors_are_400(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/counted", data={"count": "many"})
    assert _assert_problem(answer, 400, "bad_request")["msg"] == "count: expected an integer, got 'many'"
    assert web.store.find() == []


@pytest_twisted.ensureDeferred
async def test_only_the_fields_an_action_reads_must_be_utf8(web: _Web) -> None:
    ignored = await web.request("POST", "/slaves/bld-1/actions/counted?waittime=5&note=%FF&count=2")
    assert (ignored.status, ignored.json["text"]["arguments"]) == (200, {"count": 2})
    read = await web.request("POST", "/slaves/bld-1/actions/counted?count=%FF")
    assert _assert_problem(read, 400, "bad_request")["msg"] == "count: expected UTF-8 text"


def test_every_action_is_served_under_its_routes() -> None:
    served = {route: view.action.name for route, view in route_table(ACTIONS.values()).items()}
    assert served == {
        "buildslave_uptime": "buildslave_uptime",
        "get_uptime": "buildslave_uptime",
        "buildslave_last_activity": "buildslave_last_activity",
        "get_last_activity": "buildslave_last_activity",
        "reboot": "reboot",
        "shutdown_buildslave": "shutdown_buildslave",
        "disable": "disable",
        "aws_create_instance": "aws_create_instance",
        "start": "aws_start_instance",
        "stop": "aws_stop_instance",
        "terminate": "aws_terminate_instance",
        "power_status": "power_status",
        "power_on": "power_on",
        "power_off": "power_off",
        "power_cycle": "power_cycle",
        "boot_device": "boot_device",
        "pause_buildslave": "pause_buildslave",
        "unpause_buildslave": "unpause_buildslave",
    }


def test_two_actions_cannot_claim_one_route() -> None:
    first, second = Action(name="first", run=_quick), Action(name="second", run=_quick, routes=("first",))
    with pytest.raises(ValueError, match=r"^route 'first' is claimed by both first and second$"):
        route_table([first, second])


# -- 404 and 405 ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_requestid_is_404(web: _Web) -> None:
    answer = await web.request("GET", "/slaves/bld-1/actions/fake?requestid=999")
    body = _assert_problem(answer, 404, "not_found")
    assert body["msg"] == "requestid: no fake_action request 999 for bld-1"


@pytest_twisted.ensureDeferred
async def test_requestid_of_another_slave_or_action_is_404(web: _Web) -> None:
    theirs = (await web.request("POST", "/slaves/bld-2/actions/fake", data={"waittime": "5"})).json["requestid"]
    answer = await web.request("GET", f"/slaves/bld-1/actions/fake?requestid={theirs}")
    assert _assert_problem(answer, 404, "not_found")["msg"] == (
        f"requestid: no fake_action request {theirs} for bld-1"
    )
    other_action = await web.request("GET", f"/slaves/bld-2/actions/refuses?requestid={theirs}")
    _assert_problem(other_action, 404, "not_found")


@pytest_twisted.ensureDeferred
async def test_unknown_action_route_is_404(web: _Web) -> None:
    for method in ("GET", "POST"):
        answer = await web.request(method, "/slaves/bld-1/actions/explode")
        body = _assert_problem(answer, 404, "not_found")
        assert body["msg"].startswith("action: no action 'explode'; expected one of ")
        assert "fake" in body["msg"]
    assert web.store.find() == []


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_404(web: _Web) -> None:
    # "/" is the fleet page (tests/unit/test_fleet_page.py); "/static/" names no file of it.
    for path in ("/nowhere", "/slaves/bld-1/actions", "/slaves/bld-1/actions/fake/extra", "/static/"):
        answer = await web.request("GET", path)
        body = _assert_problem(answer, 404, "not_found")
        assert body["msg"] == f"no such endpoint: {path}"


@pytest_twisted.ensureDeferred
async def test_other_methods_are_405(web: _Web) -> None:
    for method, path in (
        ("DELETE", "/slaves/bld-1/actions/fake"),
        ("PUT", "/slaves/bld-1/actions/fake"),
        ("DELETE", "/results"),
        ("POST", "/results"),
    ):
        answer = await web.request(method, path)
        body = _assert_problem(answer, 405, "method_not_allowed")
        assert body["msg"] == f"method {method} is not allowed here"
    assert web.store.find() == []


# -- authentication -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_post_needs_a_valid_token_when_tokens_are_configured(web: _Web) -> None:
    web.configure(tokens={"dashboard": _TOKEN, "buildduty": _OTHER_TOKEN})

    missing = await web.request("POST", "/slaves/bld-1/actions/fake")
    body = _assert_problem(missing, 401, "unauthorized")
    assert body["msg"] == "an Authorization: Bearer <token> header is required"
    assert missing.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="slaveapi"']

    wrong = await web.request("POST", "/slaves/bld-1/actions/fake", token="not-the-right-token-at-all")
    assert _assert_problem(wrong, 401, "unauthorized")["msg"] == "the bearer token is not valid"
    assert wrong.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="slaveapi"']

    basic = await web.request(
        "POST", "/slaves/bld-1/actions/fake", headers={b"Authorization": [b"Basic " + _TOKEN.encode()]}
    )
    _assert_problem(basic, 401, "unauthorized")
    for answer in (missing, wrong, basic):
        assert _TOKEN.encode() not in answer.raw and _OTHER_TOKEN.encode() not in answer.raw
    assert web.store.find() == []

    accepted = await web.request("POST", "/slaves/bld-1/actions/fake", token=_TOKEN, data={"waittime": "5"})
    assert (accepted.status, accepted.json["state"]) == (200, SUCCESS)
    assert web.store.get(accepted.json["requestid"]).client == "dashboard"
    other = await web.request("POST", "/slaves/bld-1/actions/gated", token=_OTHER_TOKEN)
    assert other.status == 202
    assert web.store.get(other.json["requestid"]).client == "buildduty"
    # The client is kept for the audit trail, not shown.
    assert "client" not in accepted.json


@pytest_twisted.ensureDeferred
async def test_without_tokens_posts_are_open_and_anonymous(web: _Web) -> None:
    answer = await web.request("POST", "/slaves/bld-1/actions/fake", data={"waittime": "5"})
    assert answer.status == 200
    assert web.store.get(answer.json["requestid"]).client is None


@pytest_twisted.ensureDeferred
async def test_reads_are_open_unless_protected(web: _Web) -> None:
    web.configure(tokens={"dashboard": _TOKEN})
    posted = (await web.request("POST", "/slaves/bld-1/actions/fake", token=_TOKEN, data={"waittime": "5"})).json
    reads = ("/results", "/slaves/bld-1/actions/fake", f"/slaves/bld-1/actions/fake?requestid={posted['requestid']}")
    for path in reads:
        assert (await web.request("GET", path)).status == 200

    web.configure(tokens={"dashboard": _TOKEN}, protect_reads=True)
    for path in reads:
        refused = await web.request("GET", path)
        _assert_problem(refused, 401, "unauthorized")
        assert refused.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="slaveapi"']
        _assert_problem(await web.request("GET", path, token="not-the-right-token-at-all"), 401, "unauthorized")
        assert (await web.request("GET", path, token=_TOKEN)).status == 200


@pytest_twisted.async_yield_fixture
async def failing_slavealloc(web: _Web) -> AsyncIterator[_Web]:
    from slaveapi.clients.http import RemoteError

    async def broken(name: str) -> None:
        raise RemoteError("slavealloc", "GET", "http://127.0.0.1:1/slavealloc/api/slaves/bld-1", "host not found")

    clients = web.context_box.context.clients
    usual = clients.slavealloc.get_slave
    clients.slavealloc.get_slave = broken
    yield web
    clients.slavealloc.get_slave = usual


@pytest_twisted.ensureDeferred
async def test_a_post_whose_machine_cannot_be_checked_is_a_502_json_answer(failing_slavealloc: _Web) -> None:
    answer = await failing_slavealloc.request("POST", "/slaves/bld-1/actions/fake")
    body = _assert_problem(answer, 502, "bad_gateway")
    assert body["msg"].startswith("slave: could not check that bld-1 is a known machine: ")
