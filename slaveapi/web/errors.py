"""
JSON error answers: every 4xx and 5xx is C{{"error": ..., "msg": ...}}, never HTML.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest


class HTTPProblem(Exception):
    """
    A request that cannot be answered normally.

    @ivar error: a short machine-readable kind ("bad_request", "not_found", ...).
    @ivar msg: a sentence saying what was wrong and what was expected.
    @ivar headers: extra response headers (C{Retry-After}, ...).
    """

    def __init__(self, status: int, error: str, msg: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg
        self.headers = dict(headers or {})


def bad_request(msg: str) -> HTTPProblem:
    return HTTPProblem(400, "bad_request", msg)


def not_found(msg: str) -> HTTPProblem:
    return HTTPProblem(404, "not_found", msg)


#: Seconds a client is asked to wait before retrying when results cannot be recorded.
STORE_RETRY_AFTER = 30


def store_unavailable(reason: str) -> HTTPProblem:
    """A request that could not be recorded (disk full, I/O error): 503, retry later."""
    return HTTPProblem(
        503,
        "store_unavailable",
        f"results cannot be recorded right now ({reason}), so the request was not queued; retry later",
        {b"Retry-After": str(STORE_RETRY_AFTER).encode("ascii")},
    )


def store_unreadable(reason: str) -> HTTPProblem:
    """Results that could not be read just now (an I/O error): 503, retry later."""
    return HTTPProblem(
        503,
        "store_unavailable",
        f"results cannot be read right now ({reason}); retry later",
        {b"Retry-After": str(STORE_RETRY_AFTER).encode("ascii")},
    )


def json_body(request: IRequest, data: Any, status: int = 200) -> bytes:
    """Set the status and content type, and encode C{data}."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data, sort_keys=True).encode("utf-8")


def problem_body(request: IRequest, problem: HTTPProblem) -> bytes:
    """The JSON answer for C{problem}."""
    for name, value in problem.headers.items():
        request.setHeader(name, value)
    return json_body(request, {"error": problem.error, "msg": problem.msg}, problem.status)
