"""
SlaveAPI against a real Buildbot 4.x master and worker on loopback.

Through SlaveAPI's HTTP API, with its real clients: slavealloc (a fake here)
names the master; the master's data API is asked to stop the worker (JSON-RPC
C{stop}); the shutdown is confirmed from the worker's real twistd.log, read
over SSH from a real OpenSSH sshd; C{buildslave_last_activity} reads that
same log. The worker host's uptime is what the test writes to the sshd's
C{/proc/uptime} (L{Sshd.set_uptime}), never the real host's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest_twisted
import treq

from slaveapi.clients.master import MasterClient
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
from tests.buildbot.peers import BUILDER, UP_A_DAY, Sshd, bounded, wait_for_log

_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[+-]\d{4}) \[[^\]]*\] (.*)$")


def stamp(line: str) -> str:
    match = _STAMP.match(line)
    assert match, line
    return match.group(1)


def index_of(lines: list[str], text: str) -> int:
    """The index of the last line containing C{text}."""
    found = [index for index, line in enumerate(lines) if text in line]
    assert found, text
    return found[-1]


async def worker_record(peers: Peers) -> dict[str, Any]:
    response = await treq.get(f"{peers.api}/workers/{WORKER}", timeout=10)
    body: dict[str, Any] = await response.json()
    return body["workers"][0]


async def last_activity(slaveapi: SlaveAPI, sshd: Sshd, uptime: float) -> dict[str, Any]:
    """C{buildslave_last_activity} on a worker host up for C{uptime} seconds; its payload."""
    sshd.set_uptime(uptime)
    result = await slaveapi.post(WORKER, "buildslave_last_activity", waittime=30)
    assert result["state"] == 2, result
    assert result["text"]["uptime"] == int(uptime)  # what the host says, in whole seconds
    return dict(result["text"])


async def last_state(slaveapi: SlaveAPI, sshd: Sshd) -> str:
    """The last state of a worker host up for a day: past the boot grace, so its log decides."""
    return str((await last_activity(slaveapi, sshd, UP_A_DAY))["last_state"])


@pytest_twisted.ensureDeferred
async def test_shutdown_is_graceful_through_the_data_api_and_confirmed_from_the_real_log(
    start_peers: Callable[[str], Awaitable[Peers]], slaveapi: SlaveAPI, sshd: Sshd
) -> None:
    peers = await start_peers(MODERN_MASTER)
    assert (await worker_record(peers))["connected_to"] != []
    assert await last_state(slaveapi, sshd) == "ready"

    # A name the master does not know: it answers 500, and the failure names URL and status.
    refused = await slaveapi.post(STRANGER, "shutdown_buildslave")
    url = f"http://{peers.fqdn}:{peers.master.www_port}/api/v2/workers/{STRANGER}"
    assert refused["state"] == 3
    assert refused["text"].startswith(
        f"Requesting graceful shutdown from master {MODERN_MASTER}...Failed: master {MODERN_MASTER}: "
        f"POST {url} failed: HTTP 500 Internal Server Error (JSON-RPC error -32603: "
    )
    assert "\n" not in refused["text"]

    result = await slaveapi.post(WORKER, "shutdown_buildslave")

    assert result["state"] == 2, result
    lines = peers.worker.log_lines()
    assert lines[-1].endswith("[-] Server Shut Down.")
    assert result["text"] == (
        f"Requesting graceful shutdown from master {MODERN_MASTER}...Accepted (Buildbot modern, HTTP 200).\n"
        "Waiting for the buildbot to shut down...Confirmed: it shut down gracefully on command from its master "
        f"at {stamp(lines[-1])}."
    )
    assert index_of(lines, "worker shutting down on command from master") < index_of(lines, "Main loop terminated.")
    # The worker process really ended, and the master lost it.
    assert await bounded(peers.worker.process.ended, 15) == 0
    assert (await worker_record(peers))["connected_to"] == []
    assert await last_state(slaveapi, sshd) == "stopped"


@pytest_twisted.ensureDeferred
async def test_a_running_build_finishes_before_the_worker_stops(
    start_peers: Callable[[str], Awaitable[Peers]], slaveapi: SlaveAPI, sshd: Sshd
) -> None:
    peers = await start_peers(AUTO_MASTER)  # not in [masters]: SlaveAPI asks GET /api/v2 first
    record = MasterRecord(7, AUTO_MASTER, peers.fqdn, peers.master.www_port, peers.master.pb_port, True)
    assert cast(MasterClient, slaveapi.context.clients.master).configured_flavour(record) == "auto"
    forced = await treq.post(
        f"{peers.api}/forceschedulers/force",
        json={"jsonrpc": "2.0", "method": "force", "params": {"builderNames": [BUILDER]}, "id": 1},
        timeout=10,
    )
    assert forced.code == 200, await forced.text()
    await wait_for_log(peers.worker.log, r"RunProcess\._startCommand", peers.worker.process, 20)
    assert await last_state(slaveapi, sshd) == "running_command"

    result = await slaveapi.post(WORKER, "shutdown_buildslave")

    assert result["state"] == 2, result
    lines = peers.worker.log_lines()
    assert result["text"] == (
        f"Requesting graceful shutdown from master {AUTO_MASTER}...Accepted (Buildbot modern, HTTP 200).\n"
        "Waiting for the buildbot to shut down...Confirmed: it shut down gracefully on command from its master "
        f"at {stamp(lines[-1])}."
    )
    finished = index_of(lines, "command finished with signal None, exit code 0")
    assert finished < index_of(lines, "worker shutting down on command from master") < len(lines) - 1
    assert await bounded(peers.worker.process.ended, 15) == 0
    # The build was let finish: it succeeded rather than being interrupted.
    response = await treq.get(f"{peers.api}/builds", timeout=10)
    builds = (await response.json())["builds"]
    assert [(build["complete"], build["results"]) for build in builds] == [(True, 0)]


@pytest_twisted.ensureDeferred
async def test_a_worker_host_within_its_boot_grace_is_booting_whatever_its_log_says(
    start_peers: Callable[[str], Awaitable[Peers]], slaveapi: SlaveAPI, sshd: Sshd
) -> None:
    await start_peers(MODERN_MASTER)  # the worker's log ends "worker is ready"

    # Up for a minute: booting, with the uptime as the last activity (docs/actions.rst).
    booting = {"last_state": "booting", "last_activity_seconds": 60, "uptime": 60}
    assert await last_activity(slaveapi, sshd, 60.0) == booting
    # The same log on a host up for a day: the log decides.
    assert await last_state(slaveapi, sshd) == "ready"
