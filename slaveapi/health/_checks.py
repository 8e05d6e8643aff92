"""
The checks of one machine in a health sweep, each giving L{Evidence}.

In order: build the machine from the record the sweep listed
(L{slave_from_record}: no second slavealloc request, its address from DNS
and its BMC's C{-mgmt} name); probe it; if it answers, log in where its
buildbot runs and read its uptime and twistd.log (the steps
C{buildslave_last_activity} takes, L{read_last_activity}), and ask its
master whether the worker is connected (a 0.8 master cannot say: no
evidence then); where it has a BMC (found as the power actions find it,
L{bmc_channel}), read the power state through it and, from Redfish, the
BMC's own health.

A sweep never holds up actions, and costs each target a bounded amount:
  - SSH: a check takes an C{[ssh] per_host} place only if one is free at
    once (never waiting in the line actions wait in; otherwise the ssh
    evidence is C{unknown}), and at most one health session is open to one
    host (a foopy serves many devices): the checks of one host wait in a
    line of their own, within C{ssh_timeout};
  - masters: each is looked up in slavealloc once per sweep
    (L{SweepLookups}) and asked about at most L{MASTER_REQUESTS} workers at
    once;
  - BMCs: a power or health reading is one short request each, under the
    clients' own per-BMC limits.

The checks run as an L{ActionRun} of the pseudo-action C{health} (request
id 0, progress dropped), so the shared steps log with the machine's name.
Every remote call is bounded by C{[health]}'s timeouts: C{ssh_timeout} is
one bound for the whole SSH part (waiting for the host's health line,
logging in, reading). An error is evidence (C{unknown} when it is ours or a
system's, C{bad} when it is the machine's), never an exception out of
L{check_machine}.
"""

from __future__ import annotations

from typing import Final

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi.actions._base import ActionFailure, ActionLog, ActionRun
from slaveapi.actions._channels import RedfishChannel, bmc_channel
from slaveapi.actions._remote import (
    AddressUnknown,
    Busy,
    NoBasedir,
    Offline,
    log_in_to_buildbot,
    read_last_activity,
)
from slaveapi.clients import ClientError, ClientTimeout, within
from slaveapi.clients._targets import TargetSlots
from slaveapi.clients.slavealloc import MasterRecord, SlaveRecord
from slaveapi.config import HealthConfig
from slaveapi.context import Context
from slaveapi.health._verdict import BAD, GOOD, UNCHECKED, Evidence
from slaveapi.interfaces import SSHSessionSpec
from slaveapi.machines import Lookup, Slave, load_slave_info, slave_from_record
from slaveapi.processor import one_line_reason
from slaveapi.twistdlog import BOOTING, STOPPED, UNKNOWN

#: The name the checks' log lines and L{ActionRun} carry.
HEALTH = "health"

#: How many C{worker_connected} requests one sweep sends one master at once.
MASTER_REQUESTS: Final = 4

#: Health sessions open to one SSH host at once.
_SESSIONS_PER_HOST: Final = 1

#: The ssh evidence when every C{[ssh] per_host} place is taken.
SSH_BUSY: Final = "SSH places busy with SlaveAPI's own sessions"

#: Redfish health values that make a machine degraded.
_BAD_BMC_HEALTH = frozenset({"warning", "critical"})

_log = Logger(namespace="slaveapi.health")

#: A master as slavealloc gave it (C{None}: it does not know the id), or why it could not be asked.
_MasterLookup = tuple[MasterRecord | None, str | None]


class SweepLookups:
    """
    What one sweep looks up once for all its machines, and its own limits
    per target: each master's record (one slavealloc request per master),
    the requests to each master at once, the health sessions to each SSH host.
    """

    def __init__(self, ctx: Context, limits: HealthConfig) -> None:
        self._ctx = ctx
        self._limits = limits
        self._masters: dict[int, _MasterLookup] = {}
        self._asking: dict[int, list[Deferred[_MasterLookup]]] = {}
        self._master_requests: TargetSlots[int] = TargetSlots(MASTER_REQUESTS)
        self.ssh_hosts: TargetSlots[str] = TargetSlots(_SESSIONS_PER_HOST)

    async def master(self, masterid: int) -> _MasterLookup:
        """The master with this id (asked of slavealloc once per sweep), or why it could not be."""
        if masterid not in self._masters and masterid not in self._asking:
            self._asking[masterid] = []
            # Asked apart from any one check: a check cancelled (its machine_timeout) leaves the others be.
            Deferred.fromCoroutine(self._ask_master(masterid)).addBoth(self._answered, masterid)
        if masterid in self._masters:
            return self._masters[masterid]
        mine: Deferred[_MasterLookup] = Deferred()
        self._asking[masterid].append(mine)
        return await mine

    def _answered(self, outcome: _MasterLookup | Failure, masterid: int) -> None:
        if isinstance(outcome, Failure):
            _log.failure("health: looking up master {masterid} failed unexpectedly", outcome, masterid=masterid)
            outcome = (None, outcome.getErrorMessage())
        found = outcome
        self._masters[masterid] = found
        for waiter in self._asking.pop(masterid, []):
            if not waiter.called:
                waiter.callback(found)

    async def _ask_master(self, masterid: int) -> _MasterLookup:
        ctx = self._ctx
        try:
            record = await within(
                ctx.reactor,
                self._limits.remote_timeout,
                ctx.clients.slavealloc.get_master(masterid),
                f"slavealloc: master {masterid}",
            )
        except ClientError as error:
            return None, one_line_reason(error)
        return record, None

    async def worker_connected(self, master: MasterRecord, worker: str) -> bool | None:
        """The master's C{worker_connected}, once one of its L{MASTER_REQUESTS} places is free."""
        async with self._master_requests.hold(master.masterid):
            return await self._ctx.clients.master.worker_connected(master, worker)


