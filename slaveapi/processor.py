"""
Runs actions in the background: limits, per-slave locks, timeouts, results.

Each submitted action gets a PENDING result at once. It then waits for its
slave's lock (exclusive actions only) and for a free work slot under the
concurrency limit, runs as RUNNING with its progress shown in the result's
text, and finishes as SUCCESS or FAILURE. It holds the work slot only while
it works: while it waits (for a machine to boot, a buildbot to drain, an
instance to start) it gives the slot back and takes it again before going
on (L{slaveapi.work}); the lock it keeps until it ends. A finished result is persisted
before anyone waiting on it is told. How many may wait and which slots each
kind of action may take is L{slaveapi.admission}'s business; locks and
single flight are per machine, by its canonical identity.

The processor works on its own copy of each result; readers see what the
store last wrote (see L{slaveapi.store}). An action starts only once its
RUNNING row is written (one whose start cannot be recorded does not run:
nothing is done to a machine without a record of it). When a finished
result's write fails, it is retried with a growing delay for at most
C{FINAL_WRITE_PATIENCE} seconds while readers go on seeing the last state
written; if it never succeeds, the row stays pending or running and the next
start records it as interrupted.

For the machine's history the processor hands the store, with each new
request, the action's declared form fields that are not secret, and records
each step an action reports (L{slaveapi.actions.StatusLines.step}) as it
starts and ends, timed by the reactor's clock; the action never waits for
those writes, and one that fails is only logged.

With several instances on one database (L{slaveapi.coordination.ICluster}),
the processor also asks the cluster: a new request joins a single-flight
action pending or running through any instance, an exclusive action holds
its machine's lock across every instance (after the local one, so that one
waiter per machine asks the database), and a change another instance makes
to a result wakes this instance's waiters on it and is published to its
event streams. The queued requests of an instance that stopped heartbeating
are handed to a survivor's processor (L{ActionProcessor.adopt}).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock
from twisted.internet.task import deferLater
from twisted.logger import Logger

from slaveapi.actions import Action, ActionFailure, ActionLog, ActionRun, ArgumentError
from slaveapi.actions._base import StepChange
from slaveapi.admission import CHANGES, READS, Limits, QueueFull, Slots
from slaveapi.clients import within
from slaveapi.coordination import Created, ICluster, ResultChange
from slaveapi.events import FINISHED, PROGRESS, REQUESTED, STARTED, ResultEvents
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import IResultStore, ResultTakenOver, StepRecord, StoreUnavailable, interrupted_text
from slaveapi.work import WorkSlot, working_as

if TYPE_CHECKING:
    from slaveapi.context import Context


#: How long a stop waits for cancelled actions to clean up.
STOP_GRACE = 30.0

#: Seconds before the first retry of a finished result's write that failed;
#: each further retry waits twice as long, up to C{FINAL_WRITE_MAX_DELAY}.
FINAL_WRITE_FIRST_DELAY = 1.0
FINAL_WRITE_MAX_DELAY = 60.0

#: Seconds after which a finished result that could not be written is given up.
FINAL_WRITE_PATIENCE = 3600.0


#: How many of other instances' running results the processor remembers seeing start.
MAX_REMOTE_RUNNING = 100_000


class _ActionTimedOut(Exception):
    """An action ran past its time limit and was cancelled."""


def _key(slave: str, action: str) -> tuple[str, str]:
    """
    One machine and action. C{slave} is the machine's canonical identity
    (its slavealloc name, see L{slaveapi.machines.identify}): two names
    that differ are two machines, whatever their first labels.
    """
    return slave.lower(), action


def one_line_reason(error: BaseException) -> str:
    """A short, single-line description of an unexpected error."""
    text = str(error).strip().splitlines()
    detail = text[0] if text else ""
    name = type(error).__name__
    return f"{name}: {detail}" if detail else name


class ActionProcessor(Service):
    """
    Queues and runs actions.

    @param context: returns the context new actions run in; it changes when
        configuration is reloaded, while running actions keep the one they
        started with.
    @param timeouts: per action name, overall limits that override the
        action's own default.
    @param limits: the current slot and queue limits (see
        L{slaveapi.admission}); by default C{concurrency} slots and the
        default read share and queue bound.
    @param events: where result changes are published (L{slaveapi.events});
        C{None} publishes nothing.
    @param cluster: the agreements with other instances sharing the
        database; C{None} for an instance alone.
    """

    _log = Logger()

    def __init__(
        self,
        store: IResultStore,
        context: Callable[[], Context],
        concurrency: int,
        reactor: Any,
        timeouts: Callable[[], dict[str, float]] = dict,
        limits: Callable[[], Limits] | None = None,
        events: ResultEvents | None = None,
        cluster: ICluster | None = None,
    ) -> None:
        self._store = store
        self._cluster = cluster
        # Request ids of other instances' results seen running (their next change is progress),
        # oldest first; bounded, since a finish announced while this instance was not listening is missed.
        self._remote_running: dict[int, None] = {}
        if cluster is not None:
            cluster.follow(self._remote_changed)
        self._events = events
        self._context = context
        if limits is None:
            fixed = Limits.of(concurrency)
            limits = lambda: fixed  # noqa: E731
        self._limits = limits
        # Once stopping, no slot is handed to anyone: what runs is being cancelled.
        self._slots = Slots(lambda: 0 if self._stopping else self._limits().concurrency)
        self._read_slots = Slots(lambda: 0 if self._stopping else self._limits().read_concurrency)
        self._work_slots: set[WorkSlot] = set()
        self._pending = {READS: 0, CHANGES: 0}
        # Actions between taking their work slot and finishing (L{in_flight}).
        self._active = 0
        self._reactor = reactor
        self._timeouts = timeouts
        self._slave_locks: dict[str, DeferredLock] = {}
        self._in_flight: dict[tuple[str, str], ActionResult] = {}
        self._joining: dict[tuple[str, str], list[Deferred[ActionResult]]] = {}
        self._waiters: dict[int, list[Deferred[None]]] = {}
        # requestid -> the last state written, for each action not yet finished and written.
        self._written: dict[int, ActionResult] = {}
        self._running: set[Deferred[None]] = set()
        self._stopping = False
        self._context_users: dict[int, int] = {}
        self._retry_sleeps: set[Deferred[None]] = set()

    def stopService(self) -> Deferred[None]:
        """
        Cancel running actions and wait, at most C{STOP_GRACE} seconds, for
        them to clean up and record that they were interrupted. Sharing a
        database with other instances, queued ones stay queued (their rows
        PENDING) for an instance that goes on to take over; alone, they are
        recorded as interrupted too.
        """
        super().stopService()
        # Cancelling frees slots and locks: nothing queued may start because of that.
        self._stopping = True
        running = list(self._running)
        for action in running:
            action.cancel()
        # A cancelled action taking its slot back on its way out (no slot is
        # handed out any more) is let go without it.
        for slot in list(self._work_slots):
            slot.close()
        for sleep in list(self._retry_sleeps):
            sleep.cancel()
        finished: Deferred[Any] = DeferredList(running, consumeErrors=True)
        finished.addTimeout(STOP_GRACE, self._reactor)

        def stopped(_: object) -> None:
            # Copies kept for final writes given up on: the next start records those.
            self._written.clear()

        return finished.addBoth(stopped)

    async def submit(
        self,
        slave: str,
        action: Action,
        arguments: dict[str, Any] | None = None,
        client: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> ActionResult:
        """
        Queue C{action} for C{slave} and return its (PENDING) result.

        For a single-flight action already pending or running on this slave,
        return that request's result instead. A caller that goes away (an
        HTTP client hanging up) cancels only its own wait: a request that was
        recorded always runs.

        @param slave: the machine's canonical identity.
        @param fields: the form fields the machine's history keeps: the
            action's declared, non-secret ones (L{Action.fields}), read from
            the request by the caller before anything is counted here.
        @raise QueueFull: C{[server] max_queued} requests of the action's kind
            are pending already (joining a request in flight is always possible).
        """
        key = _key(slave, action.name)
        if action.single_flight:
            if key in self._in_flight:
                return self._in_flight[key]
            if key in self._joining:
                # Another request for it is being recorded right now: share it.
                joined: Deferred[ActionResult] = Deferred()
                self._joining[key].append(joined)
                return await joined
        kind = _kind(action)
        limit = self._limits().max_queued
        if self._pending[kind] >= limit:
            raise QueueFull(kind, limit)
        self._pending[kind] += 1
        if action.single_flight:
            self._joining[key] = []
        created: Deferred[Any]
        if self._cluster is None:
            created = self._store.create(slave, action.name, client, dict(fields or {}))
        else:
            created = self._cluster.create(slave, action.name, client, dict(fields or {}), action.single_flight)
        created.addCallbacks(
            self._started_or_joined,
            self._not_recorded,
            callbackArgs=(action, arguments or {}, key),
            errbackArgs=(action, key),
        )
        caller: Deferred[Any] = Deferred()
        created.chainDeferred(caller)
        result: ActionResult = await caller
        return result

    def _started_or_joined(
        self, created: ActionResult | Created, action: Action, arguments: dict[str, Any], key: tuple[str, str]
    ) -> ActionResult:
        """
        Start a result just recorded; but a request the cluster made part of
        another instance's runs nothing, and its local joiners share that result.
        """
        if isinstance(created, Created):
            if created.joined:
                self._pending[_kind(action)] -= 1
                for joined in self._joining.pop(key, []):
                    joined.callback(created.result)
                return created.result
            created = created.result
        return self._start(created, action, arguments)

    def adopt(self, result: ActionResult, action: Action | None, fields: Mapping[str, str]) -> None:
        """
        Run a PENDING C{result} this instance took over from one that
        stopped (see L{slaveapi.postgres.Membership}), asked with the form
        C{fields} its history kept. It counts against nothing: it was
        accepted before. One that cannot run here (an action this release
        does not know, one with secret fields, which no instance stores) is
        recorded as failed.
        """
        log = ActionLog(self._log, result.slave, result.requestid, result.action)
        problem = None
        arguments: dict[str, Any] = {}
        if action is None:
            problem = f"this instance knows no action {result.action!r}"
        elif any(field.secret for field in action.fields):
            problem = "its secret fields were kept only by the instance that stopped"
        else:
            try:
                arguments = action.arguments(fields)
            except ArgumentError as error:
                problem = f"its fields no longer parse ({error})"
        if action is None or problem is not None:
            log.error("Not running the request taken over: {reason}", reason=problem)
            self._written[result.requestid] = dataclasses.replace(result)
            self._finish(result, FAILURE, f"Not run: taken over from a stopped instance, but {problem}.", log)
            recording = Deferred.fromCoroutine(self._record_final(result, log))
            recording.addCallback(lambda _: self._notify(result))
            return
        log.info("Taken over from a stopped instance")
        self._pending[_kind(action)] += 1
        self._start(result, action, arguments)

    def _start(self, result: ActionResult, action: Action, arguments: dict[str, Any]) -> ActionResult:
        self._written[result.requestid] = dataclasses.replace(result)
        key = _key(result.slave, action.name)
        if action.single_flight:
            self._in_flight[key] = result
            for joined in self._joining.pop(key, []):
                joined.callback(result)
        self._publish(REQUESTED, result)
        running = Deferred.fromCoroutine(self._execute(result, action, arguments))
        self._running.add(running)
        running.addBoth(lambda _: self._running.discard(running))
        return result

    def _not_recorded(self, failure: Any, action: Action, key: tuple[str, str]) -> Any:
        self._pending[_kind(action)] -= 1
        if action.single_flight:
            for joined in self._joining.pop(key, []):
                joined.errback(failure)
        return failure

    def wait(self, result: ActionResult, seconds: float) -> Deferred[None]:
        """
        Fire when C{result} is finished and written (by this instance or,
        sharing a database, another), or after C{seconds}, whichever is first.
        """
        return Deferred.fromCoroutine(self._wait(result, seconds))

    async def _wait(self, result: ActionResult, seconds: float) -> None:
        if seconds <= 0:
            return
        # Listening before reading: a finish written between the two is not missed.
        waiter: Deferred[None] = Deferred()
        waiters = self._waiters.setdefault(result.requestid, [])
        waiters.append(waiter)
        try:
            try:
                done = (await self.recorded(result)).is_done()
            except StoreUnavailable:
                done = False  # cannot tell now: wait to be told (or time out)
            if not done:
                waiter.addTimeout(seconds, self._reactor, onTimeoutCancel=lambda _value, _timeout: None)
                await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._waiters.get(result.requestid) is waiters:
                del self._waiters[result.requestid]

    async def recorded(self, result: ActionResult) -> ActionResult:
        """
        C{result} as the store last wrote it: the only state callers may be shown.

        @raise StoreUnavailable: if the store cannot be read just now
            (L{last_written} then says what was written).
        """
        return (await self._store.reads.get(result.requestid)) or self.last_written(result)

    def _remote_changed(self, change: ResultChange) -> None:
        """Another instance wrote a result: wake its waiters here once it is done, and publish it."""
        if change.state in (SUCCESS, FAILURE):
            self._remote_running.pop(change.requestid, None)
            for waiter in list(self._waiters.get(change.requestid, [])):
                if not waiter.called:
                    waiter.callback(None)
        if self._events is None:
            return
        if change.state == PENDING:
            kind = REQUESTED
        elif change.state == RUNNING:
            kind = PROGRESS if change.requestid in self._remote_running else STARTED
            self._remote_running[change.requestid] = None
            if len(self._remote_running) > MAX_REMOTE_RUNNING:
                del self._remote_running[next(iter(self._remote_running))]
        else:
            kind = FINISHED
        reading = self._store.reads.get(change.requestid)

        def publish(found: ActionResult | None) -> None:
            if found is not None and self._events is not None:
                self._events.publish(kind, found, local=False)

        reading.addCallbacks(publish, lambda failure: None)

    def last_written(self, result: ActionResult) -> ActionResult:
        """
        The last state of C{result} the store confirmed writing, known
        without reading the store: a copy kept from its creation until its
        final state is written (after which C{result} itself is that state;
        a final write that was given up on keeps its copy).
        """
        return self._written.get(result.requestid, result)

    def _save(self, result: ActionResult) -> Deferred[None]:
        """Save C{result} as it is now; once written, that state is its L{last_written}."""
        snapshot = dataclasses.replace(result)
        saving = self._store.save(result)
        saving.addCallback(lambda _: self._written.__setitem__(snapshot.requestid, snapshot))
        return saving

    def uses(self, ctx: Context) -> bool:
        """Whether a queued or running action still uses C{ctx}."""
        return self._context_users.get(id(ctx), 0) > 0

    async def _execute(self, result: ActionResult, action: Action, arguments: dict[str, Any]) -> None:
        ctx = self._context()
        self._context_users[id(ctx)] = self._context_users.get(id(ctx), 0) + 1
        try:
            await self._execute_in(ctx, result, action, arguments)
        finally:
            left = self._context_users.pop(id(ctx)) - 1
            if left:
                self._context_users[id(ctx)] = left

    async def _execute_in(self, ctx: Context, result: ActionResult, action: Action, arguments: dict[str, Any]) -> None:
        log = ActionLog(self._log, result.slave, result.requestid, action.name)
        lock = None
        kind = _kind(action)
        slot = self._work_slot(kind)
        self._work_slots.add(slot)
        pending = True
        cluster_locked = False
        handed_over = False
        try:
            if action.exclusive:
                slave_lock = self._slave_locks.setdefault(_key(result.slave, "")[0], DeferredLock())
                await slave_lock.acquire()
                lock = slave_lock
                if self._cluster is not None:
                    try:
                        await self._cluster.lock(_key(result.slave, "")[0], result.requestid)
                    except ResultTakenOver as error:
                        log.warn("Not running it: {reason}", reason=str(error))
                        handed_over = True
                        return
                    cluster_locked = True
            await slot.take()
            pending = False
            self._pending[kind] -= 1
            if self._stopping:
                raise CancelledError()
            with working_as(slot):
                self._active += 1
                try:
                    await self._run(result, action, arguments, ctx, log)
                finally:
                    self._active -= 1
        except CancelledError:
            if result.state == PENDING and self._stopping and self._cluster is not None:
                # Still queued: it stays so, for an instance that goes on to take over.
                log.info("Left queued for another instance: this one is stopping")
                handed_over = True
            else:
                progress = result.text if result.state == RUNNING and isinstance(result.text, str) else ""
                self._finish(result, FAILURE, interrupted_text(progress), log)
        finally:
            slot.close()
            self._work_slots.discard(slot)
            if pending:
                self._pending[kind] -= 1
            if cluster_locked and self._cluster is not None:
                self._unlock_cluster(result, log)
            if lock is not None:
                lock.release()
                if not lock.locked and not lock.waiting:
                    self._slave_locks.pop(_key(result.slave, "")[0], None)
            key = _key(result.slave, action.name)
            if self._in_flight.get(key) is result:
                del self._in_flight[key]
            if not handed_over:
                await self._persist_and_notify(result, log)

    def _unlock_cluster(self, result: ActionResult, log: ActionLog) -> None:
        """Give the machine's cluster-wide lock back; the cluster retries and logs a failure itself."""
        assert self._cluster is not None  # noqa: S101  # only called with a cluster
        unlocking = self._cluster.unlock(_key(result.slave, "")[0], result.requestid)
        unlocking.addErrback(
            lambda failure: log.error(
                "Could not release the machine's lock: {reason}", reason=failure.getErrorMessage()
            )
        )

    def _work_slot(self, kind: str) -> WorkSlot:
        """
        The work slot of an action of C{kind}: for a read-only action one of
        its own first and then a shared one, so that waiting reads never
        queue ahead of changes.
        """
        pools = [self._read_slots, self._slots] if kind == READS else [self._slots]

        def give_back() -> None:
            for pool in reversed(pools):
                pool.release()

        return WorkSlot(lambda resuming: Deferred.fromCoroutine(_take_all(pools, resuming)), give_back)

    def queued(self) -> dict[str, int]:
        """Pending requests by kind (read-only, changing), for operators and tests."""
        return dict(self._pending)

    def in_flight(self) -> int:
        """How many actions are running now (their work slot taken, not yet finished), for operators."""
        return self._active

    async def _run(
        self, result: ActionResult, action: Action, arguments: dict[str, Any], ctx: Context, log: ActionLog
    ) -> None:
        result.state = RUNNING
        result.start_timestamp = int(self._reactor.seconds())
        try:
            await self._save(result)
        except StoreUnavailable as error:
            log.error("Not starting: its start could not be recorded ({reason})", reason=str(error))
            self._finish(result, FAILURE, f"Not started: its start could not be recorded ({error}).", log)
            return
        self._publish(STARTED, result)
        timeout = self._timeouts().get(action.name, action.timeout)
        run = ActionRun(
            ctx,
            result.slave,
            result.requestid,
            action.name,
            log,
            lambda text: self._report(result, text, log),
            client=result.client,
            deadline=self._reactor.seconds() + timeout,
            steps=_StepRecorder(self._store, result.requestid, self._reactor, log),
        )
        log.info("Starting (timeout {timeout}s)", timeout=timeout)
        try:
            payload = await within(
                self._reactor, timeout, action.run(run, **arguments), action.name, timeout_error=_ActionTimedOut
            )
        except ActionFailure as failure:
            self._finish(result, FAILURE, failure.payload, log)
        except _ActionTimedOut:
            where = f" Last progress:\n{run.status}" if run.status else ""
            self._finish(result, FAILURE, f"Timed out after {timeout:g} seconds.{where}", log)
        except CancelledError:
            raise
        except Exception as error:
            log.failure("Action raised an unexpected error")
            where = f"{run.status}\n" if run.status else ""
            self._finish(result, FAILURE, f"{where}Unexpected error: {one_line_reason(error)}", log)
        else:
            self._finish(result, SUCCESS, payload, log)

    def _finish(self, result: ActionResult, state: int, payload: Any, log: ActionLog) -> None:
        result.state = state
        result.text = payload
        result.finish_timestamp = int(self._reactor.seconds())
        log.info("Finished: {state_name}", state_name="SUCCESS" if state == SUCCESS else "FAILURE")

    def _report(self, result: ActionResult, text: str, log: ActionLog) -> None:
        if result.is_done():
            return
        result.text = text
        self._save_progress(result, log)
        self._publish(PROGRESS, result)

    def _save_progress(self, result: ActionResult, log: ActionLog) -> None:
        def failed(failure: Any) -> None:
            log.error("Could not persist progress: {reason}", reason=failure.getErrorMessage())

        self._save(result).addErrback(failed)

    async def _persist_and_notify(self, result: ActionResult, log: ActionLog) -> None:
        # A stop cancelling this coroutine must not abandon the write under way,
        # nor leave its waiters untold: the recording goes on by itself.
        recording = Deferred.fromCoroutine(self._record_final(result, log))
        recording.addCallback(lambda _: self._notify(result))
        view: Deferred[None] = Deferred()
        recording.addBoth(lambda outcome: None if view.called else view.callback(outcome))
        await view

    def _notify(self, result: ActionResult) -> None:
        self._publish(FINISHED, result)
        for waiter in list(self._waiters.pop(result.requestid, [])):
            if not waiter.called:
                waiter.callback(None)

    def _publish(self, kind: str, result: ActionResult) -> None:
        if self._events is not None:
            self._events.publish(kind, result)

    async def _record_final(self, result: ActionResult, log: ActionLog) -> None:
        """
        Write the finished C{result}, retrying while the store cannot be
        written; give up after C{FINAL_WRITE_PATIENCE} seconds (alone; never,
        sharing a database) or when the service stops (the next start, or
        another instance, then records it as interrupted).
        """
        delay = FINAL_WRITE_FIRST_DELAY
        give_up_at = self._reactor.seconds() + FINAL_WRITE_PATIENCE
        while True:
            try:
                await self._store.save(result)
                # Written as it stands: C{result} itself is its last written state from now on.
                self._written.pop(result.requestid, None)
                return
            except ResultTakenOver as error:
                log.error("Its finish was not recorded: {reason}", reason=str(error))
                self._written.pop(result.requestid, None)
                return
            except Exception as error:
                reason = one_line_reason(error)
            # Sharing a database, a row left running would be joined by every later request for
            # it: keep trying until this instance stops (it stops itself when it cannot heartbeat).
            if self._stopping or (self._cluster is None and self._reactor.seconds() + delay > give_up_at):
                break
            log.warn(
                "Could not record the finished result ({reason}); it shows its last recorded state;"
                " retrying in {delay:g}s",
                reason=reason,
                delay=delay,
            )
            sleep: Deferred[None] = deferLater(self._reactor, delay)
            self._retry_sleeps.add(sleep)
            try:
                await sleep
            except CancelledError:
                break
            finally:
                self._retry_sleeps.discard(sleep)
            delay = min(delay * 2, FINAL_WRITE_MAX_DELAY)
        log.error(
            "Gave up recording the finished result ({reason}); it shows its last recorded state"
            " until the next start records it as interrupted",
            reason=reason,
        )


