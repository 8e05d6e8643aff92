"""
Following one requested action until it finishes, for C{slaveapi-cli run}.

Live first: the server's C{/events} stream (Server-Sent Events), filtered
on the machine and action and then on the request id, resumed with
C{Last-Event-ID} when the connection drops. A server without C{/events}
(it answers 404: an older release; or 503: events are off) is polled instead, once a second. Either
way the whole follow is bounded by the caller's timeout.

The stream is read line by line with a bounded read: the server sends a
keepalive comment every 15 seconds, so a read that waits much longer than
that means a dead connection, not a quiet action.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPResponse
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
        """The finished result from the event stream; C{None} when the server has no C{/events}."""
        filters = self._filters(target)
        last_id: str | None = None
        for _attempt in range(RECONNECT_LIMIT + 1):
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            read_limit = min(STREAM_READ_LIMIT, self._remaining(deadline))
            try:
                stream = self.client.stream("/events", filters, headers, timeout=read_limit)
            except APIError as error:
                # 404: a server older than /events; 503: one with events off.
                if error.status in (404, 503):
                    return None
                raise
            with stream:
                # Anything that happened before the stream opened is in the result now.
                if last_id is None:
                    current = self._poll_once(target)
                    if is_done(current):
                        return current
                try:
                    finished, last_id = self._read(stream, target, last_id)
                except (TimeoutError, OSError):
                    finished = None
            if finished is not None:
                return finished
            self._remaining(deadline)
        return None

    def _read(self, stream: HTTPResponse, target: Target, last_id: str | None) -> tuple[Result | None, str | None]:
        """
        Read events until this request's result finishes (returned) or the
        stream ends (C{None}); with the last event id seen, to resume from.
        """
        event_id: str | None = None
        data: list[str] = []
        while True:
            raw = stream.readline()
            if not raw:
                return None, last_id
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line == "":
                if event_id is not None:
                    last_id = event_id
                result = _event_result(data, target.requestid)
                event_id, data = None, []
                if result is not None:
                    self.received += 1
                    self.on_update(result)
                    if is_done(result):
                        return result, last_id
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "data":
                    data.append(value)


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