def _run(ctx: Context, name: str) -> ActionRun:
    """The run the shared action steps are given: the machine's name in logs, no progress kept."""
    return ActionRun(ctx, name, 0, HEALTH, ActionLog(_log, name, 0, HEALTH), lambda _text: None)


def _reason(error: BaseException) -> str:
    if isinstance(error, ActionFailure):
        return str(error.payload).strip().splitlines()[-1] if str(error.payload).strip() else "failed"
    return one_line_reason(error)


async def check_machine(
    ctx: Context, record: SlaveRecord, limits: HealthConfig, lookups: SweepLookups | None = None
) -> list[Evidence]:
    """
    Every check of the machine slavealloc listed as C{record}; never raises
    but for cancellation.

    @param lookups: the sweep's shared lookups (a check alone makes its own).
    """
    lookups = lookups or SweepLookups(ctx, limits)
    run = _run(ctx, record.name)
    try:
        slave = await within(ctx.reactor, limits.remote_timeout, _look_up(run, record), f"looking up {record.name}")
    except ClientError as error:
        return [Evidence("lookup", UNCHECKED, one_line_reason(error))]
    evidence = [await _probe(run, slave, limits)]
    if evidence[0].outcome == GOOD:
        evidence.extend(await _buildbot(run, slave, limits, lookups))
        worker = await _worker(run, slave, limits, lookups)
        if worker is not None:
            evidence.append(worker)
    evidence.extend(await _bmc(run, slave, limits))
    return evidence


async def _look_up(run: ActionRun, record: SlaveRecord) -> Slave:
    """The machine, its address and its BMC's name; failed lookups are logged, as L{locate} does."""
    slave = await slave_from_record(run.ctx, record)
    await load_slave_info(run.ctx, slave, {Lookup.BMC})
    for system, reason in slave.errors.items():
        run.log.warn("Lookup in {system} failed: {reason}", system=system, reason=reason)
    return slave


async def _probe(run: ActionRun, slave: Slave, limits: HealthConfig) -> Evidence:
    reactor = run.ctx.reactor
    try:
        alive = await within(
            reactor, limits.probe_timeout, run.ctx.clients.prober.alive(slave.address), f"probing {slave.address}"
        )
    except ClientError as error:
        return Evidence("probe", UNCHECKED, f"could not probe {slave.address}: {one_line_reason(error)}")
    if alive:
        return Evidence("probe", GOOD, f"{slave.address} answers")
    return Evidence("probe", BAD, f"{slave.address} does not answer")


async def _buildbot(run: ActionRun, slave: Slave, limits: HealthConfig, lookups: SweepLookups) -> list[Evidence]:
    """
    SSH login where the buildbot runs, then what its twistd.log says, all
    within one C{ssh_timeout}.
    """
    host = (slave.buildbot_host or slave.address).lower().rstrip(".")
    logging_in = False
    login: Evidence | None = None

    async def steps() -> Evidence:
        nonlocal logging_in, login
        async with lookups.ssh_hosts.hold(host):
            logging_in = True
            session, label = await log_in_to_buildbot(run, slave, wait=False)
            login = Evidence("ssh", GOOD, f"logged in to {label}")
            async with session:
                return await _activity(run, slave, session, limits)

    timeout = limits.ssh_timeout
    try:
        activity = await within(run.ctx.reactor, timeout, steps(), f"SSH to {host}")
    except ClientTimeout:
        if login is not None:
            return [login, Evidence("buildbot", UNCHECKED, f"reading twistd.log did not finish within {timeout:g} s")]
        if logging_in:
            return [Evidence("ssh", BAD, f"no SSH login within {timeout:g} s")]
        return [Evidence("ssh", UNCHECKED, f"other health checks of {host} took the {timeout:g} s")]
    except Offline as error:
        return [Evidence("ssh", BAD, f"no SSH login: {_reason(error)}")]
    except Busy:
        return [Evidence("ssh", UNCHECKED, SSH_BUSY)]
    except AddressUnknown as error:
        return [Evidence("ssh", UNCHECKED, _reason(error))]
    except (ActionFailure, ClientError) as error:
        if login is None:
            return [Evidence("ssh", BAD, _reason(error))]
        return [login, Evidence("buildbot", UNCHECKED, _reason(error))]
    assert login is not None  # noqa: S101  (steps() returned only after logging in)
    return [login, activity]


