"""
The cluster agreements (L{slaveapi.coordination.ICluster}) kept in PostgreSQL.

A machine's lock is a row of C{machine_locks}, keyed by the machine's
canonical identity in lower case: whoever inserts it holds it, until the
row is deleted by L{PostgreSQLCluster.unlock} or by the failover of an
instance that stopped heartbeating (L{slaveapi.postgres.Membership}). A
request waiting for a lock tries again when a C{slaveapi_locks}
notification names its machine, and every C{lock_poll} seconds in any case,
since a notification sent while the listening connection was being opened
again is lost.

One listening connection serves the instance: lock releases
(C{slaveapi_locks}) and result writes (C{slaveapi_results}, passed to
L{PostgreSQLCluster.follow}'s subscribers when another instance wrote
them). Waits are timed by the reactor's clock, so that tests drive them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.coordination import Created, ICluster, ResultChange
from slaveapi.postgres._database import Database, DatabaseUnavailable, as_deferred
from slaveapi.store import ResultTakenOver

if TYPE_CHECKING:
    from slaveapi.postgres._results import PostgreSQLResultStore

#: The channel result writes are announced on: "<requestid> <state> <instance>".
RESULTS_CHANNEL = "slaveapi_results"
#: The channel a released machine lock is announced on: the machine's key.
LOCKS_CHANNEL = "slaveapi_locks"

#: Seconds L{PostgreSQLCluster.start} waits for the listening connection.
LISTEN_TIMEOUT = 10.0
#: Attempts L{PostgreSQLCluster.unlock} makes before it gives up.
UNLOCK_ATTEMPTS = 5

# Taken only for a request that is still this instance's and unfinished: an
# instance that was failed over (its requests taken from it) can take no lock.
# FOR SHARE waits for a failover changing the request and checks what it
# committed; a failover that comes after waits for this lock's commit and sees it.
_TAKE = """
    INSERT INTO machine_locks (machine, requestid, instance, taken)
    SELECT %s, %s, %s, %s
    WHERE EXISTS (SELECT 1 FROM results WHERE requestid = %s AND instance = %s AND state IN (0, 1) FOR SHARE)
    ON CONFLICT (machine) DO NOTHING
