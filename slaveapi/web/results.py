"""
C{GET /results}: every result nested by slave, action and requestid (the 2015
shape), or, given any filter, one page of results in request-id order.

Without any of the page parameters the answer is the 2015 reference's
C{{"<slave>": {"<action>": {"<requestid>": {...}}}}} with every kept result.
It is streamed: the store is read L{EACH_CHUNK} results at a time (by slave,
action and request id), each chunk encoded and written to the connection in
its own reactor turn, so neither the reactor nor memory is held by the whole
answer. Once the first chunk is written the status (200) is sent: a read
that fails later aborts the connection, so that the client sees a truncated
answer rather than a complete-looking one.

With any of C{slave}, C{action}, C{state}, C{since}, C{after} or C{limit} the
answer is a page: C{{"results": [...], "next": ...}}, each result the 2015
per-result dict plus C{slave}, C{action} and C{requestid}, in ascending
request-id order, and C{next} the path of the following page, or C{null}
when no more results match now. C{next} keeps every filter and bounds the
request id by the last one shown (C{since=<requestid>}, or C{after=} when
C{since} is a time, so that the time filter stays). Request ids only grow,
so following C{next} neither skips nor repeats a result while new ones are
added. As elsewhere in the API, query parameters that are not among these
are ignored; a page parameter with a bad value is a 400 naming it.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.iweb import IRequest

from slaveapi.actions import Action
from slaveapi.context import Context
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import EACH_CHUNK, MAX_REQUESTID, IResultStore, ResultQuery, StoreUnavailable
from slaveapi.web import known, params
from slaveapi.web.errors import bad_request, json_body, store_unreadable

#: The parameters that ask for a page rather than every result.
PAGE_PARAMETERS = ("slave", "action", "state", "since", "after", "limit")

#: Results in a page unless C{limit} says otherwise, and the most it may say.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

#: A space between the time and its offset: an unencoded "+".
_UNENCODED_PLUS = re.compile(r" (\d\d(?::?\d\d)?)$")

_STATES = {"PENDING": PENDING, "RUNNING": RUNNING, "SUCCESS": SUCCESS, "FAILURE": FAILURE}


@dataclass(frozen=True)
class PageRequest:
    """
    A page asked for, its parameters checked.

    @ivar since_requestid: C{since} given as a request id.
    @ivar since_time: C{since} given as a time, in whole Unix seconds.
    @ivar after: C{after}, a request id: only results with a greater one
        (C{next} uses it with a time in C{since}).
    """

    slave: str | None = None
    action: str | None = None
    state: int | None = None
    since_requestid: int | None = None
    since_time: int | None = None
    after: int | None = None
    limit: int = DEFAULT_LIMIT

    def query(self) -> ResultQuery:
        """The store query, one result more than the page to know whether another follows."""
        return ResultQuery(
            slave=self.slave,
            action=self.action,
            state=self.state,
            after_requestid=_greatest(self.since_requestid, self.after),
            requested_since=self.since_time,
            limit=self.limit + 1,
        )

    def next_path(self, last_requestid: int) -> str:
        """The path of the page after the result C{last_requestid}, with the same filters."""
        fields: list[tuple[str, str]] = []
        if self.slave is not None:
            fields.append(("slave", self.slave))
        if self.action is not None:
            fields.append(("action", self.action))
        if self.state is not None:
            fields.append(("state", str(self.state)))
        if self.since_time is not None:
            fields.append(("since", f"@{self.since_time}"))
            fields.append(("after", str(last_requestid)))
        else:
            fields.append(("since", str(last_requestid)))
        fields.append(("limit", str(self.limit)))
        return "/results?" + urllib.parse.urlencode(fields)


def _greatest(*bounds: int | None) -> int | None:
    """The tightest of the request-id lower bounds given, or None."""
    given = [bound for bound in bounds if bound is not None]
    return max(given) if given else None


def _asked_for_page(request: IRequest) -> bool:
    given = request.args or {}
    return any(name.encode("ascii") in given for name in PAGE_PARAMETERS)


def _slave(request: IRequest, ctx: Context) -> str | None:
    raw = params.value(request, "slave")
    if raw is None:
        return None
    return known.read_name(ctx, params.slave_name(raw.strip()))


def _action(request: IRequest, actions: Iterable[Action]) -> str | None:
    """The action's name, given as its name or one of its routes."""
    raw = params.value(request, "action")
    if raw is None:
        return None
    names: dict[str, str] = {}
    for action in actions:
        names[action.name] = action.name
        for route in action.routes:
            names.setdefault(route, action.name)
    found = names.get(raw.strip())
    if found is None:
        known_names = sorted({action.name for action in actions})
        raise bad_request(f"action: expected one of {', '.join(known_names)}, got {raw[:40]!r}")
    return found


