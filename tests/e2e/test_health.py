"""
The fleet health loop end to end: SlaveAPI serving its lab in this process,
its verdicts read over HTTP (C{GET /health}, C{GET /slaves/<slave>/health}),
and, with remediation switched on by a configuration reload, a machine the
lab hung (powered, not answering) rebooted once by the client C{health},
and several hung machines of one pool rebooted no more at once than
C{max_rebooting_per_pool} allows.

Conditions are awaited by polling the API with a bound, never by a fixed sleep.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from functools import partial
from typing import Any

import pytest_twisted
from twisted.internet.task import deferLater

from slaveapi.health import HEALTH_CLIENT
from slaveapi.results import SUCCESS, ActionResult
from slaveapi.service import ContextHolder, StoreService
from slaveapi.store import SQLiteResultStore
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: The lab's C{[health] interval} in these tests.
LAB_INTERVAL = 10.0
#: C{[health] interval}, C{down_after} and C{min_reboot_interval} once remediation is on.
REMEDIATION_INTERVAL = 3.0
DOWN_AFTER = 2.0
MIN_REBOOT_INTERVAL = 600.0
DEAD = "t-linux64-lab-007"
HEALTHY = "bld-linux64-lab-001"
REFUSES_SSH = "bld-linux64-lab-006"
#: Machines of one pool hung together under C{max_rebooting_per_pool = 1}, all with IPMI BMCs.
CAPPED_POOL = "build-scl3"
CAPPED = ("bld-linux64-lab-006", "bld-linux64-lab-015", "bld-linux64-lab-016")


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(
        str(tmp_path_factory.mktemp("health")), slaves=16, boot_time=1.0, health_interval=LAB_INTERVAL
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


def _switch_on_remediation(service: RunningService, max_rebooting_per_pool: int) -> None:
    """Rewrite the ini's [health] with remediation on and short bounds, and reload it."""
    holder = next(child for child in service.service if isinstance(child, ContextHolder))
    path = holder.context().config.path
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    health = (
        f"[health]\ninterval = {REMEDIATION_INTERVAL:g}\nprobe_timeout = 5\nssh_timeout = 20\nremote_timeout = 10\n"
        f"machine_timeout = 60\nremediate = true\ndown_after = {DOWN_AFTER:g}\n"
        f"max_rebooting_per_pool = {max_rebooting_per_pool}\nmin_reboot_interval = {MIN_REBOOT_INTERVAL:g}\n\n"
    )
    text, replaced = re.subn(r"(?ms)^\[health\]\n.*?\n\n", health, text)
    assert replaced == 1
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    assert holder.reload()


def _results(service: RunningService) -> SQLiteResultStore:
    store = next(child for child in service.service if isinstance(child, StoreService)).store
    assert isinstance(store, SQLiteResultStore)  # the lab service keeps results in SQLite
    return store


def _health_reboots(store: SQLiteResultStore, machines: Collection[str], before: Collection[int]) -> list[ActionResult]:
    """The reboots of C{machines} the health loop asked for, other than those in C{before}, in request order."""
    return [
        result
        for result in store.find(action="reboot")
        if result.slave in machines and result.client == HEALTH_CLIENT and result.requestid not in before
    ]


async def _sweeps(service: RunningService, count: int) -> None:
    """Wait until C{count} sweeps have finished after this call (C{checked_at} changed C{count} times)."""
    seen = [(await _health(service))["checked_at"]]

    async def another() -> bool:
        checked_at = (await _health(service))["checked_at"]
        if checked_at != seen[-1]:
            seen.append(checked_at)
        return len(seen) > count

    await _until(f"{count} more sweeps", (count + 2) * REMEDIATION_INTERVAL + 30, another)


@pytest_twisted.ensureDeferred
async def test_with_remediation_a_hung_machine_is_rebooted_once(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine(HEALTHY)
    store = _results(lab_service)
    before = {result.requestid for result in store.find(action="reboot")}
    # Hung, not powered off: its power stays on, so remediation may reboot it.
    lab_service.lab.hang(HEALTHY)
    _switch_on_remediation(lab_service, max_rebooting_per_pool=5)

    async def rebooted_by_health() -> Any:
        found = [result for result in _health_reboots(store, {HEALTHY}, before) if result.is_done()]
        return found if found and (await _machine(lab_service, HEALTHY))["verdict"] == "ok" else None

    [result] = await _until("a reboot by health that brought it back", 120, rebooted_by_health)
    assert result.state == SUCCESS, result.text
    assert machine.up

    # It hangs again at once: down past down_after for two sweeps, yet not rebooted
    # a second time, because the first was less than min_reboot_interval ago.
    lab_service.lab.hang(HEALTHY)

    async def down_again() -> bool:
        record = await _machine(lab_service, HEALTHY)
        return bool(record["verdict"] == "down" and record["since"] >= result.finish_timestamp - 1)

    await _until("the machine down again", 3 * REMEDIATION_INTERVAL + 30, down_again)
    await _sweeps(lab_service, 2)
    record = await _machine(lab_service, HEALTHY)
    assert record["verdict"] == "down" and record["checked_at"] - record["since"] >= DOWN_AFTER
    assert [r.requestid for r in _health_reboots(store, {HEALTHY}, before)] == [result.requestid]
    assert not machine.up

    lab_service.lab.reboot(HEALTHY)
    await _until("the machine back", 60, lambda: _verdict_is(lab_service, HEALTHY, "ok"))


async def _verdict_is(service: RunningService, name: str, verdict: str) -> bool:
    return bool((await _machine(service, name))["verdict"] == verdict)


@pytest_twisted.ensureDeferred
async def test_the_per_pool_cap_holds_when_several_machines_hang_together(lab_service: RunningService) -> None:
    lab = lab_service.lab
    store = _results(lab_service)
    assert {lab.machine(name).pool for name in CAPPED} == {CAPPED_POOL}
    before = {result.requestid for result in store.find(action="reboot")}
    _switch_on_remediation(lab_service, max_rebooting_per_pool=1)
    for name in CAPPED:
        lab.hang(name)
    pool = {machine.name for machine in lab.fleet.machines if machine.pool == CAPPED_POOL}
    most = 0

    async def all_rebooted() -> bool:
        nonlocal most
        # Anyone's reboots count against the cap; in this test only health's run in the pool.
        reboots = [r for r in store.find(action="reboot") if r.slave in pool and r.requestid not in before]
        most = max(most, sum(1 for r in reboots if not r.is_done()))
        done = {r.slave for r in reboots if r.client == HEALTH_CLIENT and r.state == SUCCESS}
        return done >= set(CAPPED) and all(lab.machine(name).up for name in CAPPED)

    await _until("every hung machine rebooted by health", 90 * len(CAPPED), all_rebooted)
    assert most == 1
    reboots = _health_reboots(store, pool, before)
    assert sorted(r.slave for r in reboots) == sorted(CAPPED), [r.to_dict(True) for r in reboots]
    # One at a time: each was asked for once the one before it had finished (to the second).
    for earlier, later in itertools.pairwise(reboots):
        assert later.request_timestamp >= earlier.finish_timestamp, (earlier.to_dict(True), later.to_dict(True))
    for name in CAPPED:
        await _until(f"{name} not down any more", 3 * REMEDIATION_INTERVAL + 30, partial(_answering, lab_service, name))


async def _answering(service: RunningService, name: str) -> bool:
    return bool((await _machine(service, name))["verdict"] != "down")
