"""
The HTTP gate over a real loopback socket: what is refused on its headers
alone, before any body is read, and what still gets through.

Requests are written byte for byte by a raw TCP client, so a test can send
headers and no body at all: an answer that arrives anyway proves the gate
did not wait for the body.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from slaveapi.actions import Action, ActionRun
from slaveapi.config import ApiToken, AuthConfig, Secret, ServerConfig
from slaveapi.processor import ActionProcessor
from slaveapi.store import SQLiteResultStore
from slaveapi.web.gate import GatedSite
from slaveapi.web.routes import SlaveAPIWeb

from .conftest import make_config

_TOKEN = "dashboard-token-0123456789abcdef"
_LIMIT = 10.0


async def _echo(run: ActionRun, **arguments: Any) -> Any:
    return {"slave": run.slave, "arguments": arguments}


def _parse_note(form: Mapping[str, str]) -> dict[str, Any]:
    return {"note_length": len(form.get("note", ""))}


class _RawClient(Protocol):
    """Collects everything the server sends until the connection is closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:
        self.closed.callback(self.received)


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _parse(raw: bytes) -> _Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        decoded = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            decoded, body = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return _Answer(status, headers, body)


class _Gate:
    """SlaveAPI's app behind a GatedSite, listening on 127.0.0.1."""

    def __init__(self, store: SQLiteResultStore, processor: ActionProcessor, box: SimpleNamespace) -> None:
        from twisted.internet import reactor

        self.store = store
        self.box = box
        echo = Action(name="echo_action", run=_echo, scope="inspect", arguments=_parse_note, routes=("echo",))
        web = SlaveAPIWeb(processor, store, lambda: box.context, actions=[echo])
        self.site = GatedSite(web.resource(), lambda: box.context.config)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted's ServerFactory generics
        self.number = cast(IPv4Address, self.port.getHost()).port

    def configure(self, **changes: Any) -> None:
        """Replace parts of the configuration: server=..., auth=..., tokens=..."""
        tokens = changes.pop("tokens", None)
        config = make_config(tokens=tokens)
        self.box.context = dataclasses.replace(self.box.context, config=dataclasses.replace(config, **changes))

    async def exchange(self, data: bytes) -> _Answer:
        """Send C{data} as is and read the answer until the server closes."""
        from twisted.internet import reactor

        client = _RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.number), client)
        assert client.transport is not None
        client.transport.write(data)
        return _parse(await client.closed.addTimeout(_LIMIT, reactor))

    def head(self, method: str, path: str, *extra: str, host: str | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{self.number}'}", *extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest_twisted.async_yield_fixture
async def gate(
    store: SQLiteResultStore, processor: ActionProcessor, context_box: SimpleNamespace
) -> AsyncIterator[_Gate]:
    from twisted.internet import reactor

    under_test = _Gate(store, processor, context_box)
    yield under_test
    await under_test.port.stopListening()
    for result in store.find():
        await processor.wait(result, 60).addTimeout(_LIMIT, reactor)


def _assert_problem(answer: _Answer, status: int, error: str) -> str:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    body = answer.json
    assert set(body) == {"error", "msg"} and body["error"] == error
    return str(body["msg"])


# -- Host -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_foreign_host_is_misdirected_and_nothing_is_queued(gate: _Gate) -> None:
    for host in ("attacker.example", f"attacker.example:{gate.number}"):
        answer = await gate.exchange(
            gate.head("POST", "/slaves/bld-1/actions/echo", "Content-Length: 0", host=host)
        )
        msg = _assert_problem(answer, 421, "misdirected_request")
        assert host in msg
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_the_own_names_are_served(gate: _Gate) -> None:
    for host in (f"127.0.0.1:{gate.number}", f"localhost:{gate.number}", f"[::1]:{gate.number}"):
        answer = await gate.exchange(gate.head("GET", "/results", "Connection: close", host=host))
        assert (answer.status, answer.json) == (200, {}), host


@pytest_twisted.ensureDeferred
async def test_server_names_are_served_after_a_reload(gate: _Gate) -> None:
    ask = gate.head("GET", "/results", "Connection: close", host="slaveapi.example.com")
    assert (await gate.exchange(ask)).status == 421
    gate.configure(server=ServerConfig(server_names=("slaveapi.example.com",)))
    assert (await gate.exchange(ask)).status == 200


# -- Origin ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_cross_origin_text_plain_post_is_forbidden(gate: _Gate) -> None:
    body = b"waittime=5"
    request = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        "Origin: http://attacker.example",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
    )
    msg = _assert_problem(await gate.exchange(request + body), 403, "forbidden_origin")
    assert "'http://attacker.example'" in msg
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_a_same_origin_post_works(gate: _Gate) -> None:
    body = b"waittime=5"
    request = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        f"Origin: http://127.0.0.1:{gate.number}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        "Connection: close",
    )
    answer = await gate.exchange(request + body)
    assert (answer.status, answer.json["state"]) == (200, 2)
    assert "access-control-allow-origin" not in answer.headers


