"""
Backpressure end to end: with small limits (set by a configuration reload),
a flood of read-only requests fills its queue and gets 503s with
Retry-After, while reboots are still accepted and run. The lab holds the
machines' SSH commands so that nothing finishes before the test lets it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
import treq

from slaveapi.admission import CHANGES, READS
from slaveapi.processor import ActionProcessor
from slaveapi.service import ContextHolder, StoreService
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process
from tests.recorded_now import recorded_now

LIMITS = "concurrency = 3\nread_concurrency = 1\nmax_queued = 2\n"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("backpressure")), slaves=12, boot_time=1.0)
    holder = _child(running, ContextHolder)
    path = holder.context().config.path
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace("[server]\n", "[server]\n" + LIMITS, 1))
    assert holder.reload()
    yield running
    await running.stop()


async def _finished(service: RunningService, processor: ActionProcessor, requestid: int) -> int:
    """The state request C{requestid} finished in, waiting (bounded) for it."""
    from twisted.internet import reactor

    result = recorded_now(processor, _child(service, StoreService).store.get(requestid))
    await processor.wait(result, 120).addTimeout(150, reactor)
    return recorded_now(processor, result).state


def _child(service: RunningService, kind: type) -> Any:
    return next(child for child in service.service if isinstance(child, kind))


async def _post(service: RunningService, slave: str, action: str, waittime: str = "0") -> tuple[int, Any, Any]:
    response = await treq.post(
        f"{service.url}/slaves/{slave}/actions/{action}", data={"waittime": waittime}, timeout=150
    )
    return response.code, await response.json(), response.headers


@pytest_twisted.ensureDeferred
async def test_a_read_flood_gets_503_with_retry_after_while_reboots_run(lab_service: RunningService) -> None:
    lab = lab_service.lab
    processor: ActionProcessor = _child(lab_service, ActionProcessor)
    rebooted, second_reboot = lab.machine("bld-linux64-lab-001"), lab.machine("t-w864-lab-004")
    readers = ["tst-linux64-lab-002", "bld-linux64-lab-010", "tst-linux64-ec2-011", "tst-linux64-ec2-012"]
    held = [rebooted.name, second_reboot.name, *readers]
    booted_at = rebooted.booted_at
    for name in held:
        lab.ssh.hold(name)
    try:
        code, reboot, _ = await _post(lab_service, rebooted.name, "reboot")
        assert (code, reboot["state"] in (0, 1)) == (202, True), reboot
        # The first read takes the one read slot; two more fill the read queue.
        accepted = [await _post(lab_service, name, "buildslave_uptime") for name in readers[:3]]
        assert [code for code, _, _ in accepted] == [202, 202, 202]
        assert processor.queued() == {READS: 2, CHANGES: 0}
        code, refused, headers = await _post(lab_service, readers[3], "buildslave_uptime")
        assert code == 503
        assert refused == {
            "error": "queue_full",
            "msg": "buildslave_uptime: 2 read-only requests are already waiting; try again in 30 seconds",
        }
        assert headers.getRawHeaders(b"retry-after") == [b"30"]
        # A reboot is still accepted and starts at once: waiting reads are not in its way.
        code, other, _ = await _post(lab_service, second_reboot.name, "reboot")
        assert code == 202, other
        assert processor.queued() == {READS: 2, CHANGES: 0}
    finally:
        for name in held:
            lab.ssh.release(name)
    # Every accepted request finishes, successfully.
    for result in [reboot, other, *(result for _, result, _ in accepted)]:
        assert await _finished(lab_service, processor, result["requestid"]) == 2
    assert rebooted.booted_at > booted_at
    # The refused one was never recorded; now there is room for it.
    code, listing = await request_json("GET", f"{lab_service.url}/slaves/{readers[3]}/actions/buildslave_uptime")
    assert (code, listing) == (200, {"buildslave_uptime": {}})
    code, later, _ = await _post(lab_service, readers[3], "buildslave_uptime", "60")
    assert (code, later["state"]) == (200, 2), later
    assert processor.queued() == {READS: 0, CHANGES: 0}
