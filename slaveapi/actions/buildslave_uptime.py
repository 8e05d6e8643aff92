"""
The C{buildslave_uptime} action: how long since the machine last booted.

Reads C{cat /proc/uptime} (Linux), else parses C{uptime} (every procps and
BSD/macOS form), or C{net statistics server} on Windows. A device has no
shell of its own: the uptime is that of the foopy its buildbot runs on. The payload is the
uptime in whole seconds.
"""

from __future__ import annotations

from slaveapi.actions._base import Action, ActionRun
from slaveapi.actions._remote import log_in_where_buildbot_runs, read_uptime


async def buildslave_uptime(run: ActionRun) -> int:
    """Log in over SSH and return the machine's uptime in seconds."""
    slave, session = await log_in_where_buildbot_runs(run, "uptime")
    async with session:
        uptime = await read_uptime(run, slave, session)
    run.log.info("Uptime is {uptime} seconds", uptime=uptime)
    return uptime


#: The 2015 service served it as C{get_uptime} (its documentation said C{buildslave_uptime}).
ACTION = Action(
    name="buildslave_uptime",
    run=buildslave_uptime,
    single_flight=True,
    timeout=300.0,
    scope="inspect",
    routes=("buildslave_uptime", "get_uptime"),
)
