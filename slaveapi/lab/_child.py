"""
A lab helper process that speaks JSON lines on its stdin and stdout.

The lab runs its BMCs and its EC2 server in processes of their own. Each
prints C{{"event": "ready"}} once it serves; other messages go to a handler.
Its stderr is kept (the last lines) to say why it died.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

_STDERR_KEPT = 20
_MAX_LINE = 64 * 1024


class Readiness:
    """
    A one-time outcome (ready, or failed) that anyone may wait for, each with
    a Deferred of their own: nobody waiting means nobody is told, so a lab
    stopped before it was ready logs no unhandled error.
    """

    def __init__(self) -> None:
        self._ready = False
        self._failure: Failure | None = None
        self._waiters: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        """Fires once ready; fails with the failure if that came instead."""
        if self._ready:
            return succeed(None)
        if self._failure is not None:
            return fail(self._failure)
        waiting: Deferred[None] = Deferred()
        self._waiters.append(waiting)
        return waiting

    def settle(self, failure: Failure | None) -> None:
        """Ready (C{None}) or failed; tells everyone waiting."""
        if failure is None:
            self._ready = True
        else:
            self._failure = failure
        waiters, self._waiters = self._waiters, []
        for waiting in waiters:
            if failure is None:
                waiting.callback(None)
            else:
                waiting.errback(failure)


class ChildProcess(ProcessProtocol):
    """
    One helper process.

    @param label: how logs and errors name it ("BMC", "EC2").
    @param error: the exception C{ready} fails with when it exits first.
    @param stopping: whether its owner is stopping it (then its exit is expected).
    @param on_message: called with every message but the ready event.
    @ivar ready: fires once it said it serves.
    @ivar ended: fires once it exited.
    """

    def __init__(
        self,
        label: str,
        error: type[Exception],
        stopping: Callable[[], bool],
        on_message: Callable[[dict[str, Any]], None] = lambda message: None,
    ) -> None:
        self._label = label
        self._error = error
        self._stopping = stopping
        self._on_message = on_message
        self._buffer = b""
        self._stderr: list[str] = []
        self.pid: int | None = None
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.exited = False

    def connectionMade(self) -> None:
        self.pid = cast(IProcessTransport, self.transport).pid

    def send(self, message: dict[str, Any]) -> None:
        """Write one message to its stdin."""
        if not self.exited:
            cast(IProcessTransport, self.transport).write(json.dumps(message).encode("utf-8") + b"\n")

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                _log.warn("lab: {label} process {pid} wrote an unreadable line", label=self._label, pid=self.pid)
                continue
            if not isinstance(message, dict):
                continue
            if message.get("event") == "ready":
                if not self.ready.called:
                    self.ready.callback(None)
            else:
                self._on_message(message)
        if len(self._buffer) > _MAX_LINE:
            self._buffer = b""

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self._stderr = (self._stderr + [line])[-_STDERR_KEPT:]
                _log.debug("lab: {label} process {pid}: {line}", label=self._label, pid=self.pid, line=line[:500])

    def signal(self, name: str) -> None:
        """Send a signal to the child by its PID, if it still runs."""
        if self.exited or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, getattr(signal, "SIG" + name))

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        detail = "; ".join(self._stderr[-3:]) or reason.getErrorMessage()
        if not self.ready.called:
            self.ready.errback(self._error(f"lab {self._label} process exited before it was ready: {detail}"))
        elif not self._stopping():
            _log.error("lab: {label} process {pid} died: {detail}", label=self._label, pid=self.pid, detail=detail)
        self.ended.callback(None)
