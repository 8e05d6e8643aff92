"""
The checks of one machine in a health sweep, each giving L{Evidence}.

In order: look the machine up (as actions do, L{locate}, with its BMC's
C{-mgmt} name and its master); probe it; if it answers, log in where its
buildbot runs and read its uptime and twistd.log (the steps
C{buildslave_last_activity} uses, from L{slaveapi.actions._remote}), and
ask its master whether the worker is connected (a 0.8 master cannot say:
no evidence then); where it has a BMC (found as the power actions find
it, L{look_up_bmc}), read the power state (Redfish when the BMC speaks it,
else IPMI) and, from Redfish, the BMC's own health.

The checks run as an L{ActionRun} of the pseudo-action C{health} (request
id 0, progress dropped), so the shared steps log with the machine's name.
Every remote call is bounded by C{[health]}'s timeouts; an error is
evidence (C{unknown} when it is ours or a system's, C{bad} when it is the
machine's), never an exception out of L{check_machine}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from slaveapi.actions._base import ActionFailure, ActionLog, ActionRun
from slaveapi.actions._channels import look_up_bmc
from slaveapi.actions._remote import Busy, Offline, buildbot_address, connect, locate, now, read_uptime, tail_logs
from slaveapi.clients import ClientError, ClientTimeout, within
from slaveapi.config import HealthConfig
from slaveapi.context import Context
from slaveapi.health._verdict import BAD, GOOD, UNCHECKED, Evidence
from slaveapi.interfaces import SSHSessionSpec
from slaveapi.machines import Lookup, Slave
from slaveapi.processor import one_line_reason
from slaveapi.twistdlog import BOOT_GRACE_SECONDS, STOPPED, UNKNOWN, last_activity

#: The name the checks' log lines and L{ActionRun} carry.
HEALTH = "health"

#: What the checks need known of a machine beyond its address.
_LOOKUPS = frozenset({Lookup.BMC, Lookup.MASTER})

#: Redfish health values that make a machine degraded.
_BAD_BMC_HEALTH = frozenset({"warning", "critical"})

_log = Logger(namespace="slaveapi.health")


def _run(ctx: Context, name: str) -> ActionRun:
    """The run the shared action steps are given: the machine's name in logs, no progress kept."""
    return ActionRun(ctx, name, 0, HEALTH, ActionLog(_log, name, 0, HEALTH), lambda _text: None)


def _reason(error: BaseException) -> str:
    if isinstance(error, ActionFailure):
        return str(error.payload).strip().splitlines()[-1] if str(error.payload).strip() else "failed"
    return one_line_reason(error)


async def check_machine(ctx: Context, name: str, limits: HealthConfig) -> list[Evidence]:
    """Every check of the machine called C{name}; never raises but for cancellation."""
    run = _run(ctx, name)
    try:
        slave = await within(ctx.reactor, limits.remote_timeout, locate(run, _LOOKUPS), f"looking up {name}")
    except (ActionFailure, ClientError) as error:
        return [Evidence("lookup", UNCHECKED, _reason(error))]
    evidence = [await _probe(run, slave, limits)]
    if evidence[0].outcome == GOOD:
        evidence.extend(await _buildbot(run, slave, limits))
        worker = await _worker(run, slave, limits)
        if worker is not None:
            evidence.append(worker)
    evidence.extend(await _bmc(run, slave, limits))
    return evidence


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


async def _buildbot(run: ActionRun, slave: Slave, limits: HealthConfig) -> list[Evidence]:
    """SSH login where the buildbot runs, then what its twistd.log says."""
    try:
        address, label = await buildbot_address(run, slave)
        session = await within(run.ctx.reactor, limits.ssh_timeout, connect(run, address, label), f"SSH to {label}")
    except (Offline, ClientTimeout) as error:
        return [Evidence("ssh", BAD, f"no SSH login: {_reason(error)}")]
    except Busy as error:
        return [Evidence("ssh", UNCHECKED, _reason(error))]
    except ActionFailure as error:
        return [Evidence("ssh", BAD, _reason(error))]
    login = Evidence("ssh", GOOD, f"logged in to {label}")
    try:
        async with session:
            activity = await within(
                run.ctx.reactor, limits.ssh_timeout, _activity(run, slave, session, limits), "reading twistd.log"
            )
    except (ActionFailure, ClientError) as error:
        activity = Evidence("buildbot", UNCHECKED, _reason(error))
    return [login, activity]