def _state(request: IRequest) -> int | None:
    raw = params.value(request, "state")
    if raw is None:
        return None
    text = raw.strip()
    if params.is_number(text) and int(text) in _STATES.values():
        return int(text)
    if text.upper() in _STATES:
        return _STATES[text.upper()]
    raise bad_request(f"state: expected 0-3 or one of PENDING, RUNNING, SUCCESS, FAILURE (any case), got {raw[:40]!r}")


def _since(request: IRequest) -> tuple[int | None, int | None]:
    """
    C{since} as (request id, None) or (None, Unix second): digits alone are a
    request id; C{@} and Unix seconds, Unix seconds with a decimal point, or
    an ISO-8601 time with a C{T} and a UTC offset (or C{Z}) are a time.
    """
    raw = params.value(request, "since")
    if raw is None:
        return None, None
    text = raw.strip()
    expected = (
        "since: expected a requestid (digits only), or a time: @<unix seconds>, "
        "unix seconds with a decimal point, or ISO-8601 with a UTC offset (2026-11-29T10:00:00Z)"
    )
    if params.is_number(text):
        number = int(text)
        if number > MAX_REQUESTID:
            raise bad_request(f"since: expected a requestid of at most {MAX_REQUESTID}, got {raw[:40]!r}")
        return number, None
    seconds: float | None = None
    if text.startswith("@") or ("." in text and "T" not in text.upper()):
        number_text = text[1:] if text.startswith("@") else text
        try:
            digits = number_text.replace(".", "", 1)
            seconds = float(number_text) if digits.isascii() and digits.isdigit() and len(digits) <= 64 else None
        except ValueError:
            seconds = None
    elif "T" in text.upper():
        # Lowercase t and z are ISO-8601 too; a "+" sent unencoded in a
        # query string arrives as a space before the offset.
        iso = _UNENCODED_PLUS.sub(r"+\1", text.upper())
        try:
            when = datetime.datetime.fromisoformat(iso)
        except ValueError:
            raise bad_request(f"{expected}, got {raw[:40]!r}") from None
        if when.tzinfo is None:
            raise bad_request(f"since: the time needs a UTC offset or Z (2026-11-29T10:00:00Z), got {raw[:40]!r}")
        try:
            seconds = when.timestamp()
        except (OverflowError, OSError, ValueError):
            seconds = None
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_REQUESTID:
        raise bad_request(f"{expected}, got {raw[:40]!r}")
    # Request timestamps are kept to the second: a request in the second of
    # C{since} counts as at or after it.
    return None, math.floor(seconds)


def _after(request: IRequest) -> int | None:
    raw = params.value(request, "after")
    if raw is None:
        return None
    text = raw.strip()
    if not params.is_number(text) or int(text) > MAX_REQUESTID:
        raise bad_request(f"after: expected a requestid (digits only, at most {MAX_REQUESTID}), got {raw[:40]!r}")
    return int(text)


def page_request(request: IRequest, ctx: Context, actions: Iterable[Action]) -> PageRequest:
    """The page C{request} asks for; a 400 naming the first bad parameter."""
    actions = list(actions)
    since_requestid, since_time = _since(request)
    return PageRequest(
        slave=_slave(request, ctx),
        action=_action(request, actions),
        state=_state(request),
        since_requestid=since_requestid,
        since_time=since_time,
        after=_after(request),
        limit=params.limit(request, DEFAULT_LIMIT, MAX_LIMIT),
    )