async def _activity(run: ActionRun, slave: Slave, session: SSHSessionSpec, limits: HealthConfig) -> Evidence:
    try:
        uptime, found = await read_last_activity(run, slave, session)
    except NoBasedir:
        return Evidence("buildbot", UNCHECKED, "no basedir in slavealloc, cannot find twistd.log")
    if found.last_state == BOOTING:
        return Evidence("buildbot", GOOD, f"booting (up {uptime} s)")
    said = f"{found.last_state}, last activity {found.last_activity_seconds} s ago"
    if found.last_state == STOPPED:
        return Evidence("buildbot", BAD, said)
    if found.last_state == UNKNOWN:
        return Evidence("buildbot", UNCHECKED, said)
    if limits.max_idle > 0 and found.last_state == "ready" and found.last_activity_seconds > limits.max_idle:
        return Evidence("buildbot", BAD, f"{said} (idle longer than {limits.max_idle:g} s)")
    return Evidence("buildbot", GOOD, said)


async def _worker(run: ActionRun, slave: Slave, limits: HealthConfig, lookups: SweepLookups) -> Evidence | None:
    """Whether the master sees the worker connected; C{None} when there is no master or it cannot say."""
    record = slave.slavealloc
    if record is None or record.current_masterid is None:
        return None
    master, why = await lookups.master(record.current_masterid)
    if why is not None:
        return Evidence("worker", UNCHECKED, f"could not look its master up: {why}")
    if master is None:
        return None
    try:
        connected = await within(
            run.ctx.reactor,
            limits.remote_timeout,
            lookups.worker_connected(master, slave.name),
            f"asking {master.nickname}",
        )
    except ClientError as error:
        return Evidence("worker", UNCHECKED, f"{master.nickname}: {one_line_reason(error)}")
    if connected is None:
        return None
    if connected:
        return Evidence("worker", GOOD, f"connected to {master.nickname}")
    return Evidence("worker", BAD, f"not connected to {master.nickname}")


async def _bmc(run: ActionRun, slave: Slave, limits: HealthConfig) -> list[Evidence]:
    """Power state and BMC health, where the machine has a C{-mgmt} BMC."""
    bmc = slave.ipmi
    if not bmc:
        return []
    ctx = run.ctx
    bound = limits.remote_timeout
    try:
        channel = await within(ctx.reactor, bound, bmc_channel(ctx, slave), f"asking {bmc} what it speaks")
    except ClientError as error:
        return [Evidence("power", UNCHECKED, f"{bmc}: {one_line_reason(error)}")]
    if isinstance(channel, str):
        return [Evidence("power", UNCHECKED, channel)]
    try:
        on = await within(ctx.reactor, bound, channel.powered(), f"{channel.label}: reading the power")
    except ClientError as error:
        channel.failed()
        return [Evidence("power", UNCHECKED, f"{bmc}: {one_line_reason(error)}")]
    power = Evidence("power", GOOD, f"on ({channel.label}, {bmc})") if on else (
        Evidence("power", BAD, f"off ({channel.label}, {bmc})")
    )
    if not isinstance(channel, RedfishChannel):
        return [power]
    try:
        health = await within(ctx.reactor, bound, ctx.clients.redfish.health(channel.bmc), "Redfish: BMC health")
    except ClientError as error:
        channel.failed()
        return [power, Evidence("bmc_health", UNCHECKED, f"{bmc}: {one_line_reason(error)}")]
    if health is None:
        return [power]
    outcome = BAD if health.lower() in _BAD_BMC_HEALTH else GOOD
    return [power, Evidence("bmc_health", outcome, f"{bmc} reports {health}")]


async def checked(
    ctx: Context, record: SlaveRecord, limits: HealthConfig, lookups: SweepLookups | None = None
) -> list[Evidence]:
    """
    L{check_machine} under C{machine_timeout}; a check that ran out of time
    or failed unexpectedly is C{unknown} evidence (the latter logged).
    """
    try:
        return await within(
            ctx.reactor, limits.machine_timeout, check_machine(ctx, record, limits, lookups), record.name
        )
    except CancelledError:
        raise
    except ClientTimeout:
        return [Evidence("check", UNCHECKED, f"checks did not finish within {limits.machine_timeout:g} s")]
    except Exception as error:
        _log.failure("[{slave}] Health check failed unexpectedly", slave=record.name)
        return [Evidence("check", UNCHECKED, f"check failed: {one_line_reason(error)}")]
