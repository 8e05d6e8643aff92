"""
Following one requested action until it finishes, for C{slaveapi-cli run}.

Live first: the server's C{/events} stream (Server-Sent Events), filtered
on the machine and action and then on the request id, resumed with
C{Last-Event-ID} when the connection drops. A server without C{/events}
(it answers 404: an older release; or 503: events are off) is polled instead, once a second. Either
way the whole follow is bounded by the caller's timeout.

The stream is read line by line with a bounded read: the server sends a
keepalive comment every 15 seconds, so a read that waits much longer than
that means a dead connection, not a quiet action. Keepalives keep reads
alive for ever, so the follow's deadline is checked on every line too.

A stream that drops (closed, timed out, cut inside a chunk) is reopened
after the last event seen; an event replayed with an id not above it is
ignored. A stream that cannot be opened at all gives way to polling.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from typing import Any

from slaveapi.cli._client import APIError, SlaveAPIClient, Unreachable

#: States of a finished result (L{slaveapi.results}: 2 SUCCESS, 3 FAILURE).
DONE_STATES = (2, 3)
#: Seconds between polls when the server has no C{/events}.
POLL_INTERVAL = 1.0
#: Seconds one read of the stream may wait: well past the 15 s keepalive.
STREAM_READ_LIMIT = 45.0
#: Times the stream is reopened after it drops before polling instead.
RECONNECT_LIMIT = 5

Result = dict[str, Any]
OnUpdate = Callable[[Result], None]


class FollowTimeout(Exception):
    """The action had not finished when the follow's time was up."""


@dataclass(frozen=True)
class Target:
    """
    The request followed: its machine and action as the command named them
    (C{route} may be a route such as C{start}, or C{get_uptime}).
    """

    slave: str
    route: str
    requestid: int

    @property
    def result_path(self) -> str:
        return f"/slaves/{urllib.parse.quote(self.slave, safe='')}/actions/{urllib.parse.quote(self.route, safe='')}"


def is_done(result: Result) -> bool:
    return result.get("state") in DONE_STATES


@dataclass
class _Position:
    """
    How far the stream has been read: the last event id seen, kept here so
    that a read cut by an error still resumes after it.
    """

    last_id: str | None = None

    def is_new(self, event_id: str) -> bool:
        """Whether C{event_id} comes after the last one seen (ids are increasing integers)."""
        if self.last_id is None:
            return True
        try:
            return int(event_id) > int(self.last_id)
        except ValueError:
            return event_id != self.last_id


