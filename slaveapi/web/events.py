"""
C{GET /events}: result changes as Server-Sent Events.

Each stream subscribes to the service's L{ResultEvents} and writes every
event its filters let through as::

    id: <event id>
    event: result
    data: {"requestid": ..., "slave": ..., "action": ..., "state": ..., "text": ..., "kind": ...,
           "request_timestamp": ..., "start_timestamp": ..., "finish_timestamp": ...}

(C{data} is one line), with a C{: keepalive} comment every L{KEEPALIVE}
seconds so that proxies and clients can tell a quiet stream from a dead
one. A client that reconnects with C{Last-Event-ID} (or C{last_event_id})
first gets the buffered events after that id. Nothing is buffered for ever:
the stream is a push producer on its connection, and while the connection
cannot take more, events wait in a queue of at most C{[events] max_queued}
events and C{max_queued_bytes} bytes (a progress event carries the whole
text so far: a count alone bounds nothing); a reader slower than that is
disconnected (it may reconnect and resume). At
most C{[events] max_clients} streams are open at once; the service closes
them all when it stops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from slaveapi.config import Config
from slaveapi.events import ResultEvent, ResultEvents
from slaveapi.machines import canonical_name
from slaveapi.web import params
from slaveapi.web.errors import HTTPProblem, bad_request

#: Seconds between keepalive comments on a stream.
KEEPALIVE: Final = 15.0

#: Seconds a client refused for too many streams is asked to wait.
_RETRY_AFTER: Final = b"5"


class EventStreams(Service):
    """
    The open C{GET /events} streams.

    @param events: the hub streams subscribe to; C{None}: C{/events} answers 503.
    @param clock: runs the keepalives.
    @param config: the current configuration (C{[events]} limits; slave names
        made canonical as everywhere else).
    """

    _log = Logger()

    def __init__(
        self,
        events: ResultEvents | None,
        clock: Any,
        config: Callable[[], Config],
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._events = events
        self._clock = clock
        self._config = config
        self._keepalive = keepalive
        self._streams: set[_Stream] = set()
        self._stopped = False

    def open_count(self) -> int:
        """How many streams are open."""
        return len(self._streams)

    def serve(self, request: IRequest, actions: Collection[str]) -> Deferred[None]:
        """
        Stream the events C{request} asks for until the client goes away or
        the service stops.

        @param actions: the action names C{action} may filter on.
        @raise HTTPProblem: 400 for a bad filter or C{Last-Event-ID}; 503
            without events or with C{max_clients} streams open already.
        """
        config = self._config()
        wanted = _filter(request, config, actions)
        after = _last_event_id(request)
        if self._events is None:
            raise HTTPProblem(503, "unavailable", "events: result events are not published in this service")
        if self._stopped:
            raise HTTPProblem(503, "unavailable", "events: the service is stopping", {b"Retry-After": _RETRY_AFTER})
        limit = config.events.max_clients
        if len(self._streams) >= limit:
            raise HTTPProblem(
                503,
                "unavailable",
                f"events: {limit} streams are open already ([events] max_clients); retry later",
                {b"Retry-After": _RETRY_AFTER},
            )
        bounds = _Bounds(config.events.max_queued, config.events.max_queued_bytes)
        stream = _Stream(request, self._clock, self._keepalive, bounds, wanted, self._streams.discard)
        self._streams.add(stream)
        stream.start(self._events, after)
        return stream.done

    def stopService(self) -> None:
        """End every stream: its clients see the stream close and may reconnect elsewhere."""
        super().stopService()
        self._stopped = True
        for stream in list(self._streams):
            stream.end()


@dataclass(frozen=True)
class _Bounds:
    """How much may wait for one reader: events, and bytes of them."""

    events: int
    bytes: int


@implementer(IPushProducer)
class _Stream:
    """
    One client's stream: writes while the connection takes it, queues
    (boundedly) while it is paused, and drops the client past the bound.

    @ivar done: fires when the stream ends; cancelling it (the client went
        away) ends it too.
    """

    _log = Logger()

    def __init__(
        self,
        request: IRequest,
        clock: Any,
        keepalive: float,
        bounds: _Bounds,
        wanted: Callable[[ResultEvent], bool],
        ended: Callable[[_Stream], None],
    ) -> None:
        self._request = request
        self._bounds = bounds
        self._queued_bytes = 0
        self._wanted = wanted
        self._ended = ended
        self._paused = False
        self._queued: deque[bytes] = deque()
        self._unsubscribe: Callable[[], None] = lambda: None
        self._keepalive = LoopingCall(self._comment)
        self._keepalive.clock = clock
        self._keepalive_interval = keepalive
        self.done: Deferred[None] = Deferred(lambda _: self._close())

    def start(self, events: ResultEvents, after: int | None) -> None:
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        cast(IConsumer, request).registerProducer(self, True)
        # Something at once: the client has its headers without waiting for the first event.
        request.write(b": connected\n\n")
        # Replay and subscribe in one go: no event can be published in between.
        for event in events.since(after) if after is not None else []:
            self._offer(event)
        self._unsubscribe = events.subscribe(self._offer)
        self._keepalive.start(self._keepalive_interval, now=False)

    def _offer(self, event: ResultEvent) -> None:
        if self.done.called or not self._wanted(event):
            return
        self._send(_frame(event))

    def _comment(self) -> None:
        # A keepalive is only worth sending to a reader that keeps up.
        if not self._paused and not self._queued:
            self._send(b": keepalive\n\n")

    def _send(self, data: bytes) -> None:
        if not self._paused:
            self._request.write(data)
            return
        self._queued.append(data)
        self._queued_bytes += len(data)
        bounds = self._bounds
        if len(self._queued) > bounds.events or self._queued_bytes > bounds.bytes:
            self._log.info(
                "Dropping a slow /events reader: more than {limit} events or {limit_bytes} bytes waiting for it",
                limit=bounds.events,
                limit_bytes=bounds.bytes,
            )
            self._drop()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queued and not self._paused and not self.done.called:
            data = self._queued.popleft()
            self._queued_bytes -= len(data)
            self._request.write(data)

    def stopProducing(self) -> None:
        self._close()

    def end(self) -> None:
        """Finish the stream normally (the service stops)."""
        if not self.done.called:
            cast(IConsumer, self._request).unregisterProducer()
            self._release()
            self.done.callback(None)
            # The response is finished; its keep-alive connection must not carry a new stream to a stopping service.
            transport = getattr(self._request, "transport", None)
            if transport is not None:
                transport.loseConnection()

    def _drop(self) -> None:
        """
        Disconnect a reader too slow: no longer its request's producer, the
        connection aborted (nothing more, not even the end of the response,
        is sent), and only then C{done} fired.
        """
        if self.done.called:
            return
        cast(IConsumer, self._request).unregisterProducer()
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()
        self._close()

    def _close(self) -> None:
        """The client is gone (or is being dropped): stop everything, fire C{done} if nobody did."""
        self._release()
        if not self.done.called:
            self.done.callback(None)

    def _release(self) -> None:
        self._unsubscribe()
        self._queued.clear()
        self._queued_bytes = 0
        if self._keepalive.running:
            self._keepalive.stop()
        self._ended(self)


def _frame(event: ResultEvent) -> bytes:
    """One event in the SSE format; JSON puts no raw newline in C{data}."""
    return f"id: {event.id}\nevent: result\ndata: {event.data}\n\n".encode()


def _filter(request: IRequest, config: Config, actions: Collection[str]) -> Callable[[ResultEvent], bool]:
    """What the C{slave} and C{action} query parameters (each repeatable) let through."""
    slaves = {canonical_name(config, params.slave_name(name)) for name in params.values(request, "slave")}
    chosen = set(params.values(request, "action"))
    unknown = sorted(chosen - set(actions))
    if unknown:
        raise bad_request(f"action: expected one of {', '.join(sorted(actions))}, got {unknown[0][:60]!r}")

    def wanted(event: ResultEvent) -> bool:
        return (not slaves or event.slave.lower() in slaves) and (not chosen or event.action in chosen)

    return wanted


def _last_event_id(request: IRequest) -> int | None:
    """The id to resume after: the C{Last-Event-ID} header, else the C{last_event_id} parameter."""
    header = request.getHeader(b"last-event-id")
    raw = header.decode("latin-1") if header is not None else params.value(request, "last_event_id")
    if raw is None or raw.strip() == "":
        return None
    try:
        number = int(raw.strip())
    except ValueError:
        number = -1
    if number < 0:
        raise bad_request(f"Last-Event-ID: expected a non-negative integer event id, got {raw[:40]!r}")
    return number