async def _activity(run: ActionRun, slave: Slave, session: SSHSessionSpec, limits: HealthConfig) -> Evidence:
    uptime = await read_uptime(run, slave, session)
    if uptime < BOOT_GRACE_SECONDS:
        return Evidence("buildbot", GOOD, f"booting (up {uptime} s)")
    if not slave.basedir:
        return Evidence("buildbot", UNCHECKED, "no basedir in slavealloc, cannot find twistd.log")
    found = last_activity(await tail_logs(run, session, slave.basedir), now(run), uptime)
    said = f"{found.last_state}, last activity {found.last_activity_seconds} s ago"
    if found.last_state == STOPPED:
        return Evidence("buildbot", BAD, said)
    if found.last_state == UNKNOWN:
        return Evidence("buildbot", UNCHECKED, said)
    if limits.max_idle > 0 and found.last_state == "ready" and found.last_activity_seconds > limits.max_idle:
        return Evidence("buildbot", BAD, f"{said} (idle longer than {limits.max_idle:g} s)")
    return Evidence("buildbot", GOOD, said)


async def _worker(run: ActionRun, slave: Slave, limits: HealthConfig) -> Evidence | None:
    """Whether the master sees the worker connected; C{None} when there is no master or it cannot say."""
    master = slave.master
    if master is None:
        return None
    try:
        connected = await within(
            run.ctx.reactor,
            limits.remote_timeout,
            run.ctx.clients.master.worker_connected(master, slave.name),
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
    if not slave.ipmi:
        return []
    clients = run.ctx.clients
    reactor = run.ctx.reactor
    bmc = slave.ipmi
    try:
        address, why = await within(reactor, limits.remote_timeout, look_up_bmc(run.ctx, slave), f"looking up {bmc}")
        if address is None:
            return [Evidence("power", UNCHECKED, why or f"{bmc} does not resolve")]
        if await within(reactor, limits.remote_timeout, clients.redfish.speaks_redfish(address), "Redfish"):
            state = await within(reactor, limits.remote_timeout, clients.redfish.power_state(address), "Redfish")
            health = await within(reactor, limits.remote_timeout, clients.redfish.health(address), "Redfish")
            return [_power(bmc, "Redfish", state == "on"), *_bmc_health(bmc, health)]
        powered = await within(reactor, limits.remote_timeout, clients.ipmi.power_state(address), "IPMI")
    except ClientError as error:
        return [Evidence("power", UNCHECKED, f"{bmc}: {one_line_reason(error)}")]
    return [_power(bmc, "IPMI", powered)]


def _power(bmc: str, via: str, on: bool) -> Evidence:
    if on:
        return Evidence("power", GOOD, f"on ({via}, {bmc})")
    return Evidence("power", BAD, f"off ({via}, {bmc})")


def _bmc_health(bmc: str, health: str | None) -> list[Evidence]:
    if health is None:
        return []
    outcome = BAD if health.lower() in _BAD_BMC_HEALTH else GOOD
    return [Evidence("bmc_health", outcome, f"{bmc} reports {health}")]


async def checked(ctx: Context, name: str, limits: HealthConfig) -> list[Evidence]:
    """
    L{check_machine} under C{machine_timeout}; a check that ran out of time
    or failed unexpectedly is C{unknown} evidence (the latter logged).
    """
    try:
        return await within(ctx.reactor, limits.machine_timeout, check_machine(ctx, name, limits), name)
    except CancelledError:
        raise
    except ClientTimeout:
        return [Evidence("check", UNCHECKED, f"checks did not finish within {limits.machine_timeout:g} s")]
    except Exception as error:
        _log.failure("[{slave}] Health check failed unexpectedly", slave=name)
        return [Evidence("check", UNCHECKED, f"check failed: {one_line_reason(error)}")]
