"""Tests for slaveapi.clients.http: JSONClient, RemoteError, make_http_client."""

from __future__ import annotations

import base64
import json
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, ensureDeferred
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from slaveapi.clients.http import (
    JSONClient,
    NotFound,
    RemoteError,
    make_http_client,
    url_with_params,
)

from .fakeapi import HANG, FakeJSONAPI, Partial, Raw, SeenRequest, make_json_client

API = "http://api.test/v1"


class EchoAPI(FakeJSONAPI):
    """Answers by path: /ok echoes the request, /status/N answers N, /hang never answers."""

    def answer(self, seen: SeenRequest) -> Any:
        if seen.path == "/v1/ok":
            return 200, {"method": seen.method, "args": seen.args}
        if seen.path.startswith("/v1/status/"):
            code = int(seen.path.rsplit("/", 1)[1])
            return code, {"error": True, "code": 42, "message": "nope"}
        if seen.path == "/v1/html":
            return 200, Raw(b"<html>not json</html>")
        if seen.path == "/v1/html500":
            return 500, Raw(b"<html>boom</html>")
        if seen.path == "/v1/empty":
            return 200, Raw(b"", "application/json")
        if seen.path == "/v1/redirect":
            return 302, Raw(b"", "text/plain", (("Location", "http://elsewhere.test/v1/ok"),))
        if seen.path == "/v1/hang":
            return HANG
        if seen.path == "/v1/partial":
            return Partial(b'{"slaves": [', length=1000)
        raise AssertionError(f"unexpected path {seen.path}")


def _failure_of(d: Deferred[Any]) -> BaseException:
    """The exception a fired, failed Deferred holds (consumes the failure)."""
    failures: list[BaseException] = []
    d.addErrback(lambda f: failures.append(f.value))
    assert failures, "the Deferred has not failed"
    return failures[0]


