"""
The C{buildslave_last_activity} action: what the machine's buildbot last did, and when.

A machine up for less than three minutes is C{booting}. Otherwise the last
100 lines of C{twistd.log.1} and C{twistd.log} under the slave's basedir (on
its foopy, for a device) go through the reference state machine in
L{slaveapi.twistdlog}. For a device, uptime and log both come from the
foopy its buildbot runs on. The payload is always
C{{"last_state", "last_activity_seconds", "uptime"}}.
"""

from __future__ import annotations

from typing import Any

from slaveapi.actions._base import Action, ActionRun
from slaveapi.actions._remote import log_in_where_buildbot_runs, read_last_activity


async def buildslave_last_activity(run: ActionRun) -> dict[str, Any]:
    """Return the buildbot's last state, the age of its last activity and the uptime."""
    slave, session = await log_in_where_buildbot_runs(run, "last activity")
    async with session:
        uptime, activity = await read_last_activity(run, slave, session)
    return {
        "last_state": activity.last_state,
        "last_activity_seconds": activity.last_activity_seconds,
        "uptime": uptime,
    }


#: The 2015 service served it as C{get_last_activity} (its documentation said C{buildslave_last_activity}).
ACTION = Action(
    name="buildslave_last_activity",
    run=buildslave_last_activity,
    single_flight=True,
    timeout=300.0,
    scope="inspect",
    routes=("buildslave_last_activity", "get_last_activity"),
)
