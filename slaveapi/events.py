"""
Result events: what the processor tells the rest of the service as results change.

The processor publishes a L{ResultEvent} whenever a result is created
(C{requested}), starts (C{started}), reports progress (C{progress}) or
finishes (C{finished}). Subscribers (the C{GET /events} streams, webhooks,
metrics) are called synchronously, in the processor's own call: they must
be quick, and none of them may break an action, so whatever one raises is
logged and forgotten. The latest events are kept in memory, at most
L{DEFAULT_BUFFER} of them and at most C{max_bytes} of their JSON (a progress
event carries the whole text so far, so a count alone bounds nothing), so
that a stream that reconnects can resume after the last event it saw
(L{ResultEvents.since}).

Ids are increasing integers that keep increasing across restarts: each
process starts them above a base taken from the time it starts
(milliseconds since the epoch, times 1000), so a client that resumes with
an id from the previous process misses none of the new one's events,
unless that process published more than a thousand events per millisecond
of its life.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from twisted.logger import Logger

from slaveapi.results import ActionResult

REQUESTED: Final = "requested"
STARTED: Final = "started"
PROGRESS: Final = "progress"
FINISHED: Final = "finished"

#: Every kind of event, in the order a result goes through them.
KINDS: Final = (REQUESTED, STARTED, PROGRESS, FINISHED)

#: How many events are kept for streams that resume, at most.
DEFAULT_BUFFER: Final = 10_000

#: How many bytes of events' JSON are kept for streams that resume, at most.
DEFAULT_BUFFER_BYTES: Final = 8 * 1024 * 1024

#: Ids a process may use per millisecond between its start and the next one's.
_IDS_PER_MILLISECOND: Final = 1000


@dataclass(frozen=True)
class ResultEvent:
    """
    One change of one result, as it stood at that moment.

    @ivar id: increasing, within one process and across restarts.
    @ivar kind: one of L{KINDS}.
    @ivar client: the API client that asked for the action, if known.
    @ivar local: whether this instance runs the action; with several
        instances (L{slaveapi.postgres}), the others' changes are published
        too, for event streams, but only the instance running an action
        sends its webhooks.
    """

    id: int
    kind: str
    requestid: int
    slave: str
    action: str
    state: int
    text: Any
    client: str | None
    request_timestamp: int
    start_timestamp: int
    finish_timestamp: int
    local: bool = True

    def to_json(self) -> dict[str, Any]:
        """What C{GET /events} sends of it (the client who asked stays out of the public stream)."""
        return {
            "requestid": self.requestid,
            "slave": self.slave,
            "action": self.action,
            "state": self.state,
            "text": self.text,
            "kind": self.kind,
            "request_timestamp": self.request_timestamp,
            "start_timestamp": self.start_timestamp,
            "finish_timestamp": self.finish_timestamp,
        }

    @cached_property
    def data(self) -> str:
        """L{to_json} as one line of JSON (ASCII only: its length is its size in bytes), made once."""
        return json.dumps(self.to_json(), sort_keys=True, default=str)


Subscriber = Callable[[ResultEvent], None]


class ResultEvents:
    """
    The hub result events go through: published by the processor, delivered
    to every subscriber at once, and kept in a bounded buffer.

    @param buffer: how many of the latest events L{since} can give back, at most.
    @param max_bytes: how many bytes of their JSON (L{ResultEvent.data}) it
        keeps, at most (the latest event is always kept).
    @param id_base: the first event's id is one more; by default, from the
        time (see the module's docstring).
    """

    _log = Logger()

    def __init__(
        self, buffer: int = DEFAULT_BUFFER, max_bytes: int = DEFAULT_BUFFER_BYTES, id_base: int | None = None
    ) -> None:
        self._buffer: deque[ResultEvent] = deque()
        self._max_events = buffer
        self._max_bytes = max_bytes
        self._bytes = 0
        self._subscribers: list[Subscriber] = []
        self._last_id = int(time.time() * 1000) * _IDS_PER_MILLISECOND if id_base is None else id_base

    @property
    def last_id(self) -> int:
        """The id of the latest event published; the id base before the first."""
        return self._last_id

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """
        Call C{callback} with every event published from now on.

        @return: a function that unsubscribes it (calling it twice is harmless).
        """
        entry = _Subscription(callback)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    def publish(self, kind: str, result: ActionResult, local: bool = True) -> ResultEvent:
        """
        Record C{result} as it is now as an event of C{kind}, and tell every
        subscriber; C{local} false for a change another instance made.
        """
        self._last_id += 1
        event = ResultEvent(
            id=self._last_id,
            kind=kind,
            requestid=result.requestid,
            slave=result.slave,
            action=result.action,
            state=result.state,
            text=result.text,
            client=result.client,
            request_timestamp=result.request_timestamp,
            start_timestamp=result.start_timestamp,
            finish_timestamp=result.finish_timestamp,
            local=local,
        )
        self._keep(event)
        # A copy: a subscriber may unsubscribe (or subscribe another) while being told.
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                self._log.failure(
                    "A result event subscriber failed on event {event_id} ({kind} of request {requestid})",
                    event_id=event.id,
                    kind=event.kind,
                    requestid=event.requestid,
                )
        return event

    def _keep(self, event: ResultEvent) -> None:
        """Buffer C{event}, forgetting the oldest ones past either bound."""
        self._buffer.append(event)
        self._bytes += len(event.data)
        while len(self._buffer) > 1 and (len(self._buffer) > self._max_events or self._bytes > self._max_bytes):
            self._bytes -= len(self._buffer.popleft().data)

    def since(self, event_id: int) -> list[ResultEvent]:
        """The buffered events after C{event_id}, oldest first (older ones than the buffer holds are gone)."""
        return [event for event in self._buffer if event.id > event_id]


@dataclass(eq=False)
class _Subscription:
    """One subscriber; compared by identity, so one callback may subscribe twice."""

    callback: Subscriber

    def __call__(self, event: ResultEvent) -> None:
        self.callback(event)
