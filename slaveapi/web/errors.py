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
    """

    def __init__(self, status: int, error: str, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg


def bad_request(msg: str) -> HTTPProblem:
    return HTTPProblem(400, "bad_request", msg)


def not_found(msg: str) -> HTTPProblem:
    return HTTPProblem(404, "not_found", msg)


def json_body(request: IRequest, data: Any, status: int = 200) -> bytes:
    """Set the status and content type, and encode C{data}."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data, sort_keys=True).encode("utf-8")


def problem_body(request: IRequest, problem: HTTPProblem) -> bytes:
    """The JSON answer for C{problem}."""
    return json_body(request, {"error": problem.error, "msg": problem.msg}, problem.status)
