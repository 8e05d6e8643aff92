"""
The C{pause_buildslave} and C{unpause_buildslave} actions: quarantine a
machine's worker on its Buildbot master, and let it work again.

A paused worker finishes the build it is running and takes no new ones, yet
stays connected: the machine can be looked at (or rebooted) without jobs
landing on it and failing, and without the slavealloc change and shutdown
that C{disable} makes. Only Buildbot >= 1.0 masters can pause a worker (the
data API's C{pause} and C{unpause} controls); on a Buildbot 0.8 master the
action fails saying so. The master is the one slavealloc attaches the
machine to, asked as C{shutdown_buildslave} asks it (L{find_master}).

The pause is read back from the master's record of the worker before the
action reports success (L{MasterClient.pause_worker}), so the text says
what the master shows, e.g.::

    Pausing in master bm-modern...Confirmed: the master reports bb-worker-01 paused.

or, on an old master::

    Pausing in master bm01-build1...Failed: master bm01-build1 runs Buildbot 0.8, which cannot pause a worker

C{pause_buildslave} requires a C{reason} (one printable line, as
C{disable}'s): a paused worker is visible to everyone watching the master,
and the master keeps the reason, followed by which request and client
paused it, as the worker's C{pause_reason}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from slaveapi.actions._base import Action, ActionRun, ArgumentError, StatusLines
from slaveapi.actions._bugs import requester
from slaveapi.actions._remote import locate
from slaveapi.actions.disable import REASON_FIELD, check_reason
from slaveapi.actions.shutdown_buildslave import find_master
from slaveapi.clients.master import MasterError
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.machines import Slave

#: Each action asks slavealloc and the master a few bounded questions
#: (C{[http] timeout} each, 30 s by default) and reads the pause back for at
#: most one more timeout.
ACTION_TIMEOUT = 300.0


def pause_arguments(form: Mapping[str, str]) -> dict[str, Any]:
    """C{pause_buildslave}'s form field: C{reason}, one printable line, required."""
    reason = check_reason(form.get("reason") or "")
    if not reason:
        raise ArgumentError("reason", "expected one line saying why the worker is paused, got nothing")
    return {"reason": reason}


async def pause_buildslave(run: ActionRun, reason: str) -> str:
    """
    Pause the machine's worker on its master and confirm the master shows it paused.

    @param reason: why, kept by the master with the worker.
    """
    slave, master, status = await _attached(run, "pause")
    why = f"{reason} (SlaveAPI {run.action} request {run.requestid}, requested by {requester(run)})"

    async def pause() -> str:
        await run.ctx.clients.master.pause_worker(master, slave.name, why)
        return f"Confirmed: the master reports {slave.name} paused."

    run.log.info("Pausing in master {master}", master=master.nickname)
    await status.step(f"Pausing in master {master.nickname}", pause, failures=(MasterError,))
    return status.text


async def unpause_buildslave(run: ActionRun) -> str:
    """Unpause the machine's worker on its master and confirm the master shows it no longer paused."""
    slave, master, status = await _attached(run, "unpause")

    async def unpause() -> str:
        await run.ctx.clients.master.unpause_worker(master, slave.name)
        return f"Confirmed: the master reports {slave.name} no longer paused."

    run.log.info("Unpausing in master {master}", master=master.nickname)
    await status.step(f"Unpausing in master {master.nickname}", unpause, failures=(MasterError,))
    return status.text


async def _attached(run: ActionRun, verb: str) -> tuple[Slave, MasterRecord, StatusLines]:
    """
    The machine, the master slavealloc attaches it to, and the status lines.

    @raise ActionFailure: slavealloc names no master (there is nothing to
        C{verb} it on) or could not be asked.
    """
    slave = await locate(run)
    status = StatusLines(run)
    master = await find_master(run, slave, status)
    if master is None:
        raise status.fail(f"No master set for {slave.name} in slavealloc, cannot {verb} it.")
    return slave, master, status


PAUSE = Action(
    name="pause_buildslave",
    run=pause_buildslave,
    exclusive=True,
    single_flight=True,
    timeout=ACTION_TIMEOUT,
    scope="disable",
    arguments=pause_arguments,
    fields=(replace(REASON_FIELD, required=True),),
)

UNPAUSE = Action(
    name="unpause_buildslave",
    run=unpause_buildslave,
    exclusive=True,
    single_flight=True,
    timeout=ACTION_TIMEOUT,
    scope="disable",
)

ACTIONS = (PAUSE, UNPAUSE)
