"""
Which instances are alive, and what becomes of the work of one that died.

Each instance has a row in C{instances} whose C{heartbeat} it sets to the
reactor's time every C{check_interval} seconds. An instance whose heartbeat
is older than the lease is taken for dead by the first survivor to notice,
which fails it over in one transaction: its running results are recorded
as interrupted (their progress kept), its queued ones become the
survivor's, to run there (C{adopt}), its machine locks are released and
its row is deleted. The row is locked with C{SKIP LOCKED}, so that two
survivors never both fail over one instance.

An instance that was only slow (paused, cut off from the database longer
than the lease) finds its row gone at its next heartbeat: it has been
failed over and must not go on as if it had not (C{fenced}); the store's
fenced writes already refuse its results.

Instances' clocks must agree within a fraction of the lease.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from psycopg import AsyncConnection
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from slaveapi.coordination import interrupted_by_loss_text
from slaveapi.postgres._cluster import LOCKS_CHANNEL, RESULTS_CHANNEL
from slaveapi.postgres._database import Database, DatabaseUnavailable, as_deferred
from slaveapi.results import FAILURE, PENDING, RUNNING, ActionResult
from slaveapi.store import _from_row

#: At most this many dead instances are failed over in one pass (the rest in the next).
MAX_FAILOVERS_PER_PASS = 20

_UNFINISHED = "SELECT requestid, state, text FROM results WHERE instance = %s AND state = ANY(%s) FOR UPDATE"
_INTERRUPT = """
    UPDATE results AS r SET state = %s, text = u.text, finish_timestamp = %s, flight = NULL
    FROM unnest(%s::bigint[], %s::text[]) AS u(requestid, text)
    WHERE r.requestid = u.requestid
"""
_TAKE_OVER = """
    UPDATE results SET instance = %s WHERE instance = %s AND state = %s
    RETURNING requestid, slave, action, state, text, request_timestamp, start_timestamp, finish_timestamp, client
"""
_JOIN = "INSERT INTO instances (name, started, heartbeat) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING"
_FIELDS = "SELECT requestid, fields FROM result_fields WHERE requestid = ANY(%s)"
_DROP_LOCKS = "DELETE FROM machine_locks WHERE instance = %s RETURNING machine"
_NOTIFY_ALL = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"
_STALE = """
    SELECT name, heartbeat FROM instances WHERE heartbeat < %s AND name <> %s
    ORDER BY name LIMIT 1 FOR UPDATE SKIP LOCKED
"""
# Names that left unfinished results or machine locks but have no row: an
# instance failed over (or stopped) while it still wrote.
_ORPHANS = f"""
    SELECT instance FROM results WHERE state IN ({PENDING}, {RUNNING}) AND instance <> %s
        AND NOT EXISTS (SELECT 1 FROM instances WHERE name = results.instance)
    UNION
    SELECT instance FROM machine_locks WHERE instance <> %s
        AND NOT EXISTS (SELECT 1 FROM instances WHERE name = machine_locks.instance)
    LIMIT {MAX_FAILOVERS_PER_PASS}
"""  # noqa: S608  # interpolates module constants, never input
# Serialises, per name, an instance's start with the failover of what that name left.
_NAME_LOCK = "SELECT pg_advisory_xact_lock(hashtext('slaveapi-instance:' || %s))"


class InstanceNameInUse(Exception):
    """Another live instance runs under this instance's name; the message says so in one line."""


@dataclass
class _FailedOver:
    """What failing over one instance did."""

    instance: str
    silent_for: float
    interrupted: int = 0
    taken_over: list[tuple[int, tuple[Any, ...], str | None]] = field(default_factory=list)


