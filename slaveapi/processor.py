"""
Runs actions in the background: limits, per-slave locks, timeouts, results.

Each submitted action gets a PENDING result at once. It then waits for its
slave's lock (exclusive actions only) and for a free slot under the
concurrency limit, runs as RUNNING with its progress shown in the result's
text, and finishes as SUCCESS or FAILURE. A finished result is persisted
before anyone waiting on it is told.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock, DeferredSemaphore
from twisted.logger import Logger

from slaveapi.actions._base import Action, ActionFailure, ActionLog, ActionRun
from slaveapi.results import FAILURE, RUNNING, SUCCESS, ActionResult
from slaveapi.store import IResultStore, interrupted_text

if TYPE_CHECKING:
    from slaveapi.context import Context


#: How long a stop waits for cancelled actions to clean up.
STOP_GRACE = 30.0


def _key(slave: str, action: str) -> tuple[str, str]:
    """One machine, however its name was written (case, short or qualified)."""
    return slave.lower().split(".")[0], action


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
    """

    _log = Logger()

    def __init__(
        self,
        store: IResultStore,
        context: Callable[[], "Context"],
        concurrency: int,
        reactor: Any,
        timeouts: Callable[[], dict[str, float]] = dict,
    ) -> None:
        self._store = store
        self._context = context
        self._slots = DeferredSemaphore(concurrency)
        self._reactor = reactor
        self._timeouts = timeouts
        self._slave_locks: dict[str, DeferredLock] = {}
        self._in_flight: dict[tuple[str, str], ActionResult] = {}
        self._joining: dict[tuple[str, str], list[Deferred[ActionResult]]] = {}
        self._waiters: dict[int, list[Deferred[None]]] = {}
        self._running: set[Deferred[None]] = set()
        self._stopping = False
        self._context_users: dict[int, int] = {}

    def stopService(self) -> Deferred[None]:
        """
        Cancel running actions and wait, at most C{STOP_GRACE} seconds, for
        them to clean up and record that they were interrupted.
        """
        super().stopService()
        # Cancelling frees slots and locks: nothing queued may start because of that.
        self._stopping = True
        running = list(self._running)
        for action in running:
            action.cancel()
        finished: Deferred[Any] = DeferredList(running, consumeErrors=True)
        finished.addTimeout(STOP_GRACE, self._reactor)
        return finished.addBoth(lambda _: None)

    async def submit(
        self, slave: str, action: Action, arguments: dict[str, Any] | None = None, client: str | None = None
    ) -> ActionResult:
        """
        Queue C{action} for C{slave} and return its (PENDING) result.

        For a single-flight action already pending or running on this slave,
        return that request's result instead. A caller that goes away (an
        HTTP client hanging up) cancels only its own wait: a request that was
        recorded always runs.
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
            self._joining[key] = []
        created = self._store.create(slave, action.name, client)
        created.addCallbacks(self._start, self._not_recorded, (action, arguments or {}), None, (action, key))
        caller: Deferred[ActionResult] = Deferred()
        created.chainDeferred(caller)
        return await caller

    def _start(self, result: ActionResult, action: Action, arguments: dict[str, Any]) -> ActionResult:
        key = _key(result.slave, action.name)
        if action.single_flight:
            self._in_flight[key] = result
            for joined in self._joining.pop(key, []):
                joined.callback(result)
        running = Deferred.fromCoroutine(self._execute(result, action, arguments))
        self._running.add(running)
        running.addBoth(lambda _: self._running.discard(running))
        return result

    def _not_recorded(self, failure: Any, action: Action, key: tuple[str, str]) -> Any:
        if action.single_flight:
            for joined in self._joining.pop(key, []):
                joined.errback(failure)
        return failure

    def wait(self, result: ActionResult, seconds: float) -> Deferred[None]:
        """Fire when C{result} is finished, or after C{seconds}, whichever is first."""
        if result.is_done() or seconds <= 0:
            return Deferred.fromCoroutine(_nothing())
        waiter: Deferred[None] = Deferred()
        self._waiters.setdefault(result.requestid, []).append(waiter)
        waiter.addTimeout(seconds, self._reactor, onTimeoutCancel=lambda _value, _timeout: None)
        return waiter

    def uses(self, ctx: "Context") -> bool:
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

    async def _execute_in(
        self, ctx: "Context", result: ActionResult, action: Action, arguments: dict[str, Any]
    ) -> None:
        log = ActionLog(self._log, result.slave, result.requestid, action.name)
        lock = None
        try:
            if action.exclusive:
                slave_lock = self._slave_locks.setdefault(_key(result.slave, "")[0], DeferredLock())
                await slave_lock.acquire()
                lock = slave_lock
            await self._slots.acquire()
            try:
                if self._stopping:
                    raise CancelledError()
                await self._run(result, action, arguments, ctx, log)
            finally:
                self._slots.release()
        except CancelledError:
            progress = result.text if result.state == RUNNING and isinstance(result.text, str) else ""
            self._finish(result, FAILURE, interrupted_text(progress), log)
        finally:
            if lock is not None:
                lock.release()
                if not lock.locked and not lock.waiting:
                    self._slave_locks.pop(_key(result.slave, "")[0], None)
            key = _key(result.slave, action.name)
            if self._in_flight.get(key) is result:
                del self._in_flight[key]
            await self._persist_and_notify(result, log)

    async def _run(
        self, result: ActionResult, action: Action, arguments: dict[str, Any], ctx: "Context", log: ActionLog
    ) -> None:
        result.state = RUNNING
        result.start_timestamp = int(self._reactor.seconds())
        self._save_progress(result, log)
        run = ActionRun(ctx, result.slave, result.requestid, action.name, log, lambda text: self._report(result, text, log))
        timeout = self._timeouts().get(action.name, action.timeout)
        log.info("Starting (timeout {timeout}s)", timeout=timeout)
        work = Deferred.fromCoroutine(action.run(run, **arguments))
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            work.cancel()

        timer = self._reactor.callLater(timeout, expire)
        try:
            payload = await work
        except ActionFailure as failure:
            self._finish(result, FAILURE, failure.payload, log)
        except CancelledError:
            if not timed_out:
                raise
            where = f" Last progress:\n{run.status}" if run.status else ""
            self._finish(result, FAILURE, f"Timed out after {timeout:g} seconds.{where}", log)
        except Exception as error:
            log.failure("Action raised an unexpected error")
            where = f"{run.status}\n" if run.status else ""
            self._finish(result, FAILURE, f"{where}Unexpected error: {one_line_reason(error)}", log)
        else:
            self._finish(result, SUCCESS, payload, log)
        finally:
            if timer.active():
                timer.cancel()

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

    def _save_progress(self, result: ActionResult, log: ActionLog) -> None:
        def failed(failure: Any) -> None:
            log.error("Could not persist progress: {reason}", reason=failure.getErrorMessage())

        self._store.save(result).addErrback(failed)

    async def _persist_and_notify(self, result: ActionResult, log: ActionLog) -> None:
        try:
            await self._store.save(result)
        except Exception as error:
            log.error("Could not persist the finished result: {reason}", reason=one_line_reason(error))
        for waiter in self._waiters.pop(result.requestid, []):
            if not waiter.called:
                waiter.callback(None)


async def _nothing() -> None:
    return None
