"""
C{GET /slaves/<slave>/history}: every action asked of one machine, newest first.

An operator looking at a machine wants to know what was done to it, by whom
and how it went, without knowing request ids: each entry is one result with
the client that asked for it, the form fields it was asked with (the
action's declared ones; secret ones are never stored), each step with its
start, end and outcome, and the result's text. Pages are bounded (C{limit},
default L{DEFAULT_LIMIT}, at most L{MAX_LIMIT}) and chained by request id
(C{before}), which only grows, so following C{next} neither skips nor repeats
an entry while new actions are asked for. The store reads a page through an
index, without a sort (L{slaveapi.store}).

A machine nobody knows is a 404, as for C{GET /slaves/<slave>}.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from twisted.web.iweb import IRequest

from slaveapi.context import Context
from slaveapi.store import MAX_REQUESTID, HistoryEntry, IResultStore, StoreUnavailable
from slaveapi.web import known, params
from slaveapi.web.errors import json_body, store_unreadable

#: Entries in a page unless C{limit} says otherwise, and the most it may say.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def history_entry(entry: HistoryEntry) -> dict[str, Any]:
    """One entry of a machine's history as the API shows it."""
    result = entry.result
    return {
        "requestid": result.requestid,
        "action": result.action,
        "state": result.state,
        "client": result.client,
        "fields": entry.fields,
        "request_timestamp": result.request_timestamp,
        "start_timestamp": result.start_timestamp,
        "finish_timestamp": result.finish_timestamp,
        "steps": [
            {"heading": step.heading, "started": step.started, "finished": step.finished, "outcome": step.outcome}
            for step in entry.steps
        ],
        "text": result.text,
    }


async def machine_history(store: IResultStore, ctx: Context, request: IRequest, name: str) -> bytes:
    """
    C{{"slave": ..., "history": [...], "next": "/slaves/<name>/history?..." or None}}.

    @param name: the slave name as the URL gave it (checked to be a hostname).
    @raise HTTPProblem: 400 for a bad C{limit} or C{before}; 404 for an
        unknown machine; 502 when it could not be identified; 503 when the
        store cannot be read.
    """
    limit = params.limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    before = params.whole_number(request, "before", 0, MAX_REQUESTID)
    machine = await known.machine_name(ctx, name)
    try:
        # One more than the page: whether another page follows.
        found = await store.reads.history(machine, before, limit + 1)
    except StoreUnavailable as error:
        raise store_unreadable(str(error)) from None
    page, more = params.page(found, limit)
    following = None
    if more:
        query = urllib.parse.urlencode({"limit": limit, "before": page[-1].result.requestid})
        following = f"/slaves/{urllib.parse.quote(name)}/history?{query}"
    return json_body(
        request, {"slave": machine, "history": [history_entry(entry) for entry in page], "next": following}
    )