@dataclass
class Follower:
    """
    Follows one request, by events or by polling, calling C{on_update}
    with each state of its result (repeats included; the display skips them).

    @ivar clock: monotonic seconds; L{sleep} waits between polls. Both are
        replaceable so that tests never wait for real time.
    @ivar how: C{"events"} or C{"polling"}: how the last follow went, for
        C{--verbose}.
    @ivar received: how many of the request's events the stream brought.
    """

    client: SlaveAPIClient
    on_update: OnUpdate
    poll_interval: float = POLL_INTERVAL
    use_events: bool = True
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    how: str = ""
    received: int = 0

    def follow(self, target: Target, timeout: float) -> Result:
        """
        The finished result of C{target}, within C{timeout} seconds.

        @raise FollowTimeout: it had not finished in time.
        @raise APIError: the server answered an error (other than C{/events}
            missing).
        @raise Unreachable: the server could not be asked.
        """
        deadline = self.clock() + timeout
        if self.use_events:
            result = self._by_events(target, deadline)
            if result is not None:
                self.how = "events"
                return result
        self.how = "polling"
        return self._by_polling(target, deadline)

    def _poll_once(self, target: Target) -> Result:
        result: Result = self.client.get(target.result_path, [("requestid", str(target.requestid))])
        self.on_update(result)
        return result

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise FollowTimeout()
        return remaining

    def _by_polling(self, target: Target, deadline: float) -> Result:
        while True:
            result = self._poll_once(target)
            if is_done(result):
                return result
            self.sleep(min(self.poll_interval, self._remaining(deadline)))

    def _filters(self, target: Target) -> list[tuple[str, str]]:
        """
        The stream's filters: the result's machine and action as the server
        files them (canonical name, action rather than route), read from
        the C{/results} page holding just this request. None when that page
        cannot be read: the request id alone then picks the events.
        """
        if target.requestid < 1:
            return []
        try:
            page = self.client.get("/results", [("since", str(target.requestid - 1)), ("limit", "1")])
        except APIError:
            return []
        entries = page.get("results") if isinstance(page, dict) else None
        if not entries or entries[0].get("requestid") != target.requestid:
            return []
        return [("slave", str(entries[0]["slave"])), ("action", str(entries[0]["action"]))]

    def _by_events(self, target: Target, deadline: float) -> Result | None:
        """
        The finished result from the event stream; C{None} (poll instead) when
        the server has no C{/events}, the stream cannot be opened, or it kept
        dropping.
        """
        filters = self._filters(target)
        position = _Position()
        for _attempt in range(RECONNECT_LIMIT + 1):
            headers = {"Accept": "text/event-stream"}
            if position.last_id is not None:
                headers["Last-Event-ID"] = position.last_id
            read_limit = min(STREAM_READ_LIMIT, self._remaining(deadline))
            try:
                stream = self.client.stream("/events", filters, headers, timeout=read_limit)
            except APIError as error:
                # 404: a server older than /events; 503: one with events off.
                if error.status in (404, 503):
                    return None
                raise
            except Unreachable:
                # Polling then says whether the server itself is gone.
                return None
            with stream:
                # Anything that happened before the stream opened is in the result now.
                if position.last_id is None:
                    current = self._poll_once(target)
                    if is_done(current):
                        return current
                try:
                    finished = self._read(stream, target, position, deadline)
                except (TimeoutError, OSError, HTTPException):
                    finished = None
            if finished is not None:
                return finished
            self._remaining(deadline)
        return None

    def _read(self, stream: HTTPResponse, target: Target, position: _Position, deadline: float) -> Result | None:
        """
        Read events until this request's result finishes (returned) or the
        stream ends (C{None}), moving C{position} past each event read.

        @raise FollowTimeout: the deadline passed (checked on every line:
            keepalives alone would keep the stream going for ever).
        """
        event_id: str | None = None
        data: list[str] = []
        while True:
            _bound_next_read(stream, min(STREAM_READ_LIMIT, self._remaining(deadline)))
            raw = stream.readline()
            self._remaining(deadline)
            if not raw:
                return None
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line == "":
                fresh = event_id is None or position.is_new(event_id)
                if event_id is not None and fresh:
                    position.last_id = event_id
                result = _event_result(data, target.requestid) if fresh else None
                event_id, data = None, []
                if result is not None:
                    self.received += 1
                    self.on_update(result)
                    if is_done(result):
                        return result
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "data":
                    data.append(value)


def _bound_next_read(stream: HTTPResponse, seconds: float) -> None:
    """
    Bound the stream's next read by C{seconds}, so that it cannot outlast
    the follow's deadline. The standard library sets a socket's timeout only
    when connecting; its socket is reached through the response's file. A
    response without one (not from a socket) keeps the timeout it opened with.
    """
    sock = getattr(getattr(stream.fp, "raw", None), "_sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(max(seconds, 0.001))


def _event_result(data: list[str], requestid: int) -> Result | None:
    """The result an event's data carries, if it is about C{requestid}."""
    if not data:
        return None
    try:
        result = json.loads("\n".join(data))
    except ValueError:
        return None
    if not isinstance(result, dict) or result.get("requestid") != requestid:
        return None
    return result


__all__ = ["DONE_STATES", "FollowTimeout", "Follower", "Target", "Unreachable", "is_done"]
