"""
Result events: the hub (ids, bounded buffer, subscribers that fail) and the
C{GET /events} streams (SSE framing, filters, resume, keepalives, limits,
slow readers dropped), on a L{Clock} and a fake request.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Site

from slaveapi import events as events_module
from slaveapi.clients import within
from slaveapi.config import Config, EventsConfig
from slaveapi.events import FINISHED, PROGRESS, REQUESTED, ResultEvents
from slaveapi.results import SUCCESS, ActionResult
from slaveapi.web.errors import HTTPProblem
from slaveapi.web.events import KEEPALIVE, EventStreams
from tests.core.conftest import make_config

ACTIONS = {"reboot", "disable"}


def _result(slave: str = "bld-1", action: str = "reboot", requestid: int = 7, text: str = "") -> ActionResult:
    return ActionResult(slave, action, requestid, text=text, request_timestamp=100)


class _Transport:
    def __init__(self) -> None:
        self.aborted = False
        self.closed = False

    def abortConnection(self) -> None:
        self.aborted = True

    def loseConnection(self) -> None:
        self.closed = True


class _Request:
    """Just what a stream uses of a twisted.web request."""

    def __init__(self, args: dict[str, list[str]] | None = None, last_event_id: str | None = None) -> None:
        self.args = {key.encode(): [v.encode() for v in values] for key, values in (args or {}).items()}
        self._last = last_event_id
        self.code: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.written: list[bytes] = []
        self.producer: Any = None
        self.transport = _Transport()

    def getHeader(self, name: bytes) -> bytes | None:
        return self._last.encode() if name == b"last-event-id" and self._last is not None else None

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def frames(self) -> list[dict[str, Any]]:
        found = []
        for block in b"".join(self.written).decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
            if lines:
                found.append({"id": int(lines["id"]), "event": lines["event"], "data": json.loads(lines["data"])})
        return found


def _config(max_clients: int = 100, max_queued: int = 1000, max_queued_bytes: int = 256 * 1024) -> Config:
    events = EventsConfig(max_clients=max_clients, max_queued=max_queued, max_queued_bytes=max_queued_bytes)
    return dataclasses.replace(make_config(), events=events)


def _streams(hub: ResultEvents | None, clock: Clock, config: Config | None = None) -> EventStreams:
    chosen = config or _config()
    return EventStreams(hub, clock, lambda: chosen)


# The hub.


def test_events_have_increasing_ids_and_a_snapshot_of_the_result() -> None:
    hub = ResultEvents(id_base=0)
    seen: list[Any] = []
    hub.subscribe(seen.append)
    result = _result(text="Attempting SSH reboot...")
    first = hub.publish(PROGRESS, result)
    result.text, result.state = "done", SUCCESS
    second = hub.publish(FINISHED, result)
    assert seen == [first, second]
    assert (first.id, second.id) == (1, 2)
    assert (first.text, first.kind) == ("Attempting SSH reboot...", PROGRESS)
    assert (second.text, second.state) == ("done", SUCCESS)
    assert hub.last_id == 2


def test_the_buffer_keeps_only_the_latest_events() -> None:
    hub = ResultEvents(buffer=3, id_base=0)
    for requestid in range(5):
        hub.publish(REQUESTED, _result(requestid=requestid))
    assert [event.id for event in hub.since(0)] == [3, 4, 5]
    assert [event.id for event in hub.since(4)] == [5]
    assert hub.since(5) == []


def test_the_buffer_is_bounded_in_bytes_too_and_keeps_the_latest() -> None:
    hub = ResultEvents(max_bytes=10_000, id_base=0)
    for requestid in range(10):
        hub.publish(PROGRESS, _result(requestid=requestid, text="x" * 3000))
    kept = hub.since(0)
    assert [event.requestid for event in kept] == [7, 8, 9]
    assert sum(len(event.data) for event in kept) <= 10_000
    hub.publish(PROGRESS, _result(requestid=10, text="x" * 20_000))
    assert [event.requestid for event in hub.since(0)] == [10]  # the latest is kept, even alone too big


def test_ids_start_above_a_base_from_the_time_so_they_grow_across_restarts(monkeypatch: Any) -> None:
    monkeypatch.setattr(events_module, "time", SimpleNamespace(time=lambda: 1_700_000_000.5))
    before = ResultEvents()
    for requestid in range(5000):  # far more than a process publishes in a millisecond
        before.publish(REQUESTED, _result(requestid=requestid))
    monkeypatch.setattr(events_module, "time", SimpleNamespace(time=lambda: 1_700_000_000.51))
    after = ResultEvents()  # restarted 10 ms later
    first = after.publish(REQUESTED, _result())
    assert first.id > before.last_id > 1_700_000_000_500_000
    assert first.id < 2**53  # still exact in a browser's JavaScript


def test_a_failing_subscriber_is_logged_and_the_others_still_told() -> None:
    hub = ResultEvents(id_base=0)
    seen: list[Any] = []

    def broken(_: Any) -> None:
        raise RuntimeError("boom")

    hub.subscribe(broken)
    hub.subscribe(seen.append)
    with capturedLogs() as logs:
        event = hub.publish(REQUESTED, _result())
    assert seen == [event]
    assert any(entry["log_level"] == LogLevel.critical and "subscriber failed" in entry["log_format"] for entry in logs)


def test_unsubscribing_stops_the_calls() -> None:
    hub = ResultEvents(id_base=0)
    seen: list[Any] = []
    unsubscribe = hub.subscribe(seen.append)
    unsubscribe()
    unsubscribe()
    hub.publish(REQUESTED, _result())
    assert seen == []


# The streams.


def test_a_stream_frames_each_event_as_sse() -> None:
    hub, clock, request = ResultEvents(id_base=0), Clock(), _Request()
    streams = _streams(hub, clock)
    done = streams.serve(request, ACTIONS)  # type: ignore[arg-type]
    assert request.code == 200 and request.headers[b"Content-Type"] == b"text/event-stream; charset=utf-8"
    hub.publish(PROGRESS, _result(text="line one\nline two"))
    assert request.written[-1].count(b"\n") == 4  # id, event, data, blank: the text's newline stays escaped
    [frame] = request.frames()
    assert frame["event"] == "result" and frame["id"] == 1
    assert frame["data"] == {
        "requestid": 7,
        "slave": "bld-1",
        "action": "reboot",
        "state": 0,
        "text": "line one\nline two",
        "kind": "progress",
        "request_timestamp": 100,
        "start_timestamp": 0,
        "finish_timestamp": 0,
    }
    assert not done.called


def test_filters_on_slaves_and_actions_each_repeatable() -> None:
    hub, request = ResultEvents(id_base=0), _Request({"slave": ["BLD-1.example.test", "bld-2"], "action": ["reboot"]})
    _streams(hub, Clock()).serve(request, ACTIONS)  # type: ignore[arg-type]
    hub.publish(REQUESTED, _result("bld-1"))
    hub.publish(REQUESTED, _result("bld-2", requestid=8))
    hub.publish(REQUESTED, _result("bld-3", requestid=9))
    hub.publish(REQUESTED, _result("bld-1", action="disable", requestid=10))
    assert [frame["data"]["requestid"] for frame in request.frames()] == [7, 8]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_Request({"action": ["explode"]}), "action: expected one of disable, reboot, got 'explode'"),
        (_Request({"slave": ["no such/name"]}), "slave: expected a hostname"),
        (_Request(last_event_id="yesterday"), "Last-Event-ID: expected a non-negative integer"),
        (_Request({"last_event_id": ["-3"]}), "Last-Event-ID: expected a non-negative integer"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(request_: _Request, message: str) -> None:
    with pytest.raises(HTTPProblem) as raised:
        _streams(ResultEvents(id_base=0), Clock()).serve(request_, ACTIONS)  # type: ignore[arg-type]
    assert raised.value.status == 400 and raised.value.msg.startswith(message)


def test_last_event_id_resumes_after_that_event() -> None:
    hub = ResultEvents(id_base=0)
    for requestid in range(4):
        hub.publish(REQUESTED, _result(requestid=requestid))
    request = _Request(last_event_id="2")
    _streams(hub, Clock()).serve(request, ACTIONS)  # type: ignore[arg-type]
    hub.publish(FINISHED, _result(requestid=9))
    assert [frame["id"] for frame in request.frames()] == [3, 4, 5]
    by_query = _Request({"last_event_id": ["4"]})
    _streams(hub, Clock()).serve(by_query, ACTIONS)  # type: ignore[arg-type]
    assert [frame["id"] for frame in by_query.frames()] == [5]


def test_keepalive_comments_come_every_interval() -> None:
    clock, request = Clock(), _Request()
    _streams(ResultEvents(id_base=0), clock).serve(request, ACTIONS)  # type: ignore[arg-type]
    clock.advance(KEEPALIVE - 0.5)
    assert b": keepalive\n\n" not in request.written
    clock.advance(1)
    clock.advance(KEEPALIVE)
    assert request.written.count(b": keepalive\n\n") == 2


def test_a_paused_reader_gets_what_waited_once_it_resumes() -> None:
    hub, request = ResultEvents(id_base=0), _Request()
    _streams(hub, Clock()).serve(request, ACTIONS)  # type: ignore[arg-type]
    request.producer.pauseProducing()
    hub.publish(REQUESTED, _result(requestid=1))
    hub.publish(REQUESTED, _result(requestid=2))
    assert request.frames() == []
    request.producer.resumeProducing()
    assert [frame["data"]["requestid"] for frame in request.frames()] == [1, 2]


def test_a_reader_too_slow_is_dropped_not_buffered_for_ever() -> None:
    hub, request = ResultEvents(id_base=0), _Request()
    streams = _streams(hub, Clock(), _config(max_queued=3))
    done = streams.serve(request, ACTIONS)  # type: ignore[arg-type]
    request.producer.pauseProducing()
    for requestid in range(3):
        hub.publish(REQUESTED, _result(requestid=requestid))
    assert not request.transport.aborted
    hub.publish(REQUESTED, _result(requestid=3))
    assert request.transport.aborted and done.called
    assert request.producer is None  # unregistered before done fired: the request can end cleanly
    assert streams.open_count() == 0
    written = list(request.written)
    hub.publish(REQUESTED, _result(requestid=4))  # no longer subscribed: nothing more is kept for it
    assert request.written == written
    assert hub.since(0)[-1].requestid == 4  # (published indeed)


def test_a_slow_reader_is_dropped_past_the_bytes_bound_too() -> None:
    hub, request = ResultEvents(id_base=0), _Request()
    streams = _streams(hub, Clock(), _config(max_queued=1000, max_queued_bytes=4096))
    done = streams.serve(request, ACTIONS)  # type: ignore[arg-type]
    request.producer.pauseProducing()
    hub.publish(PROGRESS, _result(text="x" * 3000))
    assert not request.transport.aborted  # one event of 3 kB waits: within 4 kB
    hub.publish(PROGRESS, _result(text="x" * 3000))
    assert request.transport.aborted and done.called and streams.open_count() == 0


def test_bytes_written_after_a_pause_no_longer_count() -> None:
    hub, request = ResultEvents(id_base=0), _Request()
    _streams(hub, Clock(), _config(max_queued_bytes=4096)).serve(request, ACTIONS)  # type: ignore[arg-type]
    for _ in range(3):
        request.producer.pauseProducing()
        hub.publish(PROGRESS, _result(text="x" * 3000))
        request.producer.resumeProducing()
    assert not request.transport.aborted and len(request.frames()) == 3


def test_at_most_max_clients_streams_then_503() -> None:
    streams = _streams(ResultEvents(id_base=0), Clock(), _config(max_clients=2))
    first = streams.serve(_Request(), ACTIONS)  # type: ignore[arg-type]
    streams.serve(_Request(), ACTIONS)  # type: ignore[arg-type]
    with pytest.raises(HTTPProblem) as raised:
        streams.serve(_Request(), ACTIONS)  # type: ignore[arg-type]
    assert raised.value.status == 503 and "max_clients" in raised.value.msg
    first.cancel()  # the client went away
    streams.serve(_Request(), ACTIONS)  # type: ignore[arg-type]
    assert streams.open_count() == 2


def test_a_client_going_away_unsubscribes_and_stops_its_keepalive() -> None:
    hub, clock, request = ResultEvents(id_base=0), Clock(), _Request()
    done: Deferred[None] = _streams(hub, clock).serve(request, ACTIONS)  # type: ignore[arg-type]
    done.cancel()
    written = len(request.written)
    hub.publish(REQUESTED, _result())
    clock.advance(KEEPALIVE * 3)
    assert len(request.written) == written
    assert clock.getDelayedCalls() == []


def test_stopping_ends_every_stream() -> None:
    clock = Clock()
    streams = _streams(ResultEvents(id_base=0), clock)
    streams.startService()
    ends = [streams.serve(_Request(), ACTIONS) for _ in range(2)]  # type: ignore[arg-type]
    requests = [_Request(), _Request()]
    ends += [streams.serve(request, ACTIONS) for request in requests]  # type: ignore[arg-type]
    streams.stopService()
    assert all(end.called for end in ends)
    assert streams.open_count() == 0 and clock.getDelayedCalls() == []
    # Their connections close (a keep-alive one must not bring a new stream), and none opens now.
    assert all(request.transport.closed and not request.transport.aborted for request in requests)
    with pytest.raises(HTTPProblem) as refused:
        streams.serve(_Request(), ACTIONS)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.msg) == (503, "events: the service is stopping")
    assert streams.open_count() == 0


def test_without_events_the_route_is_a_503() -> None:
    with pytest.raises(HTTPProblem) as raised:
        _streams(None, Clock()).serve(_Request(), ACTIONS)  # type: ignore[arg-type]
    assert raised.value.status == 503


class _StalledClient(Protocol):
    """Asks for C{/events} and then reads nothing, like a reader that cannot keep up."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        cast(Any, self.transport).pauseProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_on_a_real_site_is_dropped_cleanly() -> None:
    from twisted.internet import reactor

    hub = ResultEvents(id_base=0)
    streams = EventStreams(hub, reactor, lambda: _config(max_queued_bytes=64 * 1024))
    app = Klein()

    opened: Deferred[Any] = Deferred()

    @app.route("/events")
    def events(request: Any) -> Deferred[None]:
        done = streams.serve(request, ACTIONS)
        opened.callback(request.notifyFinish().addErrback(lambda _: None))
        return done

    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    port = cast(Any, reactor).listenTCP(0, Site(app.resource()), interface="127.0.0.1")
    client = _StalledClient()
    try:
        await ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
        ended = await within(reactor, 30, opened, "the stream")
        # Far more than the connection and the queue can hold: the reader is dropped on the way.
        for requestid in range(200):
            hub.publish(PROGRESS, _result(requestid=requestid, text="x" * 32 * 1024))
            if streams.open_count() == 0:
                break
        assert streams.open_count() == 0
        await within(reactor, 30, ended, "the request's end on the server")
        cast(Any, client.transport).resumeProducing()  # reading again, it sees the connection gone
        await within(reactor, 30, client.lost, "the dropped connection")
    finally:
        globalLogPublisher.removeObserver(observer)
        await port.stopListening()
    texts = [formatEvent(entry) for entry in logged]
    assert any("Dropping a slow /events reader" in text for text in texts)
    assert not [entry for entry in logged if "log_failure" in entry], texts
    assert not [text for text in texts if "not unregistered" in text]
