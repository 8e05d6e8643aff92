"""
The C{shutdown_buildslave} action: stop a machine's buildbot gracefully, through its master.

As the reference describes: a slave with no master in slavealloc has
nothing to stop ("No master set, nothing to do!"); a machine whose buildbot
host does not answer over SSH is offline ("Slave is offline, nothing to
do!"). Otherwise the master is asked for a graceful shutdown (the one way
that also works on Windows, and the buildbot finishes its running command
first), and the shutdown is confirmed by reading the tail of
C{<basedir>/twistd.log} over SSH (on the device's foopy when devices.json
names one) every C{[buildbot] poll_interval} seconds, logging in for each
read and out right after it, until a
"Server Shut Down." line written after the request appears, for at most
C{[buildbot] max_wait} seconds ("Couldn't confirm shutdown" after that). The
result says whether the buildbot stopped on command from its master, as a
graceful shutdown does, or was stopped by SIGTERM. A buildbot whose log
already ends with "Server Shut Down." is not running, and is left alone.

The steps are functions (L{stop_buildbot}) that the C{disable} action runs
too, writing into the same L{StatusLines}. The status reads like::

    Requesting graceful shutdown from master bm01-build1...Accepted (Buildbot 0.8, HTTP 302).
    Waiting for the buildbot to shut down...Confirmed: it shut down gracefully on command from its master
    at 2026-11-28 01:30:48+0000.

No SSH session is held while only waiting: the wait may last hours, SSH
places to a host are limited (C{[ssh] per_host}), and for a device the host
is its foopy, which serves many devices. Holding a session through the wait
would keep every other action on that foopy out (L{SSHBusy}) for as long.
A read that finds the host busy or not answering is simply tried again at
the next poll, within the same C{max_wait}.

Nothing from the log is ever echoed but the few fixed messages looked for:
a worker writes its commands' whole environment into twistd.log.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime

from slaveapi.actions._base import Action, ActionFailure, ActionRun, StatusLines, failure_reason
from slaveapi.actions._remote import Busy, Offline, buildbot_address, connect, locate, log_paths, now
from slaveapi.clients import poll_until
from slaveapi.clients.http import RemoteError
from slaveapi.clients.master import MasterError
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.clients.ssh import SSHError
from slaveapi.interfaces import SSHSessionSpec
from slaveapi.machines import Slave
from slaveapi.twistdlog import RUNNING_COMMAND, LogEvent, last_activity, parse_log_line

NO_MASTER = "No master set, nothing to do!"
OFFLINE = "Slave is offline, nothing to do!"

#: How the buildbot ended, as L{ShutdownOutcome.kind} says.
GRACEFUL = "graceful"
SIGTERM = "sigterm"
UNKNOWN_CAUSE = "unknown"
NOT_RUNNING = "not_running"
NO_MASTER_SET = "no_master"
MACHINE_OFFLINE = "offline"

#: The overall limit of the actions that wait for a shutdown (C{[timeouts]} may change it).
ACTION_TIMEOUT = 6 * 3600.0
#: Room kept between the end of the wait and the action's time limit, at most.
_MARGIN = 600.0

_SHUT_DOWN = "Server Shut Down."
_ON_COMMAND = "shutting down on command from master"  # "worker ..." (4.x), "slave ..." (0.8)
_SIGTERM = "Received SIGTERM"
_TAIL_LINES = 100
#: An uptime long enough that the log's boot rules never apply (only the
#: command markers matter when telling a running command apart).
_NO_BOOT_RULE = 10**9


@dataclass(frozen=True)
class ShutdownOutcome:
    """
    How L{stop_buildbot} ended.

    @ivar kind: L{GRACEFUL}, L{SIGTERM} or L{UNKNOWN_CAUSE} for a confirmed
        shutdown; L{NOT_RUNNING}, L{NO_MASTER_SET} or L{MACHINE_OFFLINE}
        when there was nothing to stop.
    @ivar at: when the log says the buildbot stopped, if it does.
    """

    kind: str
    at: datetime | None = None


async def find_master(run: ActionRun, slave: Slave, status: StatusLines) -> MasterRecord | None:
    """
    The master slavealloc says the slave's buildbot is attached to, or None.

    @raise ActionFailure: slavealloc could not be asked.
    """
    record = slave.slavealloc
    if record is None:
        problem = slave.errors.get("slavealloc")
        if problem:
            raise status.fail(f"Could not read {slave.name} from slavealloc: {problem}")
        return None
    if record.current_masterid is None:
        return None
    try:
        master = await run.ctx.clients.slavealloc.get_master(record.current_masterid)
    except RemoteError as error:
        raise status.fail(f"Could not look up master {record.current_masterid} in slavealloc: {error}") from None
    slave.master = master
    return master


async def stop_buildbot(run: ActionRun, slave: Slave, status: StatusLines, reason: str) -> ShutdownOutcome:
    """
    Stop the slave's buildbot gracefully through its master and confirm it from twistd.log.

    Every step and its outcome is added to C{status}.

    @param reason: why, for the master's records (modern masters keep it).
    @raise ActionFailure: with C{status}'s whole text, when the master
        refused or could not be asked, the log could not be read, or the
        shutdown was not confirmed within C{[buildbot] max_wait}.
    """
    master = await find_master(run, slave, status)
    if master is None:
        status.add(NO_MASTER)
        return ShutdownOutcome(NO_MASTER_SET)
    try:
        address, label = await buildbot_address(run, slave)
        session = await connect(run, address, label)
    except Offline:
        status.add(OFFLINE)
        return ShutdownOutcome(MACHINE_OFFLINE)
    except ActionFailure as failure:
        raise status.fail(str(failure.payload)) from None
    reader = _LogReader(run, address, label)
    # Not held while the master is asked, nor through the wait after.
    async with session:
        if not slave.basedir:
            raise status.fail(f"No basedir for {slave.name} in slavealloc, cannot find twistd.log.")
        lines = await reader.tail(slave.basedir, session)
    events = _events(lines or [])
    if events and _SHUT_DOWN in events[-1].message:
        stopped_at = events[-1].timestamp
        status.add(f"Buildbot is not running (its twistd.log ends with {_SHUT_DOWN!r} at {_show(stopped_at)}),"
                   " nothing to do!")
        return ShutdownOutcome(NOT_RUNNING, stopped_at)

    # "After the request" on the log's own clock: the slave's clock may be
    # off from ours, and a new shutdown line follows the newest line now there.
    requested_at = events[-1].timestamp if events else now(run).replace(microsecond=0)
    run.log.info("Requesting graceful shutdown from {master}", master=master.nickname)

    async def request() -> str:
        accepted = await run.ctx.clients.master.shutdown_worker(master, slave.name, reason)
        return f"Accepted (Buildbot {accepted.flavour}, HTTP {accepted.status})."

    await status.step(f"Requesting graceful shutdown from master {master.nickname}", request, failures=(MasterError,))
    return await _wait_for_shutdown(run, reader, slave.basedir, requested_at, status)


async def _wait_for_shutdown(
    run: ActionRun, reader: _LogReader, basedir: str, since: datetime, status: StatusLines
) -> ShutdownOutcome:
    """Poll the log until it shows a shutdown at or after C{since}, for at most C{max_wait}."""
    settings = run.ctx.config.buildbot
    reactor = run.ctx.reactor
    max_wait = _max_wait(run)
    deadline = reactor.seconds() + max_wait
    if run.deadline is not None:
        # The steps before this one took some of the action's time: keep the
        # margin before its time limit, so the action still ends in its own words.
        deadline = min(deadline, run.deadline - _margin(run))
    heading = "Waiting for the buildbot to shut down"
    found: list[ShutdownOutcome] = []

    async def shut_down() -> ShutdownOutcome | None:
        try:
            lines = await reader.tail(basedir)
        except ActionFailure as failure:
            raise ActionFailure(f"Failed: {failure.payload}") from None
        if lines is None:
            return None
        outcome = _shutdown_since(_events(lines), since)
        if outcome is None:
            busy = last_activity(lines, now(run), _NO_BOOT_RULE).last_state == RUNNING_COMMAND
            waiting = f"{heading}..." + ("(it is finishing its running command)" if busy else "")
            if status.lines[-1] != waiting:
                status.replace_last(waiting)
        return outcome

    def unconfirmed() -> ActionFailure:
        return ActionFailure(f"Couldn't confirm shutdown within {max_wait:g} seconds.")

    async def confirmed() -> str:
        outcome = await poll_until(
            reactor,
            shut_down,
            settings.poll_interval,
            deadline - reactor.seconds(),
            "buildbot shutdown",
            timeout_error=unconfirmed,
        )
        found.append(outcome)
        return _describe(outcome)

    # A step, so that the history times the wait; its failures say what they are in their own words.
    await status.step(heading, confirmed, failed=failure_reason)
    run.log.info("Shutdown confirmed ({kind})", kind=found[0].kind)
    return found[0]


def _max_wait(run: ActionRun) -> float:
    """
    C{[buildbot] max_wait}, shortened when the action's time limit would cut
    the wait off: the action then still ends saying it could not confirm.
    """
    config = run.ctx.config
    limit = _limit(run)
    room = limit - _margin(run)
    if config.buildbot.max_wait <= room:
        return config.buildbot.max_wait
    run.log.warn(
        "[buildbot] max_wait {max_wait}s does not fit the action's time limit {limit}s: waiting {room}s",
        max_wait=config.buildbot.max_wait, limit=limit, room=room,
    )
    return room


def _limit(run: ActionRun) -> float:
    """The action's time limit in seconds."""
    return run.ctx.config.timeouts.get(run.action, ACTION_TIMEOUT)