async def _take_all(pools: list[Slots], resuming: bool) -> None:
    """Hold a slot of each of C{pools}, in order; none of them if cancelled on the way."""
    held: list[Slots] = []
    try:
        for pool in pools:
            await pool.acquire(resuming)
            held.append(pool)
    except BaseException:
        for pool in reversed(held):
            pool.release()
        raise


class _StepRecorder:
    """
    Records an action's steps in the store as they start and end, timed by
    the reactor's clock. The action never waits for these writes (the
    store's writer keeps them in order); one that fails is logged, and the
    action goes on.
    """

    def __init__(self, store: IResultStore, requestid: int, reactor: Any, log: ActionLog) -> None:
        self._store = store
        self._requestid = requestid
        self._reactor = reactor
        self._log = log
        self._started: dict[int, float] = {}

    def __call__(self, change: StepChange) -> None:
        now = self._reactor.seconds()
        started = self._started.setdefault(change.n, now)
        if change.finished:
            del self._started[change.n]
        step = StepRecord(change.heading, started, now if change.finished else None, change.outcome)
        try:
            saving = self._store.save_step(self._requestid, change.n, step)
        except Exception as error:  # a closed store's writer refuses at once: the action goes on
            self._failed(change, str(error))
            return
        saving.addErrback(lambda failure: self._failed(change, failure.getErrorMessage()))

    def _failed(self, change: StepChange, reason: str) -> None:
        self._log.error(
            "Could not record step {n} ({step}) for the history: {reason}",
            n=change.n,
            step=change.heading,
            reason=reason,
        )


def _kind(action: Action) -> str:
    """Actions that change machines hold their lock; the others only read."""
    return CHANGES if action.exclusive else READS


async def _nothing() -> None:
    return None
