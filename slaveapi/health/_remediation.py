"""
Remediation: rebooting machines the health loop found down, within limits.

Off unless C{[health] remediate = true}. After each sweep, a machine gets a
C{reboot} submitted (as the client C{health}, through the processor like
any POST: an ordinary result anyone can read, exclusive per machine,
filing a bug when every method fails, as any reboot does) when all of these hold:

  - its verdict is C{down} and has been for C{down_after} seconds;
  - its BMC does not report its power off: someone may have turned it off
    on purpose, and C{power_on} is what turns it on;
  - slavealloc lists it as enabled (this sweep's list);
  - no action of anyone's is pending or running on it (the results store
    says so; a reboot asked for by someone else counts too);
  - the loop has not rebooted it in the last C{min_reboot_interval}
    seconds (remembered in the health store, across restarts);
  - fewer than C{max_rebooting_per_pool} reboots are pending or running in
    its pool, whoever asked for them: a human's reboots use up the cap too
    (their machines' pools are read from slavealloc's whole list, enabled
    or not).

Candidates are taken longest-down first. The reboot is remembered before
it is submitted, so that one cancelled mid-way is still counted against
C{min_reboot_interval}; a submission refused (queue full, results store
unavailable) forgets it again. Every decision is logged with the machine,
its pool and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from slaveapi.actions import Action
from slaveapi.actions.registry import ACTIONS
from slaveapi.admission import QueueFull
from slaveapi.clients.slavealloc import SlaveRecord
from slaveapi.config import HealthConfig
from slaveapi.health._store import IHealthStore
from slaveapi.health._verdict import BAD, DOWN, HealthRecord
from slaveapi.processor import one_line_reason
from slaveapi.results import PENDING, RUNNING, ActionResult
from slaveapi.store import IResultStore, ResultQuery, StoreUnavailable

#: The client name the loop's reboots are recorded under.
HEALTH_CLIENT = "health"

_log = Logger(namespace="slaveapi.health")


class Submitter(Protocol):
    """What remediation asks of the action processor (L{slaveapi.processor.ActionProcessor})."""

    async def submit(
        self, slave: str, action: Action, arguments: dict[str, Any] | None = None, client: str | None = None
    ) -> ActionResult:
        """Queue C{action} for C{slave}; its result."""


class Remediation:
    """
    Decides and submits the reboots after a sweep.

    @param processor: submits the reboots.
    @param results: the results store, asked which actions are pending or running.
    @param store: remembers when the loop last rebooted each machine.
    """

    def __init__(self, processor: Submitter, results: IResultStore, store: IHealthStore, reactor: Any) -> None:
        self._processor = processor
        self._results = results
        self._store = store
        self._reactor = reactor

    async def after_sweep(
        self, limits: HealthConfig, records: Mapping[str, HealthRecord], listed: Mapping[str, SlaveRecord]
    ) -> list[str]:
        """
        Submit the reboots the rules allow (see the module docstring).

        @param records: this sweep's verdicts, by canonical machine name.
        @param listed: every machine slavealloc lists (enabled or not), by canonical name.
        @return: the machines a reboot was submitted for.
        """
        if not limits.remediate:
            return []
        now = self._reactor.seconds()
        candidates = sorted(
            (
                record
                for record in records.values()
                if record.verdict == DOWN and record.since is not None and now - record.since >= limits.down_after
            ),
            key=lambda record: (record.since, record.name),
        )
        if not candidates:
            return []
        try:
            busy = await self._busy()
        except StoreUnavailable as error:
            _log.warn("health: no remediation this sweep: results cannot be read ({reason})", reason=str(error))
            return []
        rebooting: dict[str | None, int] = {}
        for result in busy:
            if result.action == "reboot":
                pool = _pool_of(result.slave, records, listed)
                rebooting[pool] = rebooting.get(pool, 0) + 1
        occupied = {result.slave for result in busy}
        last = self._store.last_reboots()
        submitted: list[str] = []
        for record in candidates:
            why = self._why_not(record, limits, now, listed, occupied, last, rebooting)
            if why is not None:
                _log.info(
                    "health: not rebooting {slave} (pool {pool}): {reason}",
                    slave=record.name,
                    pool=record.pool,
                    reason=why,
                    decision="skip",
                )
                continue
            if await self._submit(record, now, last.get(record.name)):
                submitted.append(record.name)
                rebooting[record.pool] = rebooting.get(record.pool, 0) + 1
        return submitted

    async def _busy(self) -> list[ActionResult]:
        """Every action pending or running now."""
        busy: list[ActionResult] = []
        for state in (PENDING, RUNNING):
            busy.extend(await self._results.reads.page(ResultQuery(state=state, limit=-1)))
        return busy

    @staticmethod
    def _why_not(
        record: HealthRecord,
        limits: HealthConfig,
        now: float,
        listed: Mapping[str, SlaveRecord],
        occupied: set[str],
        last: Mapping[str, float],
        rebooting: Mapping[str | None, int],
    ) -> str | None:
        """Why C{record}'s machine is not rebooted now, or C{None} when it is."""
        slave = listed.get(record.name)
        if slave is None or not slave.enabled:
            return "not enabled in slavealloc"
        if any(item.check == "power" and item.outcome == BAD for item in record.evidence):
            return "its BMC reports its power off (someone may have turned it off: power_on turns it on)"
        if record.name in occupied:
            return "an action is pending or running on it"
        previous = last.get(record.name)
        if previous is not None and now - previous < limits.min_reboot_interval:
            return (
                f"rebooted by health {now - previous:.0f} s ago (min_reboot_interval {limits.min_reboot_interval:g} s)"
            )
        if rebooting.get(record.pool, 0) >= limits.max_rebooting_per_pool:
            return (
                f"{rebooting.get(record.pool, 0)} reboots pending or running in its pool"
                f" (max_rebooting_per_pool {limits.max_rebooting_per_pool})"
            )
        return None

    async def _submit(self, record: HealthRecord, now: float, previous: float | None) -> bool:
        """Remember, then submit, a reboot of C{record}'s machine; whether it was submitted."""
        await self._written(self._store.record_reboot(record.name, now), record)
        try:
            result = await self._processor.submit(record.name, ACTIONS["reboot"], {}, client=HEALTH_CLIENT)
        except (QueueFull, StoreUnavailable) as error:
            _log.warn(
                "health: could not submit a reboot of {slave}: {reason}",
                slave=record.name,
                pool=record.pool,
                reason=str(error),
                decision="failed",
            )
            await self._written(self._store.forget_reboot(record.name, previous), record)
            return False
        _log.info(
            "health: rebooting {slave} (pool {pool}), down since {since}: request {requestid}",
            slave=record.name,
            pool=record.pool,
            since=record.since,
            requestid=result.requestid,
            decision="reboot",
        )
        return True

    @staticmethod
    async def _written(writing: Deferred[None], record: HealthRecord) -> None:
        """
        Wait for a write of the store; one that fails is logged, not raised:
        the store remembers in memory meanwhile, and the other candidates
        still get their turn.
        """
        try:
            await writing
        except CancelledError:
            raise
        except Exception as error:
            _log.error(
                "health: could not store the reboot of {slave}: {reason}",
                slave=record.name,
                pool=record.pool,
                reason=one_line_reason(error),
            )


def _pool_of(name: str, records: Mapping[str, HealthRecord], listed: Mapping[str, SlaveRecord]) -> str | None:
    """The pool of the machine results call C{name}: from slavealloc's list, else its last verdict."""
    if name in listed:
        return listed[name].pool
    record = records.get(name)
    return record.pool if record is not None else None