def _margin(run: ActionRun) -> float:
    """How long before the action's time limit the wait for a shutdown gives up."""
    return min(_MARGIN, _limit(run) / 10)


class _LogReader:
    """
    Reads the tail of twistd.log over SSH, logging in for each read and out
    right after it, so that an SSH place to the host (C{[ssh] per_host}) is
    held only while the commands run, never through the waits between reads.
    """

    def __init__(self, run: ActionRun, address: str, label: str) -> None:
        self._run = run
        self._address = address
        self._label = label

    async def tail(self, basedir: str, session: SSHSessionSpec | None = None) -> list[str] | None:
        """
        The last lines of twistd.log.1 then twistd.log, oldest first; None
        when they cannot be read right now (the host does not answer, all
        SSH places to it are taken, or the connection broke).

        @param session: a session to read over, which the caller closes;
            by default one of its own, closed before this returns.
        @raise ActionFailure: the host refuses the login.
        """
        if session is not None:
            return await self._read(basedir, session)
        try:
            own = await connect(self._run, self._address, self._label)
        except (Offline, Busy) as error:
            self._run.log.info("Cannot read twistd.log now, will try again: {reason}", reason=str(error.payload))
            return None
        async with own:
            return await self._read(basedir, own)

    async def _read(self, basedir: str, session: SSHSessionSpec) -> list[str] | None:
        lines: list[str] = []
        try:
            for path in log_paths(basedir):
                result = await session.run(f"tail -n {_TAIL_LINES} {shlex.quote(path)}")
                if result.ok:
                    lines.extend(result.stdout.splitlines())
        except SSHError as error:
            self._run.log.info("Reading twistd.log failed, will log in again: {reason}", reason=str(error))
            return None
        return lines


