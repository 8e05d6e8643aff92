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

from slaveapi.actions._base import Action, ActionFailure, ActionRun
from slaveapi.actions._remote import log_in_where_buildbot_runs, now, read_uptime, tail_logs
from slaveapi.twistdlog import BOOT_GRACE_SECONDS, last_activity


async def buildslave_last_activity(run: ActionRun) -> dict[str, Any]:
    """Return the buildbot's last state, the age of its last activity and the uptime."""
    slave, session = await log_in_where_buildbot_runs(run, "last activity")
    async with session:
        uptime = await read_uptime(run, slave, session)
        if uptime < BOOT_GRACE_SECONDS:
            return {"last_state": "booting", "last_activity_seconds": uptime, "uptime": uptime}
        if not slave.basedir:
            raise ActionFailure(f"{slave.name} - No basedir in slavealloc, cannot find twistd.log.")
        run.progress(f"Uptime is {uptime} seconds.\nReading twistd.log...")
        lines = await tail_logs(run, session, slave.basedir)
    activity = last_activity(lines, now(run), uptime)
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
