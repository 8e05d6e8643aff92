"""C{GET /results}: every result, by slave, action and requestid."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from slaveapi.results import dictify_results
from slaveapi.store import IResultStore
from slaveapi.web.errors import json_body


def all_results(store: IResultStore, request: IRequest) -> bytes:
    """C{{"<slave>": {"<action>": {"<requestid>": {...}}}}}."""
    return json_body(request, dictify_results(store.find()))