@pytest_twisted.ensureDeferred
async def test_an_allowed_origin_gets_cors_answers_and_its_preflight(gate: _Gate) -> None:
    gate.configure(auth=AuthConfig(allowed_origins=("https://dash.example.com:443",)))
    preflight = gate.head(
        "OPTIONS",
        "/slaves/bld-1/actions/echo",
        "Origin: https://dash.example.com",
        "Access-Control-Request-Method: POST",
        "Access-Control-Request-Headers: authorization",
        "Connection: close",
    )
    answer = await gate.exchange(preflight)
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "https://dash.example.com:443"
    assert answer.headers["access-control-allow-methods"] == "GET, POST"
    assert answer.headers["access-control-allow-headers"] == "Authorization, Content-Type"
    read = gate.head("GET", "/results", "Origin: https://dash.example.com", "Connection: close")
    answer = await gate.exchange(read)
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == "https://dash.example.com:443"
    assert answer.headers["vary"] == "Origin"


# -- bodies ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_oversized_body_is_refused_on_its_headers_alone(gate: _Gate) -> None:
    # Only the headers are sent: the answer comes without any of the 32 MB.
    headers = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {32 * 1024 * 1024}",
        "Expect: 100-continue",
    )
    answer = await gate.exchange(headers)
    msg = _assert_problem(answer, 413, "payload_too_large")
    assert msg == "request body: expected at most 65536 bytes, got Content-Length 33554432"
    assert b"100 Continue" not in answer.body
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_an_unauthenticated_body_is_refused_before_it_is_read(gate: _Gate) -> None:
    gate.configure(tokens={"dashboard": _TOKEN})
    headers = gate.head(
        "POST", "/slaves/bld-1/actions/echo", "Content-Type: application/x-www-form-urlencoded", "Content-Length: 1000"
    )
    answer = await gate.exchange(headers)
    assert _assert_problem(answer, 401, "unauthorized") == "an Authorization: Bearer <token> header is required"
    assert answer.headers["www-authenticate"] == 'Bearer realm="slaveapi"'
    wrong = gate.head(
        "POST", "/slaves/bld-1/actions/echo", "Authorization: Bearer not-the-token-at-all", "Content-Length: 1000"
    )
    assert _assert_problem(await gate.exchange(wrong), 401, "unauthorized") == "the bearer token is not valid"
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_refused_once_it_grows_too_large(gate: _Gate) -> None:
    gate.configure(server=ServerConfig(max_body=2048))
    chunk = b"note=" + b"x" * 995
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    request = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        "Content-Type: application/x-www-form-urlencoded",
        "Transfer-Encoding: chunked",
    )
    msg = _assert_problem(await gate.exchange(request + body), 413, "payload_too_large")
    assert msg == "request body: expected at most 2048 bytes, got more"
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_bodies_within_the_limit_are_read_and_parsed(gate: _Gate) -> None:
    gate.configure(tokens={"dashboard": _TOKEN})
    body = b"waittime=5&note=" + b"n" * 60000
    request = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        f"Authorization: Bearer {_TOKEN}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        "Connection: close",
    )
    answer = await gate.exchange(request + body)
    assert (answer.status, answer.json["state"]) == (200, 2)
    assert answer.json["text"] == {"slave": "bld-1", "arguments": {"note_length": 60000}}
    assert gate.store.get(answer.json["requestid"]).client == "dashboard"


@pytest_twisted.ensureDeferred
async def test_a_token_without_the_scope_is_forbidden(gate: _Gate) -> None:
    gate.configure(
        tokens={"reader": ApiToken(Secret(_TOKEN), frozenset({"read"}))}, auth=AuthConfig(protect_reads=True)
    )
    reading = gate.head("GET", "/results", f"Authorization: Bearer {_TOKEN}", "Connection: close")
    assert (await gate.exchange(reading)).status == 200
    acting = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        f"Authorization: Bearer {_TOKEN}",
        "Content-Length: 0",
        "Connection: close",
    )
    answer = await gate.exchange(acting)
    assert answer.status == 403 and answer.json == {
        "error": "forbidden",
        "msg": "scope: the token of 'reader' lacks the 'inspect' scope needed for echo_action",
    }
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_a_multipart_body_without_parts_is_a_json_400(gate: _Gate) -> None:
    # twisted.web alone answers it with a bare 400 and no body, before any resource.
    body = b"--c637e12e2b1a998d80d1b087531af51c--\r\n"
    request = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        "Content-Type: multipart/form-data; boundary=c637e12e2b1a998d80d1b087531af51c",
        f"Content-Length: {len(body)}",
        "Connection: close",
    )
    answer = await gate.exchange(request + body)
    assert _assert_problem(answer, 400, "bad_request") == "body: expected multipart/form-data with at least one part"
    assert gate.store.find() == []


@pytest_twisted.ensureDeferred
async def test_a_multipart_body_with_parts_is_parsed(gate: _Gate) -> None:
    gate.configure(tokens={"dashboard": _TOKEN})
    body = (
        b"--b0\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
        b"--b0\r\nContent-Disposition: form-data; name=\"waittime\"\r\n\r\n5\r\n--b0--\r\n"
    )
    request = gate.head(
        "POST",
        "/slaves/bld-1/actions/echo",
        f"Authorization: Bearer {_TOKEN}",
        "Content-Type: multipart/form-data; boundary=b0",
        f"Content-Length: {len(body)}",
        "Connection: close",
    )
    answer = await gate.exchange(request + body)
    assert (answer.status, answer.json["state"]) == (200, 2)
    assert answer.json["text"] == {"slave": "bld-1", "arguments": {"note_length": 5}}
