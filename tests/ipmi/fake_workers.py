"""
A fake IPMI worker pool for L{slaveapi.clients.ipmi} tests on a L{Clock}:
no process is started; each "worker" answers the JSON lines the client
writes from a table of BMCs, after a delay on the clock, or when the test
says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from slaveapi.clients.ipmi import _Worker


@dataclass
class Sent:
    """One request a fake worker received and has not answered yet."""

    worker: _Worker
    request: dict[str, Any]

    @property
    def host(self) -> str:
        return str(self.request["host"])


class _FakeProcess:
    """The transport of a fake worker: what the pool writes goes to its L{FakeWorkers}."""

    pid = None  # never a real PID: a kill() of a fake worker signals nobody

    def __init__(self, owner: FakeWorkers, worker: _Worker) -> None:
        self._owner = owner
        self._worker = worker

    def write(self, data: bytes) -> None:
        for line in data.splitlines():
            self._owner._received(self._worker, json.loads(line))

    def closeStdin(self) -> None:
        self._owner.clock.callLater(0, self._worker.processEnded, None)


@dataclass
class FakeWorkers:
    """
    A reactor for an L{IPMIClient}: a Clock whose C{spawnProcess} starts fake workers.

    @ivar answer_after: seconds a worker takes to answer on its own; None
        means only when the test calls L{answer}.
    @ivar powered: the BMCs' chassis power, by host (off when unknown).
    @ivar served: every request answered, in order: (time taken by a worker, host, op).
    @ivar busy: per host, the requests being served now; C{most_busy} the most seen at once.
    """

    answer_after: float | None = None
    clock: Clock = field(default_factory=Clock)
    powered: dict[str, bool] = field(default_factory=dict)
    pending: list[Sent] = field(default_factory=list)
    served: list[tuple[float, str, str]] = field(default_factory=list)
    spawned: int = 0
    busy: dict[str, int] = field(default_factory=dict)
    most_busy: dict[str, int] = field(default_factory=dict)
    most_workers_busy: int = 0

    # The reactor's side

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def spawnProcess(self, worker: _Worker, *args: Any, **kwargs: Any) -> None:
        self.spawned += 1
        worker.makeConnection(_FakeProcess(self, worker))
        self.clock.callLater(0, worker.outReceived, b'{"ready": true}\n')

    # The workers' side

    def _received(self, worker: _Worker, request: dict[str, Any]) -> None:
        sent = Sent(worker, request)
        self.pending.append(sent)
        host = sent.host
        self.busy[host] = self.busy.get(host, 0) + 1
        self.most_busy[host] = max(self.most_busy.get(host, 0), self.busy[host])
        self.most_workers_busy = max(self.most_workers_busy, len(self.pending))
        if self.answer_after is not None:
            self.clock.callLater(self.answer_after, self._answer, sent)

    def answer(self, host: str) -> None:
        """Answer the oldest pending request to C{host}."""
        self._answer(next(sent for sent in self.pending if sent.host == host))

    def _answer(self, sent: Sent) -> None:
        if sent not in self.pending:
            return
        self.pending.remove(sent)
        host, request = sent.host, sent.request
        self.busy[host] -= 1
        self.served.append((self.clock.seconds(), host, request["op"]))
        answer: dict[str, Any] = {"id": request["id"], "ok": True}
        if request["op"] == "status":
            answer["powered"] = self.powered.get(host, False)
        elif request["directive"] in (0, 5):  # hard or soft off: this BMC's OS obeys at once
            self.powered[host] = False
        elif request["directive"] == 1:
            self.powered[host] = True
        if sent.worker.request is not None and sent.worker.request.ident == request["id"]:
            sent.worker.outReceived(json.dumps(answer).encode() + b"\n")
