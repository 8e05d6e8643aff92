"""
A minimal in-memory JSON API for the client tests.

Each test file subclasses L{FakeJSONAPI} with the wire format of the service
it tests (docs/remote-apis.rst) and talks to it through L{StubTreq}, so no
socket is opened. Requests are recorded so tests can check exactly what was
sent; a handler may return L{HANG} to leave a request unanswered (the
request is kept in C{pending} so the test can finish it later).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from slaveapi.clients.http import JSONClient

#: Returned by a handler to leave the request unanswered.
HANG = object()


@dataclass
class SeenRequest:
    """One request as the fake received it."""

    method: str
    path: str
    args: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Raw:
    """A non-JSON answer: these bytes with this content type."""

    body: bytes
    content_type: str = "text/html"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Partial:
    """Headers announcing C{length} bytes, then only C{body}; the rest never comes."""

    body: bytes
    length: int


class FakeJSONAPI(Resource):
    """Routes every request to L{answer}; records requests and unanswered ones."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[SeenRequest] = []
        self.pending: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def answer(self, seen: SeenRequest) -> Any:
        """C{(status, JSON value)}, C{(status, Raw(...))}, C{Partial(...)} or L{HANG}."""
        raise NotImplementedError

    def render(self, request: Request) -> Any:
        seen = SeenRequest(
            method=request.method.decode("ascii"),
            path=request.path.decode("utf-8"),
            args={k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
            headers={
                k.decode().lower(): b", ".join(vs).decode() for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            body=request.content.read(),
        )
        self.requests.append(seen)
        result = self.answer(seen)
        if result is HANG:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.pending.append(request)
            return NOT_DONE_YET
        if isinstance(result, Partial):
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", str(result.length).encode())
            request.write(result.body)
            self.pending.append(request)
            return NOT_DONE_YET
        status, payload = result
        return write_answer(request, status, payload)

    def finish(self, request: Request, status: int, payload: Any) -> None:
        """Answer a request that was left pending."""
        self.pending.remove(request)
        self.in_flight -= 1
        request.write(write_answer(request, status, payload))
        request.finish()


def write_answer(request: Request, status: int, payload: Any) -> bytes:
    """Set the status and content type; the body to send."""
    request.setResponseCode(status)
    if isinstance(payload, Raw):
        request.setHeader(b"Content-Type", payload.content_type.encode())
        for name, value in payload.headers:
            request.setHeader(name.encode(), value.encode())
        return payload.body
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(payload).encode("utf-8")


def make_json_client(
    service: str, resource: Resource, timeout: float = 30.0
) -> tuple[JSONClient, StubTreq, Clock]:
    """A L{JSONClient} talking to C{resource} in memory, its timeouts on a L{Clock}."""
    stub = StubTreq(resource)
    clock = Clock()
    return JSONClient(service, stub, timeout, clock), stub, clock
