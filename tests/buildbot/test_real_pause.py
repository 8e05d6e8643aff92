"""
Quarantine against a real Buildbot 4.x master and worker on loopback.

Through SlaveAPI's HTTP API, with its real clients: C{pause_buildslave} and
C{unpause_buildslave} use the data API's JSON-RPC C{pause} and C{unpause}
controls and confirm them from the worker's record, which the test reads
from the master too. The master client's C{worker_connected} reads the same
record's C{connected_to}, while the worker runs and after it stopped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import pytest_twisted

from slaveapi.clients import poll_until
from slaveapi.clients.master import MasterError
from slaveapi.clients.slavealloc import MasterRecord
from tests.buildbot.fixtures import (  # noqa: F401  (fixtures used by name)
    AUTO_MASTER,
    MODERN_MASTER,
    STRANGER,
    WORKER,
    Peers,
    SlaveAPI,
    dns_port,
    master_template,
    slavealloc,
    slaveapi,
    sshd,
    start_peers,
)
from tests.buildbot.peers import reactor
from tests.buildbot.test_real_buildbot import worker_record


@pytest_twisted.ensureDeferred
async def test_pause_and_unpause_through_the_data_api_are_confirmed_by_the_master(
    start_peers: Callable[[str], Awaitable[Peers]], slaveapi: SlaveAPI
) -> None:
    peers = await start_peers(AUTO_MASTER)  # not in [masters]: SlaveAPI finds out it has a data API
    assert (await worker_record(peers))["paused"] is False

    paused = await slaveapi.post(WORKER, "pause_buildslave", reason="disk errors, looking at it")

    assert paused["state"] == 2, paused
    assert paused["text"] == f"Pausing in master {AUTO_MASTER}...Confirmed: the master reports {WORKER} paused."
    record = await worker_record(peers)
    assert record["paused"] is True
    assert record["pause_reason"] == (
        f"disk errors, looking at it (SlaveAPI pause_buildslave request {paused['requestid']}, "
        "requested by an anonymous client (authentication is off))"
    )
    assert record["connected_to"] != []  # paused, not disconnected

    unpaused = await slaveapi.post(WORKER, "unpause_buildslave")

    assert unpaused["state"] == 2, unpaused
    assert unpaused["text"] == (
        f"Unpausing in master {AUTO_MASTER}...Confirmed: the master reports {WORKER} no longer paused."
    )
    assert (await worker_record(peers))["paused"] is False


@pytest_twisted.ensureDeferred
async def test_a_worker_the_master_does_not_know_cannot_be_paused(
    start_peers: Callable[[str], Awaitable[Peers]], slaveapi: SlaveAPI
) -> None:
    peers = await start_peers(MODERN_MASTER)

    refused = await slaveapi.post(STRANGER, "pause_buildslave", reason="x")

    url = f"http://{peers.fqdn}:{peers.master.www_port}/api/v2/workers/{STRANGER}"
    assert refused["state"] == 3, refused
    assert refused["text"].startswith(
        f"Pausing in master {MODERN_MASTER}...Failed: master {MODERN_MASTER}: POST {url} failed: HTTP 500 "
    )
    assert (await worker_record(peers))["paused"] is False


@pytest_twisted.ensureDeferred
async def test_worker_connected_follows_the_worker(
    start_peers: Callable[[str], Awaitable[Peers]], slaveapi: SlaveAPI
) -> None:
    peers = await start_peers(MODERN_MASTER)
    client = slaveapi.context.clients.master
    master = MasterRecord(7, MODERN_MASTER, peers.fqdn, peers.master.www_port, peers.master.pb_port, True)

    assert await client.worker_connected(master, WORKER) is True
    with pytest.raises(MasterError) as unknown:
        await client.worker_connected(master, STRANGER)
    assert str(unknown.value) == (
        f"master {MODERN_MASTER}: GET http://{peers.fqdn}:{peers.master.www_port}/api/v2/workers/{STRANGER}: "
        f"the master does not know worker {STRANGER}"
    )

    await peers.worker.stop()

    async def disconnected() -> bool:
        return await client.worker_connected(master, WORKER) is False

    # The master notices the closed connection on its own time: read until it does, bounded.
    assert await poll_until(reactor, disconnected, 0.1, 15.0, "worker disconnected")
