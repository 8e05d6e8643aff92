"""
A small SlaveAPI look-alike for the CLI's unit tests: a threaded HTTP
server on loopback answering canned JSON and canned event streams, and
recording what it was asked.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    """One request the fake server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    form: dict[str, str]


@dataclass(frozen=True)
class Cut:
    """An C{/events} batch sent chunked and cut inside its chunk: the chunk announces more than is sent."""

    frames: str


#: An C{/events} "batch" closing the connection before any answer.
HANG_UP = "<hang up>"


@dataclass
class FakeSlaveAPI:
    """
    Canned answers by method and path (each a queue: the last answer
    repeats), and for C{/events} one batch of SSE text per connection (the
    connection closes after its batch; see also L{Cut} and L{HANG_UP});
    C{events=None} answers 404. C{redirects} answers GETs of a path with a
    302 to a URL.
    """

    answers: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    events: list[str | Cut] | None = None
    redirects: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.answers[(method, path)] = list(answers)

    def next_answer(self, method: str, path: str) -> tuple[int, Any]:
        with self._lock:
            queue = self.answers.get((method, path))
            if not queue:
                return 404, {"error": "not_found", "msg": f"no such endpoint: {path}"}
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def next_events(self) -> str | Cut | None:
        with self._lock:
            if self.events is None:
                return None
            return self.events.pop(0) if self.events else ""

    def requests_to(self, method: str, path: str) -> list[Seen]:
        return [seen for seen in self.seen if (seen.method, seen.path) == (method, path)]


def event(event_id: int, **data: Any) -> str:
    """One C{result} event as the server frames it."""
    return f"id: {event_id}\nevent: result\ndata: {json.dumps(data)}\n\n"


def _handler(fake: FakeSlaveAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests assert on L{FakeSlaveAPI.seen}."""

        def _record(self) -> Seen:
            parts = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8") if length else ""
            seen = Seen(
                self.command,
                parts.path,
                urllib.parse.parse_qs(parts.query),
                {name.lower(): value for name, value in self.headers.items()},
                dict(urllib.parse.parse_qsl(body)),
            )
            fake.seen.append(seen)
            return seen

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _events(self) -> None:
            frames = fake.next_events()
            if frames is None:
                self._json(404, {"error": "not_found", "msg": "no such endpoint: /events"})
                return
            if frames == HANG_UP:
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if isinstance(frames, Cut):
                data = frames.frames.encode()
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"%x\r\n" % (len(data) + 100) + data)
                return
            self.end_headers()
            self.wfile.write(frames.encode())

        def do_GET(self) -> None:
            seen = self._record()
            if seen.path in fake.redirects:
                self.send_response(302)
                self.send_header("Location", fake.redirects[seen.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if seen.path == "/events":
                self._events()
                return
            self._json(*fake.next_answer("GET", seen.path))

        def do_POST(self) -> None:
            seen = self._record()
            self._json(*fake.next_answer("POST", seen.path))

    return Handler


def serve(fake: FakeSlaveAPI) -> Iterator[FakeSlaveAPI]:
    """Serve C{fake} on a free loopback port for the duration of the generator."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
