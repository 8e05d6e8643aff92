"""
The master client's pause, unpause and worker-connected calls against
scripted masters on loopback: the JSON-RPC bodies, the read-back of the
C{paused} field, Buildbot 0.8 (which cannot), unknown workers and answers of
the wrong shape. The real Buildbot 4 master is in test_real_pause.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from slaveapi.clients.master import MasterClient, MasterError
from slaveapi.config import Secret
from tests.buildbot.test_master_client import (  # noqa: F401  (the fixture is used by name)
    PASSWORD,
    ROOT,
    RPC_OK,
    STOP,
    Answer,
    Master,
    master,
)

WORKER = ("GET", "/api/v2/workers/bld-1")


class _Replies(dict[tuple[str, str], Any]):
    """A script whose entries may be lists: each request takes the next answer, the last one repeats."""

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        value = super().get(key, default)
        if isinstance(value, list):
            return value.pop(0) if len(value) > 1 else value[0]
        return value


def _record(paused: bool = False, connected: bool = True) -> Answer:
    record = {"workerid": 1, "name": "bld-1", "paused": paused, "pause_reason": None, "graceful": False,
              "connected_to": [{"masterid": 1}] if connected else [], "configured_on": []}
    return Answer(200, json.dumps({"workers": [record], "meta": {"total": 1}}).encode())


def _modern(master: Master, **settings: Any) -> tuple[MasterClient, _Replies]:
    """A client of a modern master, and that master's script (which takes lists of answers)."""
    replies = _Replies()
    master.resource.script = replies
    return master.client(flavour="modern", **settings), replies


async def _refused(work: Any) -> str:
    with pytest.raises(MasterError) as caught:
        await work
    message = str(caught.value)
    assert "\n" not in message and PASSWORD not in message
    return message


@pytest_twisted.ensureDeferred
async def test_pause_sends_the_json_rpc_pause_and_reads_it_back(master: Master) -> None:
    client, replies = _modern(master, username="slaveapi", password=Secret(PASSWORD), allow_plain_http=True)
    replies[STOP] = Answer(200, RPC_OK)
    # The master applies the pause after answering: the first read still shows it running.
    replies[WORKER] = [_record(paused=False), _record(paused=True)]

    await client.pause_worker(master.record(), "bld-1", "flaky disk")

    assert [(seen.method, seen.path) for seen in master.resource.seen] == [STOP, WORKER, WORKER]
    assert json.loads(master.resource.seen[0].body) == {
        "jsonrpc": "2.0", "method": "pause", "params": {"reason": "flaky disk"}, "id": 1,
    }
    assert all(seen.headers["authorization"].startswith("Basic ") for seen in master.resource.seen)


@pytest_twisted.ensureDeferred
async def test_unpause_sends_the_json_rpc_unpause_and_reads_it_back(master: Master) -> None:
    client, replies = _modern(master)
    replies[STOP] = Answer(200, RPC_OK)
    replies[WORKER] = _record(paused=False)

    await client.unpause_worker(master.record(), "bld-1")

    assert json.loads(master.resource.seen[0].body) == {"jsonrpc": "2.0", "method": "unpause", "params": {}, "id": 1}
    assert [(seen.method, seen.path) for seen in master.resource.seen] == [STOP, WORKER]


@pytest_twisted.ensureDeferred
async def test_a_pause_the_master_never_shows_fails_within_the_timeout(master: Master) -> None:
    client, replies = _modern(master, timeout=1.0)
    replies[STOP] = Answer(200, RPC_OK)
    replies[WORKER] = _record(paused=False)

    message = await _refused(client.pause_worker(master.record(), "bld-1", "x"))

    assert message == (
        f"master bm01-build1: GET {master.url('/api/v2/workers/bld-1')} did not report worker bld-1 paused within 1s"
    )
    # Read at once, then every half second until the deadline and no more: ceil(1 / 0.5) + 1 reads at most.
    reads = [(seen.method, seen.path) for seen in master.resource.seen].count(WORKER)
    assert 1 <= reads <= 3


@pytest_twisted.ensureDeferred
async def test_a_refused_pause_names_the_url_status_and_json_rpc_error(master: Master) -> None:
    client, replies = _modern(master)
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "worker not found"}}
    replies[STOP] = Answer(500, json.dumps(error).encode())

    message = await _refused(client.pause_worker(master.record(), "bld-1", "x"))

    assert message == (
        f"master bm01-build1: POST {master.url('/api/v2/workers/bld-1')} failed: HTTP 500 Internal Server Error "
        "(JSON-RPC error -32603: worker not found)"
    )
    assert [seen.method for seen in master.resource.seen] == ["POST"]


@pytest_twisted.ensureDeferred
async def test_a_buildbot_08_master_cannot_pause_and_is_not_asked(master: Master) -> None:
    client = master.client(flavour="0.8")

    assert await _refused(client.pause_worker(master.record(), "bld-1", "x")) == (
        "master bm01-build1 runs Buildbot 0.8, which cannot pause a worker"
    )
    assert await _refused(client.unpause_worker(master.record(), "bld-1")) == (
        "master bm01-build1 runs Buildbot 0.8, which cannot unpause a worker"
    )
    assert await client.worker_connected(master.record(), "bld-1") is None
    assert master.resource.seen == []


@pytest_twisted.ensureDeferred
async def test_auto_detects_08_before_refusing(master: Master) -> None:
    client = master.client(flavour="auto")  # GET /api/v2 answers 404: no data API

    assert await _refused(client.pause_worker(master.record(), "bld-1", "x")) == (
        "master bm01-build1 runs Buildbot 0.8, which cannot pause a worker"
    )
    assert [(seen.method, seen.path) for seen in master.resource.seen] == [ROOT]


@pytest_twisted.ensureDeferred
async def test_worker_connected_reads_connected_to(master: Master) -> None:
    client, replies = _modern(master)
    replies[WORKER] = [_record(connected=True), _record(connected=False)]

    assert await client.worker_connected(master.record(), "bld-1") is True
    assert await client.worker_connected(master.record(), "bld-1") is False
    assert master.resource.seen[0].headers["accept"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_an_unknown_worker_or_a_strange_answer_is_an_error_not_disconnected(master: Master) -> None:
    client, replies = _modern(master)
    url = master.url("/api/v2/workers/bld-1")
    replies[WORKER] = [
        Answer(404, b'{"error": "not found"}'),
        Answer(200, b'{"workers": [], "meta": {"total": 0}}'),
        Answer(200, b"<html>a proxy page</html>"),
        Answer(403, b'{"error": "forbidden"}'),
    ]

    messages = [await _refused(client.worker_connected(master.record(), "bld-1")) for _ in range(4)]

    assert messages == [
        f"master bm01-build1: GET {url}: the master does not know worker bld-1",
        f"master bm01-build1: GET {url} failed: HTTP 200, answer is not a worker record",
        f"master bm01-build1: GET {url} failed: HTTP 200, answer is not a worker record",
        f"master bm01-build1: GET {url} failed: HTTP 403 Forbidden",
    ]
