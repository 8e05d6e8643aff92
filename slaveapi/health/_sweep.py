"""
The fleet health loop: a sweep of every enabled machine, every C{[health] interval}.

A sweep lists slavealloc's machines, checks each enabled one
(L{slaveapi.health._checks}), C{[health] concurrency} at a time under a
semaphore of its own (never the action processor's work slots: a sweep
never holds up actions), stores the verdicts in one write, and then lets
L{Remediation} act on them. The next sweep starts C{interval} seconds
after this one started, or at once when it took longer: sweeps never
overlap. Times come from the reactor (a C{Clock} in tests).

The loop reads the current configuration at each sweep; a reload that
changes C{interval} moves the next sweep (L{HealthService.reloaded}), and
the clients of the context a sweep started with stay open until it ends
(L{HealthService.uses}). When slavealloc cannot be listed, every stored
machine's verdict becomes C{unknown}, saying why; so does the stored
verdict of a machine no longer enabled (it is not checked any more), and
a machine slavealloc has not listed for L{FORGET_AFTER} seconds is
forgotten. A stop during a sweep cancels it: nothing is submitted after.

Several instances sharing one database sweep once per interval across the
cluster, not once each: given a L{Lease}, an instance takes (or renews) the
C{health-sweep} lease for C{interval + machine_timeout} seconds before each
sweep, and skips its turn when another instance holds it (or the database
cannot say); the holder gives it up when it stops. The instances that do not
sweep serve the verdicts the sweeping one stores (the store shares them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.base import DelayedCall
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi.clients import ClientError, within
from slaveapi.clients.slavealloc import SlaveRecord, filter_slaves
from slaveapi.config import HealthConfig
from slaveapi.context import Context
from slaveapi.health._checks import SweepLookups, checked
from slaveapi.health._remediation import Remediation
from slaveapi.health._store import HealthStoreError, IHealthStore
from slaveapi.health._verdict import UNCHECKED, VERDICTS, Evidence, HealthRecord, next_record, not_checked
from slaveapi.machines import canonical_name
from slaveapi.postgres._database import DatabaseUnavailable
from slaveapi.processor import one_line_reason

#: A stored verdict of a machine slavealloc has not listed for this long (seconds) is forgotten.
FORGET_AFTER = 30 * 24 * 3600.0
#: Sweeps further apart than this many intervals (end to start) leave a gap: verdicts start afresh.
_GAP = 2
#: The lease the sweeping instance holds.
SWEEP_LEASE = "health-sweep"


class Lease(Protocol):
    """A lease shared by the instances (L{slaveapi.postgres._health.SweepLease})."""

    def take(self, name: str, seconds: float) -> Deferred[bool]:
        """Take or renew C{name} for C{seconds}; whether it is ours (fails with L{DatabaseUnavailable})."""

    def release(self, name: str) -> Deferred[None]:
        """Give C{name} up, if it is ours."""


class HealthService(Service):
    """
    Opens the health store, runs the sweeps, closes the store.

    @param context: the current context (a reload replaces it).
    @param remediation: acts on each sweep's verdicts (it obeys C{[health] remediate}).
    @param ready: the first sweep waits for it (the lab's BMCs start on their own time).
    @param lease: sweep only while holding it (instances sharing a database);
        C{None}: sweep every time (a single instance).
    """

    _log = Logger(namespace="slaveapi.health")

    def __init__(
        self,
        store: IHealthStore,
        context: Callable[[], Context],
        reactor: Any,
        remediation: Remediation | None = None,
        ready: Deferred[None] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.store = store
        self._context = context
        self._reactor = reactor
        self._remediation = remediation
        self._ready = ready
        self._lease = lease
        self._holding = False
        self._opening: Deferred[None] | None = None
        self._next: DelayedCall | None = None
        self._sweeping: Deferred[dict[str, int] | None] | None = None
        self._sweep_context: Context | None = None
        self._last_start: float | None = None
        self._opened = False

    def startService(self) -> None:
        super().startService()
        try:
            opening = self.store.open()
        except HealthStoreError as error:
            self._not_checking(error)
            return
        if opening is None:
            self._store_opened()
            return
        self._opening = opening

        def opened(outcome: Any) -> None:
            self._opening = None
            if not isinstance(outcome, Failure):
                self._store_opened()
            elif not outcome.check(CancelledError):
                self._not_checking(outcome.value or Exception("the health store did not open"))

        opening.addBoth(opened)

    def _not_checking(self, error: BaseException) -> None:
        reason = str(error) if isinstance(error, HealthStoreError) else one_line_reason(error)
        self._log.error("health: not checking machines: {reason}", reason=reason)

    def _store_opened(self) -> None:
        self._opened = True
        if not self.running:  # stopped while it opened: the stop closes it
            return
        if self._ready is None:
            self._schedule(0.0)
            return

        def first(outcome: Any) -> Any:
            # Others wait on the same Deferred: its outcome goes on to them unchanged.
            if not isinstance(outcome, Failure):
                self._schedule(0.0)
            return outcome

        self._ready.addBoth(first)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._opening is not None:
            # The store's open is bounded by its own timeouts; a failure of it was logged.
            with contextlib.suppress(Exception):
                await self._opening
        if self._sweeping is not None:
            sweeping = self._sweeping
            sweeping.cancel()
            with contextlib.suppress(CancelledError):
                await sweeping
        if self._lease is not None and self._holding:
            self._holding = False
            try:
                await self._lease.release(SWEEP_LEASE)
            except DatabaseUnavailable as error:
                self._log.warn("health: could not give the sweep lease up: {reason}", reason=str(error))
        if self._opened:
            self._opened = False
            await self.store.close()

    def uses(self, ctx: Context) -> bool:
        """Whether the sweep under way uses C{ctx} (a reload must not close its clients yet)."""
        return self._sweep_context is ctx

    def reloaded(self) -> None:
        """The configuration was reloaded: move the next sweep to the new C{interval}."""
        if self._next is None or not self._next.active() or self._last_start is None:
            return
        self._next.cancel()
        interval = self._context().config.health.interval
        self._schedule(max(0.0, self._last_start + interval - self._reactor.seconds()))

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._next = self._reactor.callLater(delay, self._start_sweep)

    def _start_sweep(self) -> None:
        self._next = None
        started = self._last_start = self._reactor.seconds()
        limits = self._context().config.health
        if not limits.enabled:
            self._schedule(limits.interval)
            return
        sweeping = self._sweeping = Deferred.fromCoroutine(self._turn(limits.interval + limits.machine_timeout))

        def done(outcome: Any) -> None:
            self._sweeping = None
            if isinstance(outcome, Failure):
                if outcome.check(CancelledError):
                    return
                self._log.failure("health: the sweep failed", outcome)
            interval = self._context().config.health.interval
            self._schedule(max(0.0, started + interval - self._reactor.seconds()))

        sweeping.addBoth(done)

    async def _turn(self, lease_seconds: float) -> dict[str, int] | None:
        """This instance's sweep, when it holds the lease (or there is none); C{None} when it skips it."""
        if self._lease is not None:
            try:
                taken = await self._lease.take(SWEEP_LEASE, lease_seconds)
            except DatabaseUnavailable as error:
                self._log.warn("health: not sweeping this time: no sweep lease: {reason}", reason=str(error))
                return None
            self._holding = taken
            if not taken:
                self._log.debug("health: not sweeping this time: another instance holds the sweep lease")
                return None
        return await self.sweep()

    async def sweep(self) -> dict[str, int]:
        """
        Check every enabled machine once, store the verdicts, remediate.

        @return: how many machines got each verdict.
        """
        ctx = self._sweep_context = self._context()
        try:
            return await self._sweep(ctx)
        finally:
            self._sweep_context = None

    async def _sweep(self, ctx: Context) -> dict[str, int]:
        limits = ctx.config.health
        reactor = self._reactor
        started = reactor.seconds()
        try:
            slaves = await within(reactor, limits.remote_timeout, ctx.clients.slavealloc.list_slaves(), "slavealloc")
        except ClientError as error:
            return await self._slavealloc_failed(one_line_reason(error))
        listed = {canonical_name(ctx.config, slave.name): slave for slave in slaves}
        enabled = {canonical_name(ctx.config, slave.name): slave for slave in filter_slaves(slaves, enabled=True)}
        semaphore = DeferredSemaphore(limits.concurrency)
        lookups = SweepLookups(ctx, limits)
        # Since is kept across sweeps, not across a gap in them (SlaveAPI or the loop stopped a while);
        # a machine disabled meanwhile was made unknown (_not_enabled), so its since starts afresh anyway.
        last = self.store.last_sweep()
        continued = last is not None and started - last <= _GAP * limits.interval

        async def check(name: str, slave: SlaveRecord) -> HealthRecord:
            evidence = await checked(ctx, slave, limits, lookups)
            return next_record(self.store.get(name), name, slave.pool, evidence, reactor.seconds(), continued)

        def one(name: str, slave: SlaveRecord) -> Deferred[HealthRecord]:
            return semaphore.run(lambda: Deferred.fromCoroutine(check(name, slave)))

        records: list[HealthRecord] = await gatherResults(
            [one(name, slave) for name, slave in enabled.items()], consumeErrors=True
        )
        unchecked, forget = self._not_enabled(listed, enabled)
        counts = await self._save(records, started, unchecked, forget)
        # Stopping cancels the sweep, but a store write that ended just then is no reason to go on.
        if self._remediation is not None and self.running and await self._still_sweeping(limits):
            await self._remediation.after_sweep(limits, {record.name: record for record in records}, listed)
        return counts

    async def _still_sweeping(self, limits: HealthConfig) -> bool:
        """
        Whether this instance still holds the sweep lease, renewed for the
        remediation: a sweep that outlasted it may have a second one beside
        it, and two would each count the per-pool reboot cap on their own.
        """
        if self._lease is None:
            return True
        try:
            held = await self._lease.take(SWEEP_LEASE, limits.interval + limits.machine_timeout)
        except DatabaseUnavailable as error:
            self._log.warn(
                "health: no remediation this sweep: the sweep lease cannot be renewed: {reason}", reason=str(error)
            )
            return False
        if not held:
            self._log.warn("health: no remediation this sweep: it outlasted its sweep lease, now another's")
        return held

    def _not_enabled(
        self, listed: dict[str, SlaveRecord], enabled: dict[str, SlaveRecord]
    ) -> tuple[list[HealthRecord], list[str]]:
        """
        The stored records of machines this sweep did not check, made
        C{unknown} (their old verdict would be served as current); and the
        machines long unlisted, to forget.
        """
        now = self._reactor.seconds()
        changed: list[HealthRecord] = []
        forget: list[str] = []
        for name, old in self.store.records().items():
            if name in enabled:
                continue
            if name not in listed and (old.checked_at is None or now - old.checked_at > FORGET_AFTER):
                forget.append(name)
                continue
            why = "not enabled in slavealloc: not checked" if name in listed else "not listed in slavealloc"
            evidence = (Evidence("slavealloc", UNCHECKED, why),)
            if old.evidence != evidence:
                changed.append(not_checked(old, evidence, now))
        return changed, forget

    async def _slavealloc_failed(self, reason: str) -> dict[str, int]:
        self._log.warn("health: could not list the machines in slavealloc: {reason}", reason=reason)
        now = self._reactor.seconds()
        evidence = [Evidence("slavealloc", UNCHECKED, f"could not list the machines: {reason}")]
        records = [not_checked(old, evidence, now) for old in self.store.records().values()]
        return await self._save(records, now)

    async def _save(
        self,
        records: list[HealthRecord],
        started: float,
        unchecked: list[HealthRecord] | None = None,
        forget: list[str] | None = None,
    ) -> dict[str, int]:
        """
        Store C{records} (this sweep's checks) with C{unchecked} (machines
        it did not check) and drop C{forget}; how many of C{records} got
        each verdict.
        """
        finished = self._reactor.seconds()
        counts = {verdict: 0 for verdict in VERDICTS}
        for record in records:
            counts[record.verdict] += 1
        self._log.info(
            "health: checked {machines} machines in {seconds:.1f} s: {ok} ok, {degraded} degraded,"
            " {down} down, {unknown} unknown",
            machines=len(records),
            seconds=finished - started,
            **counts,
        )
        try:
            await self.store.save_sweep([*records, *(unchecked or [])], finished, forget or [])
        except CancelledError:
            raise
        except Exception as error:
            self._log.error("health: could not store the verdicts: {reason}", reason=one_line_reason(error))
        return counts
