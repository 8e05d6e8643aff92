"""
One PostgreSQL database, reached from Twisted through psycopg 3's asyncio API.

SlaveAPI runs on Twisted's asyncio reactor, so psycopg's asynchronous
connections run on the very event loop the reactor drives: a query is an
asyncio coroutine, and L{Database.run} hands it to the loop and gives back
a L{Deferred} (cancelling the Deferred cancels the query). Nothing blocks the
reactor and no thread is involved.

Connections come from a bounded pool (C{[store] pool_size}); a caller that
finds every connection busy waits at most C{acquire_timeout} seconds, and
every statement is bounded by the server's C{statement_timeout}, so that no
query runs unbounded. A connection the server dropped is replaced by the pool
(it checks each connection it hands out).

L{Database.listen} keeps one more connection, outside the pool, that
C{LISTEN}s on notification channels and passes each notification on. When
that connection is lost it is opened again after a delay (at most
C{max_delay} seconds apart), and the listener is told (C{reconnected}), since
notifications sent meanwhile are gone: it must read what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from twisted.internet.defer import Deferred
from twisted.logger import Logger

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """
    The database could not be reached or refused a statement; the message
    says why in one line (never with the password).
    """


def one_line(error: BaseException) -> str:
    """A psycopg error's message on one line, without its context lines."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def as_deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run C{coroutine} on the asyncio loop the reactor runs on; its outcome as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


@dataclass(frozen=True)
class DatabaseSettings:
    """
    How to reach the database and what a query may cost.

    @ivar url: a C{postgresql://} URL (libpq's form, TLS options such as
        C{sslmode} and C{sslrootcert} in its query string); the password is
        given apart, never in it.
    @ivar password: from the credentials file (C{postgresql_password}), or C{None}.
    @ivar pool_size: at most this many pooled connections.
    @ivar acquire_timeout: seconds a caller waits for a free connection.
    @ivar statement_timeout: seconds any one statement may run.
    @ivar connect_timeout: seconds to open a connection.
    """

    url: str
    password: str | None = None
    pool_size: int = 10
    acquire_timeout: float = 10.0
    statement_timeout: float = 10.0
    connect_timeout: float = 10.0

    def connection_kwargs(self) -> dict[str, Any]:
        """What psycopg's connect takes besides the URL."""
        options: dict[str, Any] = {
            "connect_timeout": max(1, round(self.connect_timeout)),
            "options": f"-c statement_timeout={int(self.statement_timeout * 1000)}",
            "application_name": "slaveapi",
            # A server that vanishes without closing the connection is noticed within about 25 s.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if self.password is not None:
            options["password"] = self.password
        return options


class Database:
    """
    A bounded pool of asyncio connections to one PostgreSQL database.

    Call L{open} (which waits until the pool has its first connection, or
    fails), then L{run}; L{close} at the end. Work asked for while the pool
    opens waits for it.
    """

    _log = Logger()

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self._pool: AsyncConnectionPool | None = None
        self._listeners: list[_Listener] = []
        # Set once an open has ended (either way): callers that came early wait for it.
        self._open_ended = asyncio.Event()
        self._closed = False

    async def open(self) -> None:
        """
        Open the pool and wait for its first connection.

        @raise DatabaseUnavailable: if the database cannot be reached within
            C{connect_timeout} seconds.
        """
        try:
            await self._open()
        finally:
            self._open_ended.set()

    async def _open(self) -> None:
        pool = AsyncConnectionPool(
            self.settings.url,
            min_size=1,
            max_size=self.settings.pool_size,
            kwargs={**self.settings.connection_kwargs(), "autocommit": True},
            timeout=self.settings.acquire_timeout,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="slaveapi",
        )
        try:
            await pool.open(wait=True, timeout=self.settings.connect_timeout)
        except (PoolTimeout, psycopg.Error) as error:
            await pool.close()
            raise DatabaseUnavailable(f"cannot connect to the database: {self._reason(error)}") from None
        self._pool = pool

    def _reason(self, error: BaseException) -> str:
        reason = one_line(error)
        if self.settings.password:
            reason = reason.replace(self.settings.password, "***")
        return reason

    async def close(self) -> None:
        """Stop every listener and close the pool."""
        self._closed = True
        for listener in self._listeners:
            await listener.stop()
        self._listeners.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(timeout=self.settings.acquire_timeout)

    async def execute(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """
        C{work(connection)} on a pooled connection in autocommit mode (open
        a transaction with C{connection.transaction()} where one is needed).

        @raise DatabaseUnavailable: if no connection frees up in time, the
            database cannot be reached, or it refuses a statement.
        """
        if self._pool is None and not self._closed and not self._open_ended.is_set():
            # Asked before the pool is open (the parts of the service start together): wait for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._open_ended.wait(), self.settings.connect_timeout + self.settings.acquire_timeout
                )
        if self._pool is None:
            raise DatabaseUnavailable("the database connection is closed")
        try:
            async with self._pool.connection() as connection:
                return await work(connection)
        except PoolTimeout:
            raise DatabaseUnavailable(
                f"no database connection free within {self.settings.acquire_timeout:g}s"
            ) from None
        except psycopg.Error as error:
            raise DatabaseUnavailable(self._reason(error)) from None

    def run(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> Deferred[T]:
        """L{execute} as a Deferred, for Twisted callers."""
        return as_deferred(self.execute(work))

    def listen(
        self,
        channels: Iterable[str],
        notified: Callable[[str, str], None],
        reconnected: Callable[[], None],
        max_delay: float = 5.0,
    ) -> _Listener:
        """
        Pass each notification on C{channels} to C{notified(channel, payload)},
        on a connection of its own, until L{close}. After the connection is
        lost and opened again, C{reconnected()} is called.

        @return: the listener; C{await listener.listening.wait()} waits until
            its channels are listened on.
        """
        if self._closed:
            raise DatabaseUnavailable("the database connection is closed")
        listener = _Listener(self, tuple(channels), notified, reconnected, max_delay)
        self._listeners.append(listener)
        listener.start()
        return listener


class _Listener:
    """One connection LISTENing on some channels, opened again when lost."""

    _log = Logger()

    def __init__(
        self,
        database: Database,
        channels: tuple[str, ...],
        notified: Callable[[str, str], None],
        reconnected: Callable[[], None],
        max_delay: float,
    ) -> None:
        self._database = database
        self._channels = channels
        self._notified = notified
        self._reconnected = reconnected
        self._max_delay = max_delay
        self._task: asyncio.Task[None] | None = None
        self._connection: AsyncConnection[Any] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: its end is not news
                await self._task
            self._task = None

    async def _loop(self) -> None:
        delay = 0.5
        first = True
        while True:
            try:
                await self._listen_once(first)
                first = False
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.listening.clear()
                self._log.warn(
                    "database: listening for notifications failed ({reason}); again in {delay:g}s",
                    reason=self._database._reason(error),
                    delay=delay,
                )
                first = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _listen_once(self, first: bool) -> None:
        settings = self._database.settings
        connection = await AsyncConnection.connect(settings.url, autocommit=True, **settings.connection_kwargs())
        try:
            for channel in self._channels:
                await connection.execute(f'LISTEN "{channel}"')
            self.listening.set()
            if not first:
                self._reconnected()
            async for notification in connection.notifies():
                try:
                    self._notified(notification.channel, notification.payload)
                except Exception:
                    self._log.failure("database: a notification's handler failed")
        finally:
            self.listening.clear()
            await connection.close()