def page_entry(result: ActionResult) -> dict[str, Any]:
    """One result of a page: the 2015 per-result dict with its slave, action and requestid."""
    entry = result.to_dict(include_requestid=True)
    entry["slave"] = result.slave
    entry["action"] = result.action
    return entry


async def results_page(store: IResultStore, page: PageRequest) -> dict[str, Any]:
    """C{{"results": [...], "next": "/results?..." or None}}."""
    shown, more = params.page(await store.reads.page(page.query()), page.limit)
    return {
        "results": [page_entry(result) for result in shown],
        "next": page.next_path(shown[-1].requestid) if more else None,
    }


class _NestedEncoder:
    """
    Encodes results, which come by slave, action and request id, into
    C{{"<slave>": {"<action>": {"<requestid>": {...}}}}} a piece at a time:
    L{feed} for each batch, then L{end}.
    """

    def __init__(self) -> None:
        self._slave: str | None = None
        self._action: str | None = None
        self._started = False

    def feed(self, results: Iterable[ActionResult]) -> bytes:
        """The JSON of C{results}, following what was fed before."""
        parts: list[str] = []
        if not self._started:
            parts.append("{")
            self._started = True
        for result in results:
            if result.slave != self._slave:
                if self._slave is not None:
                    parts.append("}}, ")
                parts.append(f"{json.dumps(result.slave)}: {{{json.dumps(result.action)}: {{")
                self._slave, self._action = result.slave, result.action
            elif result.action != self._action:
                parts.append(f"}}, {json.dumps(result.action)}: {{")
                self._action = result.action
            else:
                parts.append(", ")
            parts.append(f'"{result.requestid}": {json.dumps(result.to_dict(), sort_keys=True)}')
        return "".join(parts).encode("utf-8")

    def end(self) -> bytes:
        """What closes the JSON."""
        return self.feed(()) + (b"}}}" if self._slave is not None else b"}")


def nested_json(results: Iterator[ActionResult]) -> bytes:
    """
    C{{"<slave>": {"<action>": {"<requestid>": {...}}}}} for C{results}, which
    come by slave, action and request id, all at once (L{stream_results}
    writes the same bytes a chunk at a time).
    """
    encoder = _NestedEncoder()
    return encoder.feed(results) + encoder.end()


async def stream_results(store: IResultStore, request: IRequest, reactor: Any, chunk: int = EACH_CHUNK) -> bytes:
    """
    Write every result in the 2015 shape to C{request}, C{chunk} results per
    reactor turn, and return the (empty) rest of the body.

    A read that fails before anything is written is a 503; one that fails
    later aborts the connection (the status is gone already). A client that
    hangs up stops the reading.
    """
    gone: list[bool] = []
    cast(Any, request).notifyFinish().addBoth(lambda _: gone.append(True))
    encoder = _NestedEncoder()
    after: tuple[str, str, int] | None = None
    written = False
    while not gone:
        try:
            found = await store.reads.each_chunk(after, chunk)
        except StoreUnavailable as error:
            if not written:
                raise store_unreadable(str(error)) from None
            cast(Any, request).transport.abortConnection()
            return b""
        if not written:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"application/json")
            written = True
        if len(found) < chunk:
            return encoder.feed(found) + encoder.end()
        request.write(encoder.feed(found))
        last = found[-1]
        after = (last.slave, last.action, last.requestid)
        await deferLater(reactor, 0, lambda: None)
    return b""


def all_results(
    store: IResultStore, request: IRequest, ctx: Context, actions: Iterable[Action], reactor: Any = None
) -> Deferred[bytes]:
    """
    Every result in the 2015 shape (streamed), or one page when any page
    parameter is given.
    """
    if not _asked_for_page(request):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        return Deferred.fromCoroutine(stream_results(store, request, reactor))
    return Deferred.fromCoroutine(_one_page(store, request, page_request(request, ctx, actions)))


async def _one_page(store: IResultStore, request: IRequest, page: PageRequest) -> bytes:
    try:
        return json_body(request, await results_page(store, page))
    except StoreUnavailable as error:
        raise store_unreadable(str(error)) from None
