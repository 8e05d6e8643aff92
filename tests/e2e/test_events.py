"""
Live events end to end: an SSE client on C{GET /events} watching a reboot in
the lab, and a webhook receiver in this process checking the signature of
the finished event, both through the running service.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from slaveapi.clients import within
from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: The most any reboot in the lab takes (boot time 1 s), as a bound on every wait here.
BOUND = 120.0
SECRET = "lab-webhook-secret-0123456789"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("events")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


class _EventReader(Protocol):
    """Parses an SSE body into (id, event, data) frames; fires C{finished} at the finished event of C{requestid}."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.requestid: int | None = None
        self.finished: Deferred[None] = Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            self._block(block.decode("utf-8"))

    def _block(self, block: str) -> None:
        frame: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            frame[name] = value
        if "data" not in frame:
            return
        frame["data"] = json.loads(frame["data"])
        self.frames.append(frame)
        data = frame["data"]
        if data["kind"] == "finished" and data["requestid"] == self.requestid and not self.finished.called:
            self.finished.callback(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if not self.finished.called:
            self.finished.errback(reason)


async def _open_stream(url: str, headers: dict[bytes | str, bytes | str] | None = None) -> tuple[Any, _EventReader]:
    response = await treq.get(url, headers=headers, unbuffered=True, timeout=30)
    reader = _EventReader()
    response.deliverBody(reader)
    return response, reader


def _of(reader: _EventReader, requestid: int) -> list[dict[str, Any]]:
    return [frame for frame in reader.frames if frame["data"]["requestid"] == requestid]


@pytest_twisted.ensureDeferred
async def test_an_sse_client_sees_a_reboots_steps_then_its_result(lab_service: RunningService) -> None:
    slave = "bld-linux64-lab-006"  # refuses SSH logins: the reboot escalates through several steps
    response, reader = await _open_stream(f"{lab_service.url}/events?slave={slave}&action=reboot")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    # Another machine's action is filtered out of this stream.
    await request_json("POST", f"{lab_service.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime")
    code, posted = await request_json("POST", f"{lab_service.url}/slaves/{slave}/actions/reboot")
    assert code == 202, posted
    reader.requestid = posted["requestid"]
    try:
        await within(reactor, BOUND, reader.finished, "the reboot's finished event")
    finally:
        reader.close()

    assert {frame["data"]["slave"] for frame in reader.frames} == {slave}
    ours = _of(reader, posted["requestid"])
    kinds = [frame["data"]["kind"] for frame in ours]
    assert kinds[0] == "requested" and kinds[1] == "started" and kinds[-1] == "finished", kinds
    progress = [frame["data"]["text"] for frame in ours if frame["data"]["kind"] == "progress"]
    assert len(progress) >= 3, progress
    # Steps are added as the reboot goes: each text keeps the finished lines of the one before.
    for before, after in itertools.pairwise(progress):
        assert after.startswith(before.rpartition("\n")[0]), (before, after)
    assert [text.count("\n") for text in progress] == sorted(text.count("\n") for text in progress)
    assert progress[-1].count("\n") == 3
    assert progress[0].startswith("Attempting SSH reboot...")
    final = ours[-1]
    assert final["event"] == "result"
    assert final["data"]["state"] == 2
    assert final["data"]["text"].endswith("Attempting IPMI reboot...Success!")
    ids = [int(frame["id"]) for frame in ours]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # Reconnecting with Last-Event-ID replays what came after that event.
    _, replay = await _open_stream(f"{lab_service.url}/events?slave={slave}", headers={"Last-Event-ID": ours[1]["id"]})
    replay.requestid = posted["requestid"]
    try:
        await within(reactor, BOUND, replay.finished, "the replayed finished event")
    finally:
        replay.close()
    assert [frame["id"] for frame in _of(replay, posted["requestid"])] == [frame["id"] for frame in ours[2:]]


@pytest_twisted.ensureDeferred
async def test_bad_filters_are_a_400_naming_the_field(lab_service: RunningService) -> None:
    code, body = await request_json("GET", f"{lab_service.url}/events?action=explode")
    assert (code, body["error"]) == (400, "bad_request")
    assert body["msg"].startswith("action: expected one of ")
    code, body = await request_json("GET", f"{lab_service.url}/events", headers={"Last-Event-ID": "soon"})
    assert code == 400 and body["msg"].startswith("Last-Event-ID: expected a non-negative integer")


class _Receiver(Resource):
    """Records each webhook POST; C{arrived} fires at the first one."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.arrived: Deferred[None] = Deferred()

    def render_POST(self, request: Any) -> bytes:
        headers = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.posts.append((headers, request.content.read()))
        if not self.arrived.called:
            self.arrived.callback(None)
        return b"ok"


def _turn_webhooks_on(service: RunningService, url: str) -> None:
    holder = next(child for child in service.service if isinstance(child, ContextHolder))
    config = holder.context().config
    with open(config.path, "a", encoding="utf-8") as ini:
        ini.write(f"\n[webhooks]\nurls = {url}\nretries = 2\nbackoff = 0.5\ntimeout = 10\n")
    credentials_path = os.path.join(os.path.dirname(config.path), "credentials.json")
    with open(credentials_path, encoding="utf-8") as handle:
        credentials = json.load(handle)
    credentials["webhook_secret"] = SECRET
    with open(credentials_path, "w", encoding="utf-8") as handle:
        json.dump(credentials, handle)
    assert holder.reload()


@pytest_twisted.ensureDeferred
async def test_a_webhook_receiver_gets_the_finished_result_signed(lab_service: RunningService) -> None:
    receiver = _Receiver()
    port: Any = cast(Any, reactor).listenTCP(0, Site(receiver), interface="127.0.0.1")
    try:
        _turn_webhooks_on(lab_service, f"http://127.0.0.1:{port.getHost().port}/hook")
        slave = "bld-linux64-lab-001"
        sent_after = int(time.time())
        code, posted = await request_json(
            "POST", f"{lab_service.url}/slaves/{slave}/actions/reboot", data={"waittime": "120"}
        )
        assert (code, posted["state"]) == (200, 2), posted
        await within(reactor, BOUND, receiver.arrived, "the webhook POST")
        arrived_by = time.time()
    finally:
        await port.stopListening()

    headers, body = receiver.posts[0]
    # As docs/events.rst tells receivers: the signature covers "<timestamp>.<body>", and the timestamp is recent.
    timestamp = headers["x-slaveapi-timestamp"]
    signed = timestamp.encode("ascii") + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-slaveapi-signature"], expected)
    # Stamped when it was sent: between the request and the POST's arrival (no bound on how long that took).
    assert sent_after <= int(timestamp) <= arrived_by
    assert headers["x-slaveapi-event"] == "action.finished"
    assert headers["x-slaveapi-delivery"]
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert payload["requestid"] == posted["requestid"]
    assert (payload["slave"], payload["action"], payload["state"]) == (slave, "reboot", 2)
    assert payload["text"] == posted["text"]
    assert payload["client"] is None
    assert payload["finish_timestamp"] >= payload["start_timestamp"] >= payload["request_timestamp"] > 0
