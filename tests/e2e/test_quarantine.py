"""
pause_buildslave and unpause_buildslave end to end: POSTs over HTTP to SlaveAPI serving
its lab in this process.

The lab's masters are Buildbot 0.8 web statuses, which cannot pause a worker: both
actions end as FAILURE saying so, and nothing is asked of the master but whether it has a
data API. A pause without a reason is refused before anything is recorded. (Pausing on a
real Buildbot 4 master, through the same HTTP API, is in tests/buildbot/test_real_pause.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted

from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process
from tests.e2e.test_shutdown_disable import post


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("quarantine")), slaves=4, boot_time=1.0)
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_buildbot_08_master_cannot_pause_or_unpause_and_the_failure_says_so(
    lab_service: RunningService,
) -> None:
    machine = lab_service.lab.machine("bld-linux64-lab-001")

    code, paused = await post(lab_service, machine.name, "pause_buildslave", reason="disk errors")

    assert (code, paused["state"]) == (200, 3), paused
    assert paused["text"] == (
        "Pausing in master bm01-build1...Failed: master bm01-build1 runs Buildbot 0.8, which cannot pause a worker"
    )

    code, unpaused = await post(lab_service, machine.name, "unpause_buildslave")

    assert (code, unpaused["state"]) == (200, 3), unpaused
    assert unpaused["text"] == (
        "Unpausing in master bm01-build1...Failed: master bm01-build1 runs Buildbot 0.8, which cannot unpause a worker"
    )
    # Not a shutdown either: the master was asked for nothing of this machine.
    assert [request for request in lab_service.lab.buildbots.requests if request.slave == machine.name] == []


@pytest_twisted.ensureDeferred
async def test_a_pause_without_a_reason_is_a_400_naming_the_field(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("bld-linux64-lab-001")
    url = f"{lab_service.url}/slaves/{machine.name}/actions/pause_buildslave"
    code, before = await request_json("GET", url)
    assert code == 200

    code, body = await post(lab_service, machine.name, "pause_buildslave")

    assert code == 400
    assert body["msg"] == "reason: expected one line saying why the worker is paused, got nothing"
    code, after = await request_json("GET", url)
    assert (code, after) == (200, before)  # nothing recorded