# --- happy paths -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_json_decodes_body_and_sends_params() -> None:
    api = EchoAPI()
    client, _, _ = make_json_client("svc", api)
    answer = await client.get_json(f"{API}/ok", params={"a": "1", "many": ["x", "y"], "flag": True})
    assert answer == {"method": "GET", "args": {"a": ["1"], "many": ["x", "y"], "flag": ["1"]}}
    assert api.requests[0].headers["accept"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_put_and_post_send_json_body_and_headers() -> None:
    api = EchoAPI()
    client, _, _ = make_json_client("svc", api)
    put = await client.put_json(f"{API}/ok", json_body={"enabled": False}, headers={"X-Key": "k"})
    post = await client.post_json(f"{API}/ok", json_body=[1, 2])
    assert put == {"method": "PUT", "args": {}}
    assert post == {"method": "POST", "args": {}}
    assert api.requests[0].json() == {"enabled": False}
    assert api.requests[0].headers["content-type"] == "application/json; charset=UTF-8"
    assert api.requests[0].headers["x-key"] == "k"
    assert api.requests[1].json() == [1, 2]
    assert "x-key" not in api.requests[1].headers


@pytest_twisted.ensureDeferred
async def test_basic_auth_header_sent() -> None:
    api = EchoAPI()
    client, _, _ = make_json_client("svc", api)
    await client.get_json(f"{API}/ok", auth=("alice", "s3cret!"))
    expected = base64.b64encode(b"alice:s3cret!").decode()
    assert api.requests[0].headers["authorization"] == f"Basic {expected}"


def test_url_with_params() -> None:
    assert url_with_params("http://h/x", None) == "http://h/x"
    assert url_with_params("http://h/x", {"a": "b c", "n": 3}) == "http://h/x?a=b+c&n=3"
    assert url_with_params("http://h/x?q=1", {"r": ["1", "2"]}) == "http://h/x?q=1&r=1&r=2"


# --- errors ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_404_raises_not_found() -> None:
    client, _, _ = make_json_client("slavealloc", EchoAPI())
    with pytest.raises(NotFound) as caught:
        await client.get_json(f"{API}/status/404")
    assert str(caught.value) == "slavealloc: GET http://api.test/v1/status/404 failed: HTTP 404 Not Found"
    assert caught.value.status == 404
    assert caught.value.body == {"error": True, "code": 42, "message": "nope"}


@pytest_twisted.ensureDeferred
async def test_500_raises_remote_error_with_service_url_and_status() -> None:
    client, _, _ = make_json_client("slavealloc", EchoAPI())
    with pytest.raises(RemoteError) as caught:
        await client.get_json(f"{API}/status/500", params={"byname": "1"})
    assert not isinstance(caught.value, NotFound)
    assert str(caught.value) == (
        "slavealloc: GET http://api.test/v1/status/500?byname=1 failed: HTTP 500 Internal Server Error"
    )
    assert (caught.value.service, caught.value.method, caught.value.status) == ("slavealloc", "GET", 500)


@pytest_twisted.ensureDeferred
async def test_html_error_page_has_no_body() -> None:
    client, _, _ = make_json_client("svc", EchoAPI())
    with pytest.raises(RemoteError) as caught:
        await client.post_json(f"{API}/html500", json_body={})
    assert str(caught.value) == "svc: POST http://api.test/v1/html500 failed: HTTP 500 Internal Server Error"
    assert caught.value.body is None


@pytest_twisted.ensureDeferred
async def test_non_json_answer() -> None:
    client, _, _ = make_json_client("buildapi", EchoAPI())
    with pytest.raises(RemoteError) as caught:
        await client.get_json(f"{API}/html")
    assert str(caught.value) == "buildapi: GET http://api.test/v1/html failed: answer is not JSON"
    with pytest.raises(RemoteError) as caught:
        await client.get_json(f"{API}/empty")
    assert str(caught.value) == "buildapi: GET http://api.test/v1/empty failed: answer is not JSON"


@pytest_twisted.ensureDeferred
async def test_redirect_is_not_followed() -> None:
    api = EchoAPI()
    client, _, _ = make_json_client("bugzilla", api)
    with pytest.raises(RemoteError) as caught:
        await client.get_json(f"{API}/redirect", headers={"X-BUGZILLA-API-KEY": "k"})
    assert str(caught.value) == "bugzilla: GET http://api.test/v1/redirect failed: HTTP 302 Found"
    assert [r.path for r in api.requests] == ["/v1/redirect"]


def test_timeout_while_waiting_for_answer() -> None:
    api = EchoAPI()
    client, stub, clock = make_json_client("inventory", api, timeout=30)
    d = ensureDeferred(client.get_json(f"{API}/hang"))
    assert len(api.pending) == 1
    finished = api.pending[0].notifyFinish()
    clock.advance(29.9)
    assert not d.called
    clock.advance(0.1)
    error = _failure_of(d)
    assert isinstance(error, RemoteError)
    assert str(error) == "inventory: GET http://api.test/v1/hang failed: timed out after 30s"
    assert clock.getDelayedCalls() == []
    # The connection was dropped: the server sees its request end unfinished.
    stub.flush()
    assert finished.called
    assert isinstance(_failure_of(finished), Exception)


def test_timeout_covers_reading_the_body() -> None:
    api = EchoAPI()
    client, _, clock = make_json_client("slavealloc", api, timeout=2.5)
    d = ensureDeferred(client.get_json(f"{API}/partial"))
    assert not d.called
    clock.advance(2.5)
    error = _failure_of(d)
    assert isinstance(error, RemoteError)
    assert str(error) == "slavealloc: GET http://api.test/v1/partial failed: timed out after 2.5s"


def test_cancel_by_caller_is_not_a_remote_error() -> None:
    api = EchoAPI()
    client, _, clock = make_json_client("svc", api)
    d = ensureDeferred(client.get_json(f"{API}/hang"))
    d.cancel()
    assert isinstance(_failure_of(d), CancelledError)
    assert clock.getDelayedCalls() == []


def test_limit_is_held_while_in_flight() -> None:
    api = EchoAPI()
    client, stub, _ = make_json_client("svc", api)
    limit = DeferredSemaphore(1)
    first = ensureDeferred(client.get_json(f"{API}/hang", limit=limit))
    second = ensureDeferred(client.get_json(f"{API}/ok", limit=limit))
    assert len(api.requests) == 1
    assert limit.tokens == 0
    api.finish(api.pending[0], 200, {"first": True})
    stub.flush()
    assert first.result == {"first": True}
    assert second.result == {"method": "GET", "args": {}}
    assert len(api.requests) == 2
    assert limit.tokens == 1


def test_limit_released_after_failure() -> None:
    client, _, clock = make_json_client("svc", EchoAPI(), timeout=1)
    limit = DeferredSemaphore(1)
    d = ensureDeferred(client.get_json(f"{API}/hang", limit=limit))
    clock.advance(1)
    assert isinstance(_failure_of(d), RemoteError)
    assert limit.tokens == 1


def test_remote_error_message_is_one_line_without_userinfo() -> None:
    error = RemoteError("svc", "GET", "http://bob:hunter2@h/x", "connection lost:\n  reset")
    assert str(error) == "svc: GET http://h/x failed: connection lost: reset"
    assert "hunter2" not in repr(error)


# --- real sockets on loopback ------------------------------------------------


class _RealAPI(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/hang":
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"path": request.path.decode()}).encode()


@pytest_twisted.ensureDeferred
async def test_make_http_client_against_a_real_server() -> None:
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Site(_RealAPI()), interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted's ServerFactory generics
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        client = JSONClient("real", make_http_client(reactor, pool), 0.2, reactor)
        base = f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}"
        assert await client.get_json(f"{base}/a") == {"path": "/a"}
        assert await client.get_json(f"{base}/b") == {"path": "/b"}
        with pytest.raises(RemoteError) as caught:
            await client.get_json(f"{base}/hang")
        assert str(caught.value) == f"real: GET {base}/hang failed: timed out after 0.2s"
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connection_refused() -> None:
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Site(_RealAPI()), interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted's ServerFactory generics
    number = cast(IPv4Address, port.getHost()).port
    await port.stopListening()
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        client = JSONClient("mozpool", make_http_client(reactor, pool), 5, reactor)
        with pytest.raises(RemoteError) as caught:
            await client.get_json(f"http://127.0.0.1:{number}/x")
        assert str(caught.value) == f"mozpool: GET http://127.0.0.1:{number}/x failed: connection refused"
    finally:
        await pool.closeCachedConnections()
