"""
The fleet health loop end to end: SlaveAPI serving its lab in this process,
its verdicts read over HTTP (C{GET /health}, C{GET /slaves/<slave>/health}),
and, with remediation switched on by a configuration reload, a machine
whose power the lab cut rebooted once, by the client C{health}.

Conditions are awaited by polling the API with a bound, never by a fixed sleep.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_twisted
from twisted.internet.task import deferLater

from slaveapi.health import HEALTH_CLIENT
from slaveapi.service import ContextHolder, StoreService
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: The lab's C{[health] interval} in these tests.
LAB_INTERVAL = 10.0
DEAD = "t-linux64-lab-007"
HEALTHY = "bld-linux64-lab-001"
REFUSES_SSH = "bld-linux64-lab-006"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(
        str(tmp_path_factory.mktemp("health")), slaves=12, boot_time=1.0, health_interval=LAB_INTERVAL
    )
    yield running
    await running.stop()


async def _until(what: str, bound: float, ready: Callable[[], Awaitable[Any]]) -> Any:
    """Ask C{ready} every half second until it answers something true; fail after C{bound} seconds."""
    from twisted.internet import reactor

    give_up = reactor.seconds() + bound
    while True:
        answer = await ready()
        if answer:
            return answer
        assert reactor.seconds() < give_up, f"not within {bound:g} s: {what}"
        await deferLater(reactor, 0.5, lambda: None)


async def _health(service: RunningService, query: str = "") -> Any:
    code, body = await request_json("GET", f"{service.url}/health{query}")
    assert code == 200, body
    return body


async def _machine(service: RunningService, name: str) -> Any:
    code, body = await request_json("GET", f"{service.url}/slaves/{name}/health")
    assert code == 200, body
    return body


@pytest_twisted.ensureDeferred
async def test_the_dead_machine_is_down_and_an_idle_healthy_one_ok_within_two_intervals(
    lab_service: RunningService,
) -> None:
    async def both_known() -> Any:
        body = await _health(lab_service)
        verdicts = {name: (await _machine(lab_service, name))["verdict"] for name in (DEAD, HEALTHY)}
        return body if verdicts == {DEAD: "down", HEALTHY: "ok"} else None

    body = await _until("the dead machine down and a healthy one ok", 2 * LAB_INTERVAL, both_known)

    assert body["checked_at"] is not None
    assert DEAD in body["down"]
    assert body["machines"] == sum(body["verdicts"].values())
    dead = await _machine(lab_service, DEAD)
    assert (dead["evidence"][0]["check"], dead["evidence"][0]["outcome"]) == ("probe", "bad")
    assert dead["since"] <= dead["checked_at"] and dead["pool"] == "tests-scl3"
    healthy = await _machine(lab_service, HEALTHY)
    assert {item["check"]: item["outcome"] for item in healthy["evidence"]}["ssh"] == "ok"
    refusing = await _machine(lab_service, REFUSES_SSH)
    assert refusing["verdict"] == "degraded"


@pytest_twisted.ensureDeferred
async def test_filters_unknown_machines_and_bad_values(lab_service: RunningService) -> None:
    build = await _health(lab_service, "?pool=build-scl3")
    everything = await _health(lab_service)
    assert 0 < build["machines"] < everything["machines"]
    assert DEAD not in build["down"]

    code, body = await request_json("GET", f"{lab_service.url}/health?enabled=perhaps")
    assert code == 400 and body["msg"].startswith("enabled: expected one of")
    code, body = await request_json("GET", f"{lab_service.url}/slaves/no-such-machine/health")
    assert code == 404 and body["error"] == "not_found"


def _switch_on_remediation(service: RunningService) -> None:
    """Rewrite the ini's [health] with remediation on and short bounds, and reload it."""
    holder = next(child for child in service.service if isinstance(child, ContextHolder))
    path = holder.context().config.path
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    health = (
        "[health]\ninterval = 3\nprobe_timeout = 5\nssh_timeout = 20\nremote_timeout = 10\nmachine_timeout = 60\n"
        "remediate = true\ndown_after = 2\nmax_rebooting_per_pool = 5\nmin_reboot_interval = 3600\n\n"
    )
    text, replaced = re.subn(r"(?ms)^\[health\]\n.*?\n\n", health, text)
    assert replaced == 1
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    assert holder.reload()


@pytest_twisted.ensureDeferred
async def test_with_remediation_a_machine_made_unreachable_is_rebooted_once(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine(HEALTHY)
    store = next(child for child in lab_service.service if isinstance(child, StoreService)).store
    before = {result.requestid for result in store.find(slave=HEALTHY, action="reboot")}
    lab_service.lab.power_off(HEALTHY)
    _switch_on_remediation(lab_service)

    async def rebooted_by_health() -> Any:
        found = [
            result
            for result in store.find(slave=HEALTHY, action="reboot")
            if result.requestid not in before and result.client == HEALTH_CLIENT and result.is_done()
        ]
        return found if found and (await _machine(lab_service, HEALTHY))["verdict"] == "ok" else None

    [result] = await _until("a reboot by health that brought it back", 120, rebooted_by_health)
    assert result.state == 2, result.text
    assert machine.up
    # Later sweeps see it up again; no second reboot (min_reboot_interval).
    sweeps = (await _health(lab_service))["checked_at"]
    await _until("two more sweeps", 30, lambda: _later_sweeps(lab_service, sweeps))
    again = [r for r in store.find(slave=HEALTHY, action="reboot") if r.requestid not in before]
    assert [r.requestid for r in again] == [result.requestid]


async def _later_sweeps(service: RunningService, after: float) -> bool:
    body = await _health(service)
    return bool(body["checked_at"] is not None and body["checked_at"] >= after + 3)