def _events(lines: list[str]) -> list[LogEvent]:
    return [event for event in map(parse_log_line, lines) if event is not None]


def _shutdown_since(events: list[LogEvent], since: datetime) -> ShutdownOutcome | None:
    """The first shutdown logged at or after C{since}, and what caused it."""
    for index, event in enumerate(events):
        if event.timestamp >= since and _SHUT_DOWN in event.message:
            before = [earlier.message for earlier in events[:index] if earlier.timestamp >= since]
            if any(_ON_COMMAND in message for message in before):
                kind = GRACEFUL
            elif any(_SIGTERM in message for message in before):
                kind = SIGTERM
            else:
                kind = UNKNOWN_CAUSE
            return ShutdownOutcome(kind, event.timestamp)
    return None


def _show(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S%z")


def _describe(outcome: ShutdownOutcome) -> str:
    at = _show(outcome.at) if outcome.at else "an unknown time"
    if outcome.kind == GRACEFUL:
        return f"Confirmed: it shut down gracefully on command from its master at {at}."
    if outcome.kind == SIGTERM:
        return f"Confirmed: it shut down at {at}, but not gracefully: it received SIGTERM."
    return f"Confirmed: it shut down at {at} (its log does not say why)."


async def shutdown_buildslave(run: ActionRun) -> str:
    """Stop the machine's buildbot gracefully through its master and confirm it."""
    slave = await locate(run)
    status = StatusLines(run)
    await stop_buildbot(run, slave, status, reason=f"SlaveAPI shutdown_buildslave request {run.requestid}")
    return status.text


#: The wait is C{[buildbot] max_wait} (5 hours by default); the overall limit
#: leaves room for the lookups and SSH logins around it.
ACTION = Action(
    name="shutdown_buildslave", run=shutdown_buildslave, exclusive=True, single_flight=True, timeout=ACTION_TIMEOUT,
    scope="reboot",
)
