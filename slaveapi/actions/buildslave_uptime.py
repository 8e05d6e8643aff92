"""
The C{buildslave_uptime} action: how long since the machine last booted.

Reads C{cat /proc/uptime} (Linux), else parses C{uptime} (every procps and
BSD/macOS form), or C{net statistics server} on Windows. A device has no
shell of its own: the uptime is that of the foopy its buildbot runs on. The payload is the
uptime in whole seconds.
"""

from __future__ import annotations

from slaveapi.actions._base import Action, ActionFailure, ActionRun
from slaveapi.actions._remote import Offline, buildbot_address, connect, locate, read_uptime


async def buildslave_uptime(run: ActionRun) -> int:
    """Log in over SSH and return the machine's uptime in seconds."""
    slave = await locate(run)
    run.progress("Connecting over SSH...")
    address, label = await buildbot_address(run, slave)
    try:
        session = await connect(run, address, label)
    except Offline:
        raise ActionFailure(f"{slave.name} - Slave is offline, cannot get uptime!") from None
    try:
        run.progress("Connecting over SSH...Connected.\nReading uptime...")
        uptime = await read_uptime(run, slave, session)
    finally:
        session.close()
    run.log.info("Uptime is {uptime} seconds", uptime=uptime)
    return uptime


ACTION = Action(name="buildslave_uptime", run=buildslave_uptime, timeout=300.0)
