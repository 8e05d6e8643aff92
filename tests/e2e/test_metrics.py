"""
C{GET /metrics} end to end: an uptime and a reboot through the running
service on the lab, then a scrape parsed as Prometheus parses it, showing
the actions, the reboot's escalation steps, the remote calls they made and
the process's own metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: Long enough for any reboot path in the lab (boot time 1 s, short probe bounds).
WAIT = "120"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("metrics")), slaves=4, boot_time=1.0)
    yield running
    await running.stop()


async def _scrape(service: RunningService) -> tuple[list[bytes], Samples]:
    response = await treq.get(f"{service.url}/metrics", timeout=30)
    assert response.code == 200
    body = await treq.text_content(response, encoding="utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.headers.getRawHeaders(b"content-type"), samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest_twisted.ensureDeferred
async def test_a_scrape_counts_an_uptime_and_a_reboot(lab_service: RunningService) -> None:
    slave = "bld-linux64-lab-001"
    _, before = await _scrape(lab_service)

    code, uptime = await request_json(
        "POST", f"{lab_service.url}/slaves/{slave}/actions/buildslave_uptime", data={"waittime": "30"}
    )
    assert (code, uptime["state"]) == (200, 2), uptime
    code, reboot = await request_json(
        "POST", f"{lab_service.url}/slaves/{slave}/actions/reboot", data={"waittime": WAIT}
    )
    assert (code, reboot["state"]) == (200, 2), reboot
    assert reboot["text"] == "Attempting SSH reboot...Success!"

    content_type, after = await _scrape(lab_service)
    assert content_type == [b"text/plain; version=0.0.4; charset=utf-8"]

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    for action in ("buildslave_uptime", "reboot"):
        assert grew("slaveapi_actions_requested_total", action=action) == 1
        assert grew("slaveapi_actions_finished_total", action=action, state="success") == 1
        assert grew("slaveapi_action_duration_seconds_count", action=action) == 1
    assert grew("slaveapi_escalation_steps_total", method="ssh", outcome="success") == 1
    assert grew("slaveapi_escalation_steps_total", method="ipmi", outcome="success") == 0
    for client in ("ssh", "prober", "slavealloc"):
        assert grew("slaveapi_remote_calls_total", client=client, outcome="ok") >= 1, client
        assert grew("slaveapi_remote_call_seconds_count", client=client) >= 1, client
    assert _value(after, "slaveapi_actions_in_flight") == 0
    assert ("slaveapi_actions_queued", frozenset({("kind", "changing")})) in after
    assert ("slaveapi_health_verdicts", frozenset({("verdict", "ok")})) in after
    assert _value(after, "process_cpu_seconds_total") > 0
    assert _value(after, "process_resident_memory_bytes") > 0
    assert any(name == "slaveapi_build_info" for name, _ in after)
