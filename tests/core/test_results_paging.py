"""
C{GET /results} with filters and paging, its 400s, and the 2015 shape
without parameters; served on a loopback port, with results written
straight through the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import pytest_twisted
import treq
from twisted.web.server import Site

from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, dictify_results
from slaveapi.store import SQLiteResultStore
from slaveapi.web.routes import SlaveAPIWeb


class _Server:
    def __init__(self, store: SQLiteResultStore, url: str) -> None:
        self.store = store
        self.url = url

    async def get(self, path: str, **fields: Any) -> tuple[int, Any]:
        query = ("?" + urlencode(fields)) if fields else ""
        response = await treq.get(self.url + path + query, timeout=10)
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return response.code, await response.json()

    async def result(self, slave: str, action: str, state: int = SUCCESS) -> int:
        result = await self.store.create(slave, action, None)
        if state != PENDING:
            result.state, result.text = state, f"{action} on {slave}"
            await self.store.save(result)
        return result.requestid


@pytest_twisted.async_yield_fixture
async def server(
    store: SQLiteResultStore, processor: ActionProcessor, context_box: SimpleNamespace
) -> AsyncIterator[_Server]:
    from twisted.internet import reactor

    app = SlaveAPIWeb(processor, store, lambda: context_box.context)
    port: Any = reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted's ServerFactory generics
    try:
        yield _Server(store, f"http://127.0.0.1:{port.getHost().port}")
    finally:
        await port.stopListening()


def _entry(store: SQLiteResultStore, requestid: int) -> dict[str, Any]:
    result = store.get(requestid)
    assert result is not None
    return {**result.to_dict(include_requestid=True), "slave": result.slave, "action": result.action}


@pytest_twisted.ensureDeferred
async def test_without_parameters_every_result_in_the_2015_shape(server: _Server) -> None:
    assert await server.get("/results") == (200, {})
    for slave in ("bld-2", "bld-1", "b\u00e9-1"):
        await server.result(slave, "reboot", SUCCESS)
        await server.result(slave, "buildslave_uptime", RUNNING)
        await server.result(slave, "reboot", PENDING)
    code, body = await server.get("/results")
    assert code == 200
    assert body == dictify_results(server.store.find())
    assert len(body["bld-1"]["reboot"]) == 2
    # Parameters that are not the page's are ignored, as elsewhere in the API.
    assert await server.get("/results", format="html") == (200, body)


@pytest_twisted.ensureDeferred
async def test_a_page_lists_results_in_requestid_order_with_their_names(server: _Server) -> None:
    ids = [await server.result("bld-1", "reboot") for _ in range(3)]
    code, body = await server.get("/results", limit="10")
    assert code == 200
    assert body == {"results": [_entry(server.store, requestid) for requestid in ids], "next": None}


@pytest_twisted.ensureDeferred
async def test_every_filter(server: _Server) -> None:
    a = await server.result("bld-1", "reboot", SUCCESS)
    b = await server.result("bld-1", "buildslave_uptime", FAILURE)
    c = await server.result("bld-2", "reboot", RUNNING)
    d = await server.result("bld-2", "reboot", PENDING)

    async def ids(**fields: Any) -> list[int]:
        code, body = await server.get("/results", **fields)
        assert code == 200, body
        return [entry["requestid"] for entry in body["results"]]

    # The slave's name is read as everywhere: any case, the configured domain taken off.
    assert await ids(slave="BLD-1.example.test") == [a, b]
    assert await ids(slave="bld-2") == [c, d]
    assert await ids(action="reboot") == [a, c, d]
    assert await ids(action="get_uptime") == [b]  # a route of the action stands for it
    assert await ids(slave="bld-2", action="reboot", state="running") == [c]
    assert await ids(state="3") == [b]
    assert await ids(state="PENDING") == [d]
    assert await ids(since=str(b)) == [c, d]
    assert await ids(since=str(d)) == []
    stamp = server.store.get(a).request_timestamp
    assert await ids(since=f"@{stamp}") == [a, b, c, d]
    assert await ids(since=f"{stamp}.5") == [a, b, c, d]  # to the second
    assert await ids(since=f"@{stamp + 3600}") == []
    assert await ids(since="2000-01-01T00:00:00Z") == [a, b, c, d]
    assert await ids(since="2999-01-01T00:00:00+01:00") == []
    assert await ids(limit="1") == [a]


@pytest_twisted.ensureDeferred
async def test_next_pages_are_stable_while_results_are_added(server: _Server) -> None:
    expected = [await server.result(f"bld-{n % 2}", "reboot") for n in range(5)]
    seen: list[int] = []
    code, body = await server.get("/results", action="reboot", limit="2")
    pages = 0
    while True:
        assert code == 200
        seen.extend(entry["requestid"] for entry in body["results"])
        pages += 1
        if body["next"] is None:
            break
        assert pages < 20
        link = urlsplit(body["next"])
        assert link.path == "/results"
        assert parse_qs(link.query) == {"action": ["reboot"], "limit": ["2"], "since": [str(seen[-1])]}
        if pages < 3:
            expected.append(await server.result("bld-7", "reboot"))
            await server.result("bld-7", "buildslave_uptime")  # filtered out
        code, body = await server.get(body["next"])
    assert seen == expected


@pytest.mark.parametrize(
    ("fields", "named", "expected"),
    [
        ({"slave": "bad_name"}, "slave:", "hostname"),
        ({"slave": ""}, "slave:", "hostname"),
        ({"action": "nonsense"}, "action:", "reboot"),
        ({"state": "4"}, "state:", "PENDING"),
        ({"state": "done"}, "state:", "0-3"),
        ({"since": "yesterday"}, "since:", "requestid"),
        ({"since": "-5"}, "since:", "requestid"),
        ({"since": "@soon"}, "since:", "@<unix seconds>"),
        ({"since": "2026-11-29T10:00:00"}, "since:", "UTC offset"),
        ({"since": "2026-13-29T10:00:00Z"}, "since:", "ISO-8601"),
        ({"since": str(2**64)}, "since:", "at most"),
        ({"limit": "0"}, "limit:", "1 to 1000"),
        ({"limit": "1001"}, "limit:", "1 to 1000"),
        ({"limit": "ten"}, "limit:", "1 to 1000"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_parameter_is_a_400_naming_it(
    server: _Server, fields: dict[str, str], named: str, expected: str
) -> None:
    code, body = await server.get("/results", **fields)
    assert code == 400
    assert set(body) == {"error", "msg"}
    assert body["error"] == "bad_request"
    assert body["msg"].startswith(named)
    assert expected in body["msg"]


@pytest_twisted.ensureDeferred
async def test_an_action_listing_and_a_requestid_read_from_the_store(server: _Server) -> None:
    mine = [await server.result("bld-1", "reboot") for _ in range(2)]
    await server.result("bld-2", "reboot")
    code, body = await server.get("/slaves/bld-1/actions/reboot")
    assert code == 200
    assert body == {"reboot": {str(requestid): server.store.get(requestid).to_dict() for requestid in mine}}
    code, one = await server.get("/slaves/bld-1/actions/reboot", requestid=str(mine[0]))
    assert (code, one) == (200, server.store.get(mine[0]).to_dict())
    code, missing = await server.get("/slaves/bld-1/actions/reboot", requestid=str(2**70))
    assert (code, missing["error"]) == (404, "not_found")
