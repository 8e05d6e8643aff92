"""
Steps several actions share: finding the machine, logging in, reading uptime and logs.

The health checks (L{slaveapi.health}) take the same steps, so a machine's
buildbot is judged the same way whether an operator or the loop asks.

They report progress through the L{ActionRun} and turn client errors into
L{ActionFailure}s that say which step failed and why.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Set
from datetime import UTC, datetime

from slaveapi.actions._base import ActionFailure, ActionRun
from slaveapi.clients.dns import DNSError
from slaveapi.clients.ssh import (
    CommandResult,
    SSHBusy,
    SSHConnectionRefused,
    SSHError,
    SSHTimeout,
    SSHUnreachable,
)
from slaveapi.interfaces import SSHSessionSpec
from slaveapi.machines import IdentificationFailed, Lookup, Slave, UnknownMachine, find_slave, load_slave_info
from slaveapi.twistdlog import BOOT_GRACE_SECONDS, BOOTING, LastActivity, last_activity
from slaveapi.uptime import UptimeParseError, parse_net_statistics, parse_proc_uptime, parse_uptime_output

#: Errors that mean the machine is not there, as opposed to refusing us.
OFFLINE_ERRORS = (SSHConnectionRefused, SSHTimeout, SSHUnreachable)

_WINDOWS_NAME = re.compile(r"^(t-w|b-20|y-20|w64-|w32-|t-xp|win)", re.IGNORECASE)


class Offline(ActionFailure):
    """The machine did not answer over SSH."""


class Busy(ActionFailure):
    """
    No SSH place to the host came free in time: SlaveAPI's other sessions to
    it hold all C{[ssh] per_host} of them. Says nothing about the host itself.
    """


class AddressUnknown(ActionFailure):
    """Where the machine's buildbot runs could not be found out (its foopy's DNS lookup)."""


class NoBasedir(ActionFailure):
    """slavealloc gives no basedir for the machine: its twistd.log cannot be found."""


async def locate(run: ActionRun, lookups: Set[Lookup] = frozenset()) -> Slave:
    """
    Find the machine this action is about, or fail saying it is unknown.

    The web layer checked the name already; this checks it again for the
    action (slavealloc may have changed meanwhile, and actions may come
    from elsewhere than the web).

    @param lookups: what else to find out (an action's L{Action.lookups}).
    """
    try:
        slave = await find_slave(run.ctx, run.slave)
    except UnknownMachine as unknown:
        raise ActionFailure(f"{run.slave} - Slave is not known: {unknown}.") from None
    except IdentificationFailed as error:
        raise ActionFailure(f"{run.slave} - {error}.") from None
    if lookups:
        await load_slave_info(run.ctx, slave, lookups)
    for system, reason in slave.errors.items():
        run.log.warn("Lookup in {system} failed: {reason}", system=system, reason=reason)
    return slave


def now(run: ActionRun) -> datetime:
    """The time on the action's reactor (a test's C{Clock} sets it), in UTC."""
    return datetime.fromtimestamp(run.ctx.reactor.seconds(), UTC)


def is_windows(slave: Slave) -> bool:
    """Whether the machine runs Windows (its distro says so, or its name does)."""
    distro = (slave.slavealloc.distro or "") if slave.slavealloc else ""
    return "win" in distro.lower() or bool(_WINDOWS_NAME.match(slave.name))


async def connect(run: ActionRun, host: str, label: str, *, wait: bool = True) -> SSHSessionSpec:
    """
    Log in to C{host}; L{Offline} if it does not answer, L{Busy} if no SSH
    place to it came free, L{ActionFailure} otherwise.

    @param label: how the host is named in messages.
    @param wait: C{False}: L{Busy} at once unless an SSH place to the host is free now.
    """
    run.log.info("Connecting over SSH to {host}", host=host)
    try:
        return await run.ctx.clients.ssh.session(host, wait=wait)
    except OFFLINE_ERRORS as error:
        run.log.info("SSH to {host} failed: {reason}", host=host, reason=str(error))
        raise Offline(f"{label} did not answer over SSH: {error}") from None
    except SSHBusy as error:
        raise Busy(f"Could not log in to {label} over SSH: {error}") from None
    except SSHError as error:
        raise ActionFailure(f"Could not log in to {label} over SSH: {error}") from None


async def _command(run: ActionRun, session: SSHSessionSpec, command: str) -> CommandResult:
    try:
        return await session.run(command)
    except SSHError as error:
        raise ActionFailure(f"Running '{command}' on {run.slave} failed: {error}") from None


async def read_uptime(run: ActionRun, slave: Slave, session: SSHSessionSpec) -> int:
    """
    The machine's uptime in seconds: C{cat /proc/uptime}, else C{uptime}, or on
    Windows C{net statistics server}.
    """
    attempts = [
        ("cat /proc/uptime", parse_proc_uptime),
        ("uptime", parse_uptime_output),
    ]
    windows = ("net statistics server", lambda text: parse_net_statistics(text, now(run)))
    if is_windows(slave):
        attempts.insert(0, windows)
    else:
        attempts.append(windows)
    reasons = []
    for command, parse in attempts:
        result = await _command(run, session, command)
        if not result.ok:
            reasons.append(f"'{command}' exited {result.exit_code}")
            continue
        try:
            return parse(result.stdout)
        except UptimeParseError as error:
            reasons.append(f"'{command}': {error}")
    raise ActionFailure(f"{slave.name} - Could not read uptime: " + "; ".join(reasons))


def log_paths(basedir: str) -> list[str]:
    """The rotated and the current twistd.log under C{basedir}, oldest first."""
    return [posixpath.join(basedir, "twistd.log.1"), posixpath.join(basedir, "twistd.log")]


async def read_last_activity(run: ActionRun, slave: Slave, session: SSHSessionSpec) -> tuple[int, LastActivity]:
    """
    The machine's uptime and what its buildbot last did: C{booting} (for as
    many seconds as it is up) within L{BOOT_GRACE_SECONDS} of a boot, else
    what the last 100 lines of twistd.log.1 and twistd.log under its basedir
    say (L{slaveapi.twistdlog.last_activity}).

    @raise NoBasedir: slavealloc gives no basedir for the machine.
    """
    uptime = await read_uptime(run, slave, session)
    if uptime < BOOT_GRACE_SECONDS:
        return uptime, LastActivity(BOOTING, uptime)
    if not slave.basedir:
        raise NoBasedir(f"{slave.name} - No basedir in slavealloc, cannot find twistd.log.")
    run.progress(f"Uptime is {uptime} seconds.\nReading twistd.log...")
    lines = await tail_logs(run, session, slave.basedir)
    return uptime, last_activity(lines, now(run), uptime)


async def tail_logs(run: ActionRun, session: SSHSessionSpec, basedir: str, lines: int = 100) -> list[str]:
    """The last C{lines} lines of twistd.log.1 then twistd.log; a missing file gives none."""
    collected: list[str] = []
    for path in log_paths(basedir):
        result = await _command(run, session, f"tail -n {int(lines)} {shlex.quote(path)}")
        if result.ok:
            collected.extend(result.stdout.splitlines())
        else:
            run.log.info("No log at {path} (exit {code})", path=path, code=result.exit_code)
    return collected


async def buildbot_address(run: ActionRun, slave: Slave) -> tuple[str, str]:
    """
    Where to read the machine's twistd.log: its own address, or its foopy's.

    @return: the address to connect to and a label for messages.
    @raise AddressUnknown: the foopy's name does not resolve.
    """
    host = slave.buildbot_host
    if host is None or host == slave.fqdn or host == slave.name:
        return slave.address, slave.name
    try:
        info = await run.ctx.clients.dns.lookup_host(host)
    except DNSError as error:
        raise AddressUnknown(f"{slave.name} - Looking up its foopy {host} failed: {error}") from None
    if info is None:
        raise AddressUnknown(f"{slave.name} - its foopy {host} is not in DNS.")
    return info.ip, f"{slave.name}'s foopy {host}"


async def log_in_where_buildbot_runs(run: ActionRun, wanted: str) -> tuple[Slave, SSHSessionSpec]:
    """
    Find the machine and log in where its buildbot runs (itself, or its foopy).

    @param wanted: what the action reads, for the reference's offline text
        C{"<name> - Slave is offline, cannot get <wanted>!"}.
    """
    slave = await locate(run)
    run.progress("Connecting over SSH...")
    try:
        session, _label = await log_in_to_buildbot(run, slave)
    except Offline:
        raise ActionFailure(f"{slave.name} - Slave is offline, cannot get {wanted}!") from None
    run.progress(f"Connecting over SSH...Connected.\nReading {wanted}...")
    return slave, session


async def log_in_to_buildbot(run: ActionRun, slave: Slave, *, wait: bool = True) -> tuple[SSHSessionSpec, str]:
    """
    Log in where the machine's buildbot runs (L{buildbot_address}, L{connect}).

    @param wait: as L{connect}'s.
    @return: the session and how the host is named in messages.
    """
    address, label = await buildbot_address(run, slave)
    return await connect(run, address, label, wait=wait), label