"""
_HOLDER = "SELECT requestid, instance FROM machine_locks WHERE machine = %s"
_STILL_OURS = "SELECT 1 FROM results WHERE requestid = %s AND instance = %s AND state IN (0, 1)"


def parse_result_change(payload: str) -> ResultChange:
    """
    A C{slaveapi_results} notification's payload as a L{ResultChange}.

    @raise ValueError: if it is not C{"<requestid> <state> <instance>"}.
    """
    parts = payload.split(" ", 2)
    if len(parts) != 3 or not parts[2]:
        raise ValueError(f"expected '<requestid> <state> <instance>', got {payload!r}")
    return ResultChange(requestid=int(parts[0]), state=int(parts[1]), instance=parts[2])


@implementer(ICluster)
class PostgreSQLCluster:
    """
    L{ICluster} for instances sharing one PostgreSQL database.

    Call L{start} once the database is open; the database's C{close} stops
    the listener.

    @ivar instance: this instance's name.
    """

    _log = Logger()

    def __init__(
        self, database: Database, store: PostgreSQLResultStore, instance: str, reactor: Any, lock_poll: float = 5.0
    ) -> None:
        self.instance = instance
        self._database = database
        self._store = store
        self._reactor = reactor
        self._lock_poll = lock_poll
        self._waiters: dict[str, set[Deferred[None]]] = {}
        self._followers: list[Callable[[ResultChange], None]] = []

    def start(self) -> Deferred[None]:
        """
        Listen for the other instances' lock releases and result writes.

        @return: fires once listening; fails with L{DatabaseUnavailable} if
            the listening connection is not listening within
            L{LISTEN_TIMEOUT} seconds.
        """
        return as_deferred(self._start())

    async def _start(self) -> None:
        listener = self._database.listen([RESULTS_CHANNEL, LOCKS_CHANNEL], self._notified, self._reconnected)
        try:
            await asyncio.wait_for(listener.listening.wait(), LISTEN_TIMEOUT)
        except TimeoutError:
            raise DatabaseUnavailable(
                f"could not listen for the other instances' notifications within {LISTEN_TIMEOUT:g}s"
            ) from None

    def create(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str], single_flight: bool
    ) -> Deferred[Created]:
        return self._store.create_or_join(slave, action, client, fields, single_flight)

    def lock(self, machine: str, requestid: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._lock(machine.lower(), requestid))

    def unlock(self, machine: str, requestid: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._unlock(machine.lower(), requestid))

    def follow(self, changed: Callable[[ResultChange], None]) -> None:
        self._followers.append(changed)

    async def _lock(self, key: str, requestid: int) -> None:
        warned = False
        while True:
            # Waiting starts before the attempt, so that a release announced
            # between a failed attempt and the wait is not missed.
            woken: Deferred[None] = Deferred()
            self._waiters.setdefault(key, set()).add(woken)
            timer = self._reactor.callLater(self._lock_poll, _fire, woken)
            try:
                try:
                    if await self._take(key, requestid):
                        return
                except DatabaseUnavailable as error:
                    if not warned:
                        warned = True
                        self._log.warn(
                            "Cannot take {machine}'s cluster lock for request {requestid} ({reason});"
                            " trying again every {poll:g}s",
                            machine=key,
                            requestid=requestid,
                            reason=str(error),
                            poll=self._lock_poll,
                        )
                await woken
            finally:
                if timer.active():
                    timer.cancel()
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(woken)
                    if not waiting:
                        del self._waiters[key]

    async def _take(self, key: str, requestid: int) -> bool:
        """Try once to take C{key}'s lock for C{requestid}: whether it holds it now."""

        async def take(connection: AsyncConnection[Any]) -> bool:
            now = self._reactor.seconds()
            cursor = await connection.execute(_TAKE, (key, requestid, self.instance, now, requestid, self.instance))
            if cursor.rowcount == 1:
                return True
            cursor = await connection.execute(_HOLDER, (key,))
            row = await cursor.fetchone()
            if row is not None and (row[0], row[1]) == (requestid, self.instance):
                return True
            cursor = await connection.execute(_STILL_OURS, (requestid, self.instance))
            if await cursor.fetchone() is None:
                raise ResultTakenOver(
                    f"request {requestid} is no longer this instance's: another instance finished or took it over"
                )
            return False

        # The statement is let finish even when the lock is given up meanwhile:
        # whether it took the lock is then known, and a lock taken is released.
        attempt = asyncio.ensure_future(self._database.execute(take))
        try:
            return await Deferred.fromFuture(asyncio.shield(attempt))
        except (CancelledError, asyncio.CancelledError):
            attempt.add_done_callback(lambda done: self._release_abandoned(done, key, requestid))
            raise CancelledError() from None

    def _release_abandoned(self, attempt: asyncio.Future[bool], key: str, requestid: int) -> None:
        if attempt.cancelled() or attempt.exception() is not None or not attempt.result():
            return
        Deferred.fromCoroutine(self._unlock(key, requestid))

    async def _unlock(self, key: str, requestid: int) -> None:
        async def release(connection: AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute(
                    "DELETE FROM machine_locks WHERE machine = %s AND requestid = %s AND instance = %s",
                    (key, requestid, self.instance),
                )
                await connection.execute("SELECT pg_notify(%s, %s)", (LOCKS_CHANNEL, key))

        for attempt in range(1, UNLOCK_ATTEMPTS + 1):
            try:
                await self._database.run(release)
            except DatabaseUnavailable as error:
                if attempt == UNLOCK_ATTEMPTS:
                    self._log.error(
                        "Cannot release {machine}'s cluster lock for request {requestid} ({reason}),"
                        " after {attempts} attempts; it stays taken until this instance starts again"
                        " or another fails it over",
                        machine=key,
                        requestid=requestid,
                        reason=str(error),
                        attempts=UNLOCK_ATTEMPTS,
                    )
                    return
                await deferLater(self._reactor, self._lock_poll, lambda: None)
            else:
                # Waiters here need not wait for the notification to come round.
                self._wake(key)
                return

    def _wake(self, key: str) -> None:
        for woken in list(self._waiters.get(key, ())):
            _fire(woken)

    def _notified(self, channel: str, payload: str) -> None:
        if channel == LOCKS_CHANNEL:
            self._wake(payload)
        elif channel == RESULTS_CHANNEL:
            try:
                change = parse_result_change(payload)
            except ValueError as error:
                self._log.warn("Ignoring a malformed result notification: {reason}", reason=str(error))
                return
            if change.instance == self.instance:
                return
            for changed in list(self._followers):
                try:
                    changed(change)
                except Exception:
                    self._log.failure(
                        "A subscriber to other instances' result changes failed on request {requestid}",
                        requestid=change.requestid,
                    )

    def _reconnected(self) -> None:
        # Releases announced while the connection was down are lost: every waiter tries again.
        for key in list(self._waiters):
            self._wake(key)


def _fire(woken: Deferred[None]) -> None:
    if not woken.called:
        woken.callback(None)
