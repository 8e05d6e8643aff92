"""
Waiting is not working, end to end: with one work slot ([server]
concurrency = 1, set by a configuration reload), a reboot waiting for its
machine to come back leaves the slot to the next reboot, which runs and
takes its own machine down meanwhile.

The first machine is kept from booting until the test lets it, so the
order proven does not depend on how fast anything is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from slaveapi.lab.machines import LabMachine
from slaveapi.processor import ActionProcessor
from slaveapi.service import ContextHolder, StoreService
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: A bound on waiting for an event, not a claim about speed.
GENEROUS = 120


@pytest_twisted.async_yield_fixture(scope="module")
async def one_slot(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("wave")), slaves=12, boot_time=1.0)
    holder = _child(running, ContextHolder)
    path = holder.context().config.path
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace("[server]\n", "[server]\nconcurrency = 1\n", 1))
    assert holder.reload()
    assert holder.context().config.server.concurrency == 1
    yield running
    await running.stop()


def _child(service: RunningService, kind: type) -> Any:
    return next(child for child in service.service if isinstance(child, kind))


class _GoingDown:
    """A lab power observer: fires C{down[name]} when that machine goes down."""

    def __init__(self, names: list[str]) -> None:
        self.down: dict[str, Deferred[None]] = {name: Deferred() for name in names}

    def machine_down(self, machine: LabMachine) -> None:
        waiting = self.down.get(machine.name)
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    def machine_up(self, machine: LabMachine) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_with_one_slot_a_second_reboot_runs_while_the_first_waits_for_its_machine(
    one_slot: RunningService,
) -> None:
    from twisted.internet import reactor

    lab = one_slot.lab
    first, second = lab.machine("bld-linux64-lab-001"), lab.machine("tst-linux64-lab-002")
    watcher = _GoingDown([first.name, second.name])
    lab.power.add_observer(watcher)
    first.comes_back = False  # down until the test lets it boot

    code, first_result = await request_json(
        "POST", f"{one_slot.url}/slaves/{first.name}/actions/reboot", data={"waittime": "0"}
    )
    assert code == 202, first_result
    await watcher.down[first.name].addTimeout(GENEROUS, reactor)

    code, second_result = await request_json(
        "POST", f"{one_slot.url}/slaves/{second.name}/actions/reboot", data={"waittime": "0"}
    )
    assert code == 202, second_result
    # The one slot is free while the first reboot waits: the second takes its machine down.
    await watcher.down[second.name].addTimeout(GENEROUS, reactor)
    assert not first.up

    code, still = await request_json(
        "GET", f"{one_slot.url}/slaves/{first.name}/actions/reboot?requestid={first_result['requestid']}"
    )
    assert (code, still["state"]) == (200, 1), still
    assert still["text"].endswith("initiated, waiting for it to come back..."), still

    first.comes_back = True
    lab.power.power_off(first)
    lab.power.power_on(first)
    processor: ActionProcessor = _child(one_slot, ActionProcessor)
    store = _child(one_slot, StoreService).store
    for requestid in (first_result["requestid"], second_result["requestid"]):
        result = store.get(requestid)
        await processor.wait(result, GENEROUS).addTimeout(GENEROUS + 30, reactor)
        done = store.get(requestid)
        assert (done.state, done.text) == (2, "Attempting SSH reboot...Success!"), done