class Membership:
    """
    This instance's heartbeat, and the failover of instances that stopped
    heartbeating (see the module docstring).

    @ivar check_interval: seconds between two passes (heartbeat, then
        failover of the dead).
    """

    _log = Logger()

    def __init__(
        self,
        database: Database,
        instance: str,
        reactor: Any,
        lease: float,
        adopt: Callable[[ActionResult, dict[str, str]], None],
        fenced: Callable[[str], None],
    ) -> None:
        self.instance = instance
        self.lease = lease
        self.check_interval = min(lease / 3, 5.0)
        self._database = database
        self._reactor = reactor
        self._adopt = adopt
        self._fenced = fenced
        self._started: float | None = None
        self._stopped = False
        self._is_fenced = False
        self._next: Any = None
        self._pass: asyncio.Task[None] | None = None
        # When this instance last recorded its heartbeat (the reactor's clock), and
        # the timer that fences it when no later one is recorded in time.
        self._last_beat = 0.0
        self._watchdog: Any = None

    def start(self) -> Deferred[None]:
        """
        Join: fail over a stale row of this instance's name (an earlier run
        that crashed), add this instance's row, and start heartbeating.

        @return: fires once joined; fails with L{InstanceNameInUse} if an
            instance of this name heartbeated within the lease, or with
            L{DatabaseUnavailable}.
        """
        return as_deferred(self._start())

    def stop(self) -> Deferred[None]:
        """
        Leave, after the processor stopped: stop heartbeating, release this
        instance's machine locks, and record any result it left running as
        interrupted (a graceful stop of the processor has done so already).
        Its queued (PENDING) results stay queued: its row is then kept with
        a heartbeat of 0, so that the next instance to check fails it over
        at once and takes them over (or this instance, when it starts
        again); with nothing queued its row is deleted.
        """
        return as_deferred(self._stop())

    def check(self) -> Deferred[None]:
        """One pass now: heartbeat, then fail over the dead. Never fails (it logs)."""
        return as_deferred(self._check())

    async def _start(self) -> None:
        now = self._reactor.seconds()

        async def join(connection: AsyncConnection[Any]) -> _FailedOver | None:
            async with connection.transaction():
                await connection.execute(_NAME_LOCK, (self.instance,))
                cursor = await connection.execute(
                    "SELECT heartbeat FROM instances WHERE name = %s FOR UPDATE", (self.instance,)
                )
                row = await cursor.fetchone()
                if row is not None and row[0] > now - self.lease:
                    raise self._in_use(now - row[0])
                # What an earlier run under this name left (queued, running, locks), row or not.
                failed: _FailedOver | None = await self._fail_over(
                    connection, self.instance, row[0] if row is not None else now, now
                )
                if failed is not None and not (failed.interrupted or failed.taken_over or row is not None):
                    failed = None
                cursor = await connection.execute(_JOIN, (self.instance, now, now))
                if cursor.rowcount != 1:
                    raise self._in_use(0.0)
                return failed

        failed = await self._database.execute(join)
        self._started = now
        self._beaten(now)
        if failed is not None:
            self._failed_over(failed)
        self._schedule()

    def _in_use(self, ago: float) -> InstanceNameInUse:
        return InstanceNameInUse(
            f"instance {self.instance} heartbeated {max(0.0, ago):.0f}s ago: another instance runs under this name;"
            f" give each instance its own [store] instance, or wait {self.lease:g}s after one stopped"
        )

    def _schedule(self) -> None:
        if not self._stopped and not self._is_fenced:
            self._next = self._reactor.callLater(self.check_interval, self._tick)

    def _tick(self) -> None:
        self._next = None
        self._pass = asyncio.ensure_future(self._scheduled_check())

    async def _scheduled_check(self) -> None:
        try:
            await self._check()
        finally:
            self._pass = None
            self._schedule()

    async def _check(self) -> None:
        if self._started is None or self._is_fenced:
            return
        try:
            if not await self._heartbeat():
                return
        except DatabaseUnavailable as error:
            self._log.warn("Cannot heartbeat instance {instance} ({reason})", instance=self.instance, reason=str(error))
        except Exception:
            self._log.failure("Heartbeating instance {instance} failed", instance=self.instance)
        try:
            await self._fail_over_dead()
        except DatabaseUnavailable as error:
            self._log.warn("Cannot fail over stopped instances ({reason})", reason=str(error))
        except Exception:
            self._log.failure("Failing over stopped instances failed")

    async def _heartbeat(self) -> bool:
        """Record that this instance is alive: whether it still is a member (was not failed over)."""

        async def beat(connection: AsyncConnection[Any]) -> int:
            cursor = await connection.execute(
                "UPDATE instances SET heartbeat = %s WHERE name = %s AND started = %s",
                (self._reactor.seconds(), self.instance, self._started),
            )
            return cursor.rowcount

        beat_at = self._reactor.seconds()
        if await self._database.execute(beat) > 0:
            self._beaten(beat_at)
            return True
        self._fence(
            f"instance {self.instance} was failed over by another instance"
            f" (no heartbeat recorded within the lease of {self.lease:g}s)"
        )
        return False

    def _beaten(self, at: float) -> None:
        """
        A heartbeat was recorded at C{at}: the watchdog moves to a check
        interval before the lease runs out from there. It is a timer of its
        own, not part of a pass, since a pass can hang (a dropped link
        leaves a statement unanswered until TCP gives up): the others fail
        this instance over once its heartbeat is a lease old, and it stops
        acting on machines first.
        """
        self._last_beat = at
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        due = at + self.lease - self.check_interval - self._reactor.seconds()
        self._watchdog = self._reactor.callLater(max(0.0, due), self._silent_too_long)

    def _silent_too_long(self) -> None:
        self._watchdog = None
        if self._stopped:
            return
        silent = self._reactor.seconds() - self._last_beat
        self._fence(
            f"instance {self.instance} could not record its heartbeat for {silent:.0f}s"
            f" (lease {self.lease:g}s): stopping before another instance takes over its actions"
        )

    def _fence(self, reason: str) -> None:
        """This instance must act no more: tell the service, once."""
        if self._is_fenced:
            return
        self._is_fenced = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        self._log.error("{reason}", reason=reason)
        try:
            self._fenced(reason)
        except Exception:
            self._log.failure("Handling the failover of this instance failed")

    async def _fail_over_dead(self) -> None:
        for _ in range(MAX_FAILOVERS_PER_PASS):
            if self._reactor.seconds() - self._last_beat > self.check_interval:
                return  # the next heartbeat comes first
            failed = await self._database.execute(partial(self._fail_over_one, now=self._reactor.seconds()))
            if failed is None:
                break
            self._failed_over(failed)
        if self._reactor.seconds() - self._last_beat > self.check_interval:
            return
        orphans = await self._database.execute(self._orphans)
        for name in orphans:
            failed = await self._database.execute(partial(self._fail_over_orphan, name, now=self._reactor.seconds()))
            if failed is not None:
                self._failed_over(failed)

    async def _orphans(self, connection: AsyncConnection[Any]) -> list[str]:
        cursor = await connection.execute(_ORPHANS, (self.instance, self.instance))
        return [row[0] for row in await cursor.fetchall()]

    async def _fail_over_orphan(self, name: str, connection: AsyncConnection[Any], now: float) -> _FailedOver | None:
        """Fail over what C{name} left, unless it has started again meanwhile."""
        async with connection.transaction():
            await connection.execute(_NAME_LOCK, (name,))
            cursor = await connection.execute("SELECT 1 FROM instances WHERE name = %s", (name,))
            if await cursor.fetchone() is not None:
                return None
            return await self._fail_over(connection, name, now, now)

    async def _fail_over_one(self, connection: AsyncConnection[Any], now: float) -> _FailedOver | None:
        """Fail over one instance that stopped heartbeating, if any (and no other survivor is at it)."""
        async with connection.transaction():
            cursor = await connection.execute(_STALE, (now - self.lease, self.instance))
            row = await cursor.fetchone()
            if row is None:
                return None
            return await self._fail_over(connection, row[0], row[1], now)

    async def _fail_over(
        self, connection: AsyncConnection[Any], dead: str, heartbeat: float, now: float
    ) -> _FailedOver:
        """In the caller's transaction, with C{dead}'s row locked: fail it over to this instance."""
        failed = _FailedOver(dead, now - heartbeat)
        # Queued ones first: one that starts meanwhile is running by the time
        # the next statement looks, and is marked interrupted there.
        cursor = await connection.execute(_TAKE_OVER, (self.instance, dead, PENDING))
        rows = await cursor.fetchall()
        fields: dict[int, str] = {}
        if rows:
            cursor = await connection.execute(_FIELDS, ([row[0] for row in rows],))
            fields = {requestid: raw for requestid, raw in await cursor.fetchall()}
        failed.taken_over = [(row[0], tuple(row), fields.get(row[0])) for row in rows]
        await self._notify(connection, RESULTS_CHANNEL, [f"{row[0]} {PENDING} {self.instance}" for row in rows])
        failed.interrupted = await self._interrupt(connection, dead, (RUNNING,), now)
        await self._release_locks(connection, dead)
        await connection.execute("DELETE FROM instances WHERE name = %s", (dead,))
        return failed

    async def _interrupt(
        self, connection: AsyncConnection[Any], instance: str, states: tuple[int, ...], now: float
    ) -> int:
        """Record C{instance}'s results in C{states} as interrupted by its loss; how many there were."""
        cursor = await connection.execute(_UNFINISHED, (instance, list(states)))
        rows = await cursor.fetchall()
        if not rows:
            return 0
        ids = [row[0] for row in rows]
        texts = [json.dumps(interrupted_by_loss_text(instance, _progress(row[1], row[2]))) for row in rows]
        await connection.execute(_INTERRUPT, (FAILURE, int(now), ids, texts))
        # Announced in the stopped instance's name: every instance, this one too, hears it finish.
        await self._notify(connection, RESULTS_CHANNEL, [f"{requestid} {FAILURE} {instance}" for requestid in ids])
        return len(rows)

    async def _release_locks(self, connection: AsyncConnection[Any], instance: str) -> None:
        cursor = await connection.execute(_DROP_LOCKS, (instance,))
        await self._notify(connection, LOCKS_CHANNEL, [row[0] for row in await cursor.fetchall()])

    async def _notify(self, connection: AsyncConnection[Any], channel: str, payloads: list[str]) -> None:
        if payloads:
            await connection.execute(_NOTIFY_ALL, (channel, payloads))

    def _failed_over(self, failed: _FailedOver) -> None:
        """After the failover's commit: log it and hand the queued results to the processor."""
        self._log.warn(
            "instance {dead} stopped heartbeating {silent:.0f}s ago: marked {interrupted} running actions"
            " interrupted, took over {taken} queued ones",
            dead=failed.instance,
            silent=failed.silent_for,
            interrupted=failed.interrupted,
            taken=len(failed.taken_over),
            instance=self.instance,
        )
        for requestid, row, raw_fields in failed.taken_over:
            try:
                result = _from_row(row)
                fields = _fields(raw_fields)
                self._adopt(result, fields)
            except Exception:
                self._log.failure(
                    "Running request {requestid}, taken over from instance {dead}, failed",
                    requestid=requestid,
                    dead=failed.instance,
                )

    async def _stop(self) -> None:
        self._stopped = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._pass is not None:
            await asyncio.wait([self._pass])
        if self._started is None or self._is_fenced:
            return
        now = self._reactor.seconds()

        async def leave(connection: AsyncConnection[Any]) -> tuple[int, int]:
            async with connection.transaction():
                left = await self._interrupt(connection, self.instance, (RUNNING,), now)
                await self._release_locks(connection, self.instance)
                cursor = await connection.execute(
                    "SELECT count(*) FROM results WHERE instance = %s AND state = %s", (self.instance, PENDING)
                )
                row = await cursor.fetchone()
                queued = int(row[0]) if row else 0
                if queued:
                    # A row that has not heartbeated since the epoch: the next
                    # instance to check fails it over at once, taking over its queue.
                    await connection.execute(
                        "UPDATE instances SET heartbeat = 0 WHERE name = %s AND started = %s",
                        (self.instance, self._started),
                    )
                else:
                    await connection.execute(
                        "DELETE FROM instances WHERE name = %s AND started = %s", (self.instance, self._started)
                    )
                return left, queued

        left, queued = await self._database.execute(leave)
        self._started = None
        if left:
            self._log.warn(
                "Recorded {left} results of instance {instance} left running at its stop as interrupted",
                left=left,
                instance=self.instance,
            )
        if queued:
            self._log.info(
                "Left {queued} queued requests of instance {instance} to the other instances",
                queued=queued,
                instance=self.instance,
            )


def _progress(state: int, text: str) -> str:
    """The progress a result's stored text shows: its text when it is a string (never for a queued one)."""
    if state != RUNNING:
        return ""
    try:
        progress = json.loads(text)
    except ValueError:
        return ""
    return progress if isinstance(progress, str) else ""


def _fields(raw: str | None) -> dict[str, str]:
    if raw is None:
        return {}
    decoded = json.loads(raw)
    if not isinstance(decoded, dict):
        raise ValueError(f"the kept form fields are not an object: {raw!r}")
    return {str(name): str(value) for name, value in decoded.items()}
