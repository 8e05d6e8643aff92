"""
Instances coordinating through one real PostgreSQL database: machine locks
(exclusive across instances, woken by notifications and by polling),
following the other instances' result writes, heartbeats and failover.

Each instance's reactor is a L{Clock} the test advances; the database I/O
itself runs on the real event loop, so the tests await it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import pytest_twisted
from psycopg import AsyncConnection
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from slaveapi.coordination import ResultChange, interrupted_by_loss_text
from slaveapi.postgres import (
    Database,
    DatabaseSettings,
    DatabaseUnavailable,
    InstanceNameInUse,
    Membership,
    PostgreSQLCluster,
    PostgreSQLResultStore,
)
from slaveapi.postgres._database import as_deferred
from slaveapi.postgres._schema import migrate
from slaveapi.results import FAILURE, PENDING, RUNNING, ActionResult
from slaveapi.store import ResultTakenOver

T = TypeVar("T")

#: The reactor time the tests start at.
NOW = 1_700_000_000.0
LEASE = 30.0


class _WatchedDatabase(Database):
    """
    A database that tells the test when it has completed a number of
    works, refuses the next C{failing} ones, and holds every work while
    C{hung} is clear (a link dropped without a word).
    """

    def __init__(self, settings: DatabaseSettings) -> None:
        super().__init__(settings)
        self.completed = 0
        self.failing = 0
        self.hung = asyncio.Event()
        self.hung.set()
        self._watchers: list[tuple[int, Deferred[None]]] = []

    async def execute(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        try:
            await self.hung.wait()
            if self.failing > 0:
                self.failing -= 1
                raise DatabaseUnavailable("the database is down (test)")
            return await super().execute(work)
        finally:
            self.completed += 1
            for watcher in [watcher for watcher in self._watchers if watcher[0] <= self.completed]:
                self._watchers.remove(watcher)
                asyncio.get_running_loop().call_soon(watcher[1].callback, None)

    def after(self, more: int = 1) -> Deferred[None]:
        """Fires once C{more} further works have completed (from now)."""
        watcher: Deferred[None] = Deferred()
        self._watchers.append((self.completed + more, watcher))
        return watcher


class _WatchedClock(Clock):
    """A clock that tells the test when something (or a call of a given name) is next scheduled on it."""

    def __init__(self) -> None:
        super().__init__()
        self._watchers: list[tuple[str | None, Deferred[None]]] = []

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall:
        call = super().callLater(delay, callable, *args, **kw)
        name = getattr(callable, "__name__", None)
        for watcher in [watcher for watcher in self._watchers if watcher[0] in (None, name)]:
            self._watchers.remove(watcher)
            asyncio.get_running_loop().call_soon(watcher[1].callback, None)
        return call

    def scheduled(self, name: str | None = None) -> Deferred[None]:
        """Fires (soon) after the next call (of the callable named C{name}, if given) is scheduled."""
        watcher: Deferred[None] = Deferred()
        self._watchers.append((name, watcher))
        return watcher


class _Node:
    """One instance: its database, store, cluster and clock."""

    def __init__(self, database: _WatchedDatabase, instance: str, clock: _WatchedClock, lock_poll: float) -> None:
        self.database = database
        self.instance = instance
        self.clock = clock
        self.store = PostgreSQLResultStore(database, instance, clock)
        self.cluster = PostgreSQLCluster(database, self.store, instance, clock, lock_poll=lock_poll)


class _Calls:
    """What a membership told the processor: the results it adopted, and whether it was fenced."""

    def __init__(self) -> None:
        self.adopted: list[tuple[ActionResult, dict[str, str]]] = []
        self.fenced: list[str] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def adopt(self, result: ActionResult, fields: dict[str, str]) -> None:
        self.adopted.append((result, fields))
        self._tell()

    def fence(self, reason: str) -> None:
        self.fenced.append(reason)
        self._tell()

    def _tell(self) -> None:
        calls = len(self.adopted) + len(self.fenced)
        for waiting in [waiting for waiting in self._waiting if waiting[0] <= calls]:
            self._waiting.remove(waiting)
            waiting[1].callback(None)

    def after(self, more: int = 1) -> Deferred[None]:
        """Fires once C{more} further calls were made (from now)."""
        waiting: Deferred[None] = Deferred()
        self._waiting.append((len(self.adopted) + len(self.fenced) + more, waiting))
        return waiting


class _Harness:
    """Opens instances on one database and closes them all at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.databases: list[Database] = []
        self.memberships: list[Membership] = []

    async def database(self) -> _WatchedDatabase:
        database = _WatchedDatabase(DatabaseSettings(self.url, pool_size=4))
        await as_deferred(database.open())
        self.databases.append(database)
        await database.run(migrate)
        return database

    async def node(self, instance: str, lock_poll: float = 5.0) -> _Node:
        clock = _WatchedClock()
        clock.advance(NOW)
        node = _Node(await self.database(), instance, clock, lock_poll)
        await node.cluster.start()
        return node

    def membership(self, database: Database, instance: str, clock: Clock, calls: _Calls | None = None) -> Membership:
        calls = _Calls() if calls is None else calls
        membership = Membership(database, instance, clock, LEASE, adopt=calls.adopt, fenced=calls.fence)
        self.memberships.append(membership)
        return membership

    async def close(self) -> None:
        for membership in self.memberships:
            with contextlib.suppress(Exception):  # a test's own failure says more
                await membership.stop()
        for database in self.databases:
            await as_deferred(database.close())


@pytest_twisted.async_yield_fixture
async def harness(postgres_url: str) -> AsyncIterator[_Harness]:
    opened = _Harness(postgres_url)
    try:
        yield opened
    finally:
        await opened.close()


async def _rows(database: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async def query(connection: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cursor = await connection.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []

    return await database.run(query)


async def _insert_result(
    database: Database,
    requestid: int,
    instance: str,
    state: int,
    text: Any = "",
    slave: str = "slave1",
    action: str = "reboot",
    fields: dict[str, str] | None = None,
    flight: str | None = None,
) -> None:
    await _rows(
        database,
        "INSERT INTO results (requestid, slave, action, state, text, request_timestamp, start_timestamp,"
        " finish_timestamp, client, instance, flight) VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 'ops', %s, %s)",
        (
            requestid,
            slave,
            action,
            state,
            json.dumps(text),
            int(NOW) - 60,
            int(NOW) - 50 if state == RUNNING else 0,
            instance,
            flight,
        ),
    )
    if fields is not None:
        await _rows(
            database, "INSERT INTO result_fields (requestid, fields) VALUES (%s, %s)", (requestid, json.dumps(fields))
        )


async def _lock_rows(database: Database) -> list[tuple[Any, ...]]:
    return await _rows(database, "SELECT machine, requestid, instance FROM machine_locks ORDER BY machine")


async def _result(database: Database, requestid: int) -> tuple[Any, ...]:
    rows = await _rows(
        database,
        "SELECT state, text, finish_timestamp, instance, flight FROM results WHERE requestid = %s",
        (requestid,),
    )
    state, text, finish, instance, flight = rows[0]
    return state, json.loads(text), finish, instance, flight


def _signal() -> tuple[Deferred[None], Callable[..., None]]:
    """A Deferred and a callable that fires it (once)."""
    fired: Deferred[None] = Deferred()

    def fire(*_: object) -> None:
        if not fired.called:
            fired.callback(None)

    return fired, fire


# -- machine locks ----------------------------------------------------------------------------


async def _queued(database: Database, **requests: list[int]) -> None:
    """Queued results (a lock is taken only for its own instance's unfinished request): instance -> ids."""
    for instance, ids in requests.items():
        for requestid in ids:
            await _insert_result(database, requestid, instance, PENDING)


@pytest_twisted.ensureDeferred
async def test_lock_is_exclusive_and_a_release_wakes_a_waiter_on_another_instance(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    await _queued(a.database, a=[1], b=[2])
    await a.cluster.lock("Slave1", 1)
    # Taking it again for the same request (a retry) holds it still.
    await a.cluster.lock("slave1", 1)

    tried = b.database.after()
    waiting = b.cluster.lock("SLAVE1", 2)
    await tried
    await _rows(b.database, "SELECT 1")
    assert not waiting.called
    assert await _lock_rows(a.database) == [("slave1", 1, "a")]

    await a.cluster.unlock("slave1", 1)
    # The release's notification wakes b: no clock is advanced.
    await waiting
    assert await _lock_rows(a.database) == [("slave1", 2, "b")]
    assert b.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_waiter_polls_when_the_release_is_not_announced(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b", lock_poll=3.0)
    await _queued(a.database, a=[1], b=[2])
    await a.cluster.lock("slave1", 1)
    tried = b.database.after()
    waiting = b.cluster.lock("slave1", 2)
    await tried

    # Released without a notification (as one lost while reconnecting).
    await _rows(a.database, "DELETE FROM machine_locks")
    assert not waiting.called
    b.clock.advance(3.0)
    await waiting
    assert await _lock_rows(a.database) == [("slave1", 2, "b")]


@pytest_twisted.ensureDeferred
async def test_unlock_only_releases_the_holders_lock(harness: _Harness) -> None:
    a = await harness.node("a")
    await _queued(a.database, a=[1], b=[2])
    await a.cluster.lock("slave1", 1)
    await a.cluster.unlock("slave1", 7)
    assert await _lock_rows(a.database) == [("slave1", 1, "a")]
    await a.cluster.unlock("Slave1", 1)
    assert await _lock_rows(a.database) == []


@pytest_twisted.ensureDeferred
async def test_a_lock_attempt_the_database_refuses_is_tried_again_after_the_poll(harness: _Harness) -> None:
    a = await harness.node("a", lock_poll=2.0)
    await _queued(a.database, a=[1], b=[2])
    a.database.failing = 2
    with capturedLogs() as events:
        tried = a.database.after()
        taking = a.cluster.lock("slave1", 1)
        await tried
        tried = a.database.after()
        a.clock.advance(2.0)
        await tried
        assert not taking.called
        a.clock.advance(2.0)
        await taking
    assert await _lock_rows(a.database) == [("slave1", 1, "a")]
    warnings = [event for event in events if event["log_level"] == LogLevel.warn]
    assert [(event["machine"], event["requestid"]) for event in warnings] == [("slave1", 1)]


@pytest_twisted.ensureDeferred
async def test_an_unlock_the_database_refuses_is_retried_then_given_up(harness: _Harness) -> None:
    a = await harness.node("a", lock_poll=2.0)
    await _queued(a.database, a=[1], b=[2])
    await a.cluster.lock("slave1", 1)
    a.database.failing = 5
    with capturedLogs() as events:
        scheduled = a.clock.scheduled()
        releasing = a.cluster.unlock("slave1", 1)
        for _ in range(4):
            await scheduled
            scheduled = a.clock.scheduled()
            a.clock.advance(2.0)
        await releasing
    errors = [event for event in events if event["log_level"] == LogLevel.error]
    assert [(event["machine"], event["requestid"], event["attempts"]) for event in errors] == [("slave1", 1, 5)]
    assert await _lock_rows(a.database) == [("slave1", 1, "a")]

    # Retried within its attempts, it succeeds.
    a.database.failing = 1
    scheduled = a.clock.scheduled()
    releasing = a.cluster.unlock("slave1", 1)
    await scheduled
    a.clock.advance(2.0)
    await releasing
    assert await _lock_rows(a.database) == []


@pytest_twisted.ensureDeferred
async def test_cancelling_a_wait_gives_it_up(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    await _queued(a.database, a=[1], b=[2])
    await a.cluster.lock("slave1", 1)
    tried = b.database.after()
    waiting = b.cluster.lock("slave1", 2)
    await tried
    await _rows(b.database, "SELECT 1")  # b's attempt has failed by now: it is waiting

    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    assert b.clock.getDelayedCalls() == []

    await a.cluster.unlock("slave1", 1)
    b.clock.advance(60)
    assert await _lock_rows(a.database) == []


@pytest_twisted.ensureDeferred
async def test_cancelling_just_as_the_lock_is_taken_releases_it(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    await _queued(a.database, a=[1], b=[2])
    taken_and_released = a.database.after(2)
    taking = a.cluster.lock("slave1", 1)
    taking.cancel()
    with pytest.raises(CancelledError):
        await taking
    await taken_and_released
    assert await _lock_rows(a.database) == []
    # The machine is free for the next request.
    await b.cluster.lock("slave1", 2)
    assert await _lock_rows(a.database) == [("slave1", 2, "b")]


# -- following other instances' writes --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_follow_tells_of_the_other_instances_writes_only(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    seen_by_a: list[ResultChange] = []
    seen_by_b: list[ResultChange] = []
    a.cluster.follow(seen_by_a.append)
    b.cluster.follow(seen_by_b.append)
    a_told, tell_a = _signal()
    a.cluster.follow(tell_a)
    b_told, tell_b = _signal()
    b.cluster.follow(tell_b)

    # A malformed notification is skipped; the next one is passed on.
    await _rows(a.database, "SELECT pg_notify('slaveapi_results', 'garbage')")
    created = await b.cluster.create("slave1", "reboot", "ops", {"why": "stuck"}, single_flight=True)
    await a_told
    assert seen_by_a == [ResultChange(created.result.requestid, PENDING, "b")]

    # b's own write reached b's listener before a's, which b is told of.
    other = await a.cluster.create("slave2", "reboot", None, {}, single_flight=False)
    await b_told
    assert seen_by_b == [ResultChange(other.result.requestid, PENDING, "a")]


# -- membership --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_name_heartbeated_within_the_lease_is_refused(harness: _Harness) -> None:
    first = await harness.node("a")
    await harness.membership(first.database, "a", first.clock).start()

    second = await harness.node("b")
    second.clock.advance(12.4)
    with pytest.raises(InstanceNameInUse) as refused:
        await harness.membership(second.database, "a", second.clock).start()
    assert str(refused.value) == (
        "instance a heartbeated 12s ago: another instance runs under this name;"
        " give each instance its own [store] instance, or wait 30s after one stopped"
    )
    assert await _rows(first.database, "SELECT name, started FROM instances") == [("a", NOW)]


@pytest_twisted.ensureDeferred
async def test_a_stale_row_of_its_own_name_is_failed_over_at_start(harness: _Harness) -> None:
    node = await harness.node("a")
    db = node.database
    await _rows(db, "INSERT INTO instances (name, started, heartbeat) VALUES ('a', %s, %s)", (NOW - 500, NOW - 100))
    await _insert_result(db, 1, "a", RUNNING, "booting\n")
    await _insert_result(db, 2, "a", PENDING, fields={"force": "yes"}, flight="slave1 reboot")
    await _rows(db, "INSERT INTO machine_locks VALUES ('slave1', 1, 'a', %s)", (NOW - 90,))
    calls = _Calls()

    await harness.membership(db, "a", node.clock, calls).start()

    assert await _result(db, 1) == (FAILURE, interrupted_by_loss_text("a", "booting\n"), int(NOW), "a", None)
    assert [(result.requestid, result.state, fields) for result, fields in calls.adopted] == [
        (2, PENDING, {"force": "yes"})
    ]
    assert await _result(db, 2) == (PENDING, "", 0, "a", "slave1 reboot")
    assert await _lock_rows(db) == []
    assert await _rows(db, "SELECT name, started, heartbeat FROM instances") == [("a", NOW, NOW)]


@pytest_twisted.ensureDeferred
async def test_a_survivor_fails_over_an_instance_that_stopped_heartbeating(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    a_calls = _Calls()
    dead = harness.membership(a.database, "a", a.clock, a_calls)
    await dead.start()
    b_calls = _Calls()
    survivor = harness.membership(b.database, "b", b.clock, b_calls)
    await survivor.start()
    assert survivor.check_interval == 5.0

    await _insert_result(a.database, 1, "a", RUNNING, "step 1 done\nstep 2", flight="slave1 reboot")
    await _insert_result(a.database, 2, "a", RUNNING, {"uptime": 3}, slave="slave2", action="buildslave_uptime")
    await _insert_result(
        a.database, 3, "a", PENDING, slave="slave3", fields={"reason": "stuck"}, flight="slave3 reboot"
    )
    await _insert_result(a.database, 4, "b", RUNNING, "b's own")
    await a.cluster.lock("slave1", 1)
    # Another instance follows; the failover's announcements reach it.
    c = await harness.node("c")
    followed: list[tuple[int, int, str]] = []
    announced, announce = _signal()

    def follow(change: ResultChange) -> None:
        followed.append((change.requestid, change.state, change.instance))
        if len(followed) == 3:
            announce()

    c.cluster.follow(follow)
    # b waits for the dead instance's lock; the failover's release wakes it.
    tried = b.database.after()
    waiting = b.cluster.lock("slave1", 4)
    await tried

    # a's clock stands still (it heartbeats no more); b's moves on, a pass at a time
    # (heartbeat, a look for the dead, a look for leftovers), until a is a lease old.
    passes = int(LEASE // survivor.check_interval)
    for _ in range(passes):
        passed = b.clock.scheduled("_tick")  # the pass has ended and the next is scheduled
        b.clock.advance(survivor.check_interval)
        await passed
    assert b_calls.adopted == []
    adopted = b_calls.after()
    b.clock.advance(survivor.check_interval)
    await adopted

    assert [(result.requestid, result.slave, result.state, fields) for result, fields in b_calls.adopted] == [
        (3, "slave3", PENDING, {"reason": "stuck"})
    ]
    finish = int(NOW + (passes + 1) * survivor.check_interval)
    progress = "step 1 done\nstep 2"
    assert interrupted_by_loss_text("a", progress).endswith("progress so far:\n" + progress)
    assert await _result(a.database, 1) == (FAILURE, interrupted_by_loss_text("a", progress), finish, "a", None)
    assert await _result(a.database, 2) == (FAILURE, interrupted_by_loss_text("a", ""), finish, "a", None)
    assert await _result(a.database, 3) == (PENDING, "", 0, "b", "slave3 reboot")
    assert await _result(a.database, 4) == (RUNNING, "b's own", 0, "b", None)
    assert await _rows(a.database, "SELECT name FROM instances ORDER BY name") == [("b",)]
    await waiting
    assert await _lock_rows(a.database) == [("slave1", 4, "b")]
    await announced
    # The interruptions are announced in the stopped instance's name: b hears them too.
    assert sorted(followed) == [(1, FAILURE, "a"), (2, FAILURE, "a"), (3, PENDING, "b")]

    # The instance that was failed over learns it at its next heartbeat, once.
    fenced = a_calls.after()
    a.clock.advance(dead.check_interval)
    await fenced
    assert a_calls.fenced == [
        "instance a was failed over by another instance (no heartbeat recorded within the lease of 30s)"
    ]
    assert a.clock.getDelayedCalls() == []
    await dead.check()
    assert len(a_calls.fenced) == 1


@pytest_twisted.ensureDeferred
async def test_two_survivors_fail_over_a_dead_instance_once(harness: _Harness) -> None:
    b = await harness.node("b")
    c = await harness.node("c")
    db = b.database
    await _rows(db, "INSERT INTO instances (name, started, heartbeat) VALUES ('x', %s, %s)", (NOW - 500, NOW - 100))
    await _insert_result(db, 1, "x", RUNNING, "half way")
    for requestid in range(2, 8):
        await _insert_result(db, requestid, "x", PENDING, slave=f"slave{requestid}", fields={"n": str(requestid)})
    calls = _Calls()
    survivors = [
        harness.membership(b.database, "b", b.clock, calls),
        harness.membership(c.database, "c", c.clock, calls),
    ]
    for survivor in survivors:
        await survivor.start()

    await DeferredList([survivor.check() for survivor in survivors], fireOnOneErrback=True)

    assert sorted((result.requestid, fields["n"]) for result, fields in calls.adopted) == [
        (requestid, str(requestid)) for requestid in range(2, 8)
    ]
    owners = await _rows(db, "SELECT DISTINCT instance FROM results WHERE requestid >= 2")
    assert len(owners) == 1 and owners[0][0] in ("b", "c")
    assert await _result(db, 1) == (FAILURE, interrupted_by_loss_text("x", "half way"), int(NOW), "x", None)
    assert await _rows(db, "SELECT name FROM instances ORDER BY name") == [("b",), ("c",)]


@pytest_twisted.ensureDeferred
async def test_fenced_when_its_row_was_removed(harness: _Harness) -> None:
    node = await harness.node("a")
    calls = _Calls()
    membership = harness.membership(node.database, "a", node.clock, calls)
    await membership.start()
    await membership.check()
    assert calls.fenced == []
    await _rows(node.database, "DELETE FROM instances")
    await membership.check()
    await membership.check()
    assert calls.fenced == [
        "instance a was failed over by another instance (no heartbeat recorded within the lease of 30s)"
    ]


@pytest_twisted.ensureDeferred
async def test_heartbeats_keep_instances_alive_past_the_lease(harness: _Harness) -> None:
    nodes = [await harness.node("a"), await harness.node("b")]
    memberships = [harness.membership(node.database, node.instance, node.clock) for node in nodes]
    for membership in memberships:
        await membership.start()
    for _ in range(8):
        # Each pass (a heartbeat, a look for the dead and for what absent instances left) ends
        # by scheduling the next.
        passed = [node.clock.scheduled("_tick") for node in nodes]
        for node, membership in zip(nodes, memberships, strict=True):
            node.clock.advance(membership.check_interval)
        for each in passed:
            await each
    assert await _rows(nodes[0].database, "SELECT name, started, heartbeat FROM instances ORDER BY name") == [
        ("a", NOW, NOW + 40),
        ("b", NOW, NOW + 40),
    ]


@pytest_twisted.ensureDeferred
async def test_a_graceful_stop_interrupts_what_runs_and_leaves_its_queue_to_the_others(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    membership = harness.membership(a.database, "a", a.clock)
    await membership.start()
    await _insert_result(a.database, 1, "a", RUNNING, "almost", flight="slave1 reboot")
    await _insert_result(a.database, 2, "a", PENDING, slave="slave2", fields={"force": "yes"})
    await _insert_result(a.database, 3, "b", RUNNING, "b's")
    await a.cluster.lock("slave1", 1)
    tried = b.database.after()
    waiting = b.cluster.lock("slave1", 3)
    await tried

    a.clock.advance(1)
    await membership.stop()

    # Its row stays, as if it had never heartbeated: the next check of another instance takes its queue.
    assert await _rows(a.database, "SELECT name, heartbeat FROM instances") == [("a", 0.0)]
    finish = int(NOW + 1)
    assert await _result(a.database, 1) == (FAILURE, interrupted_by_loss_text("a", "almost"), finish, "a", None)
    assert await _result(a.database, 2) == (PENDING, "", 0, "a", None)
    assert await _result(a.database, 3) == (RUNNING, "b's", 0, "b", None)
    assert a.clock.getDelayedCalls() == []
    await waiting
    assert await _lock_rows(a.database) == [("slave1", 3, "b")]

    b_calls = _Calls()
    survivor = harness.membership(b.database, "b", b.clock, b_calls)
    adopted = b_calls.after()
    await survivor.start()
    await survivor.check()
    await adopted
    assert [(result.requestid, result.state, fields) for result, fields in b_calls.adopted] == [
        (2, PENDING, {"force": "yes"})
    ]
    assert await _result(a.database, 2) == (PENDING, "", 0, "b", None)
    assert await _rows(a.database, "SELECT name FROM instances") == [("b",)]


@pytest_twisted.ensureDeferred
async def test_a_graceful_stop_with_nothing_queued_deletes_its_row(harness: _Harness) -> None:
    a = await harness.node("a")
    membership = harness.membership(a.database, "a", a.clock)
    await membership.start()
    await membership.stop()
    assert await _rows(a.database, "SELECT name FROM instances") == []


# -- fencing and leftovers --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lock_is_refused_to_a_request_no_longer_this_instances(harness: _Harness) -> None:
    a = await harness.node("a")
    await _insert_result(a.database, 1, "b", PENDING)  # taken over by b
    await _insert_result(a.database, 2, "a", FAILURE, "interrupted")  # finished by a failover
    for requestid in (1, 2, 3):
        with pytest.raises(ResultTakenOver):
            await a.cluster.lock("slave1", requestid)
    assert await _lock_rows(a.database) == []


@pytest_twisted.ensureDeferred
async def test_the_same_request_id_locked_by_another_instance_is_not_this_instances_lock(harness: _Harness) -> None:
    a = await harness.node("a")
    b = await harness.node("b")
    await _queued(a.database, a=[1])
    await a.cluster.lock("slave1", 1)
    # b took the request over (a was failed over) while a held the lock: neither may use a's row as its own.
    await _rows(a.database, "UPDATE results SET instance = 'b' WHERE requestid = 1")
    waiting = b.cluster.lock("slave1", 1)
    await a.cluster.unlock("slave1", 1)
    await waiting
    assert await _lock_rows(a.database) == [("slave1", 1, "b")]
    # a's late unlock (its action's end) leaves b's lock alone.
    await a.cluster.unlock("slave1", 1)
    assert await _lock_rows(a.database) == [("slave1", 1, "b")]


@pytest_twisted.ensureDeferred
async def test_what_an_instance_without_a_row_left_is_failed_over(harness: _Harness) -> None:
    b = await harness.node("b")
    calls = _Calls()
    survivor = harness.membership(b.database, "b", b.clock, calls)
    await survivor.start()
    # x was failed over (its row is gone) but wrote on until it noticed.
    await _insert_result(b.database, 1, "x", RUNNING, "rebooting", flight="slave1 reboot")
    await _insert_result(b.database, 2, "x", PENDING, slave="slave2", fields={"force": "yes"}, flight="slave2 reboot")
    await _rows(b.database, "INSERT INTO machine_locks VALUES ('slave3', 9, 'x', %s)", (NOW,))
    adopted = calls.after()
    await survivor.check()
    await adopted
    assert [(result.requestid, fields) for result, fields in calls.adopted] == [(2, {"force": "yes"})]
    assert await _result(b.database, 1) == (
        FAILURE,
        interrupted_by_loss_text("x", "rebooting"),
        int(NOW),
        "x",
        None,
    )
    assert (await _result(b.database, 2))[3] == "b"
    assert await _lock_rows(b.database) == []


@pytest_twisted.ensureDeferred
async def test_an_instance_starting_again_clears_what_its_last_run_left_without_a_row(harness: _Harness) -> None:
    a = await harness.node("a")
    await _insert_result(a.database, 1, "a", RUNNING, "half")
    await _rows(a.database, "INSERT INTO machine_locks VALUES ('slave1', 1, 'a', %s)", (NOW,))
    calls = _Calls()
    await harness.membership(a.database, "a", a.clock, calls).start()
    assert (await _result(a.database, 1))[:2] == (FAILURE, interrupted_by_loss_text("a", "half"))
    assert await _lock_rows(a.database) == []
    assert calls.fenced == []


@pytest_twisted.ensureDeferred
async def test_an_instance_that_cannot_heartbeat_stops_itself_before_the_others_take_over(harness: _Harness) -> None:
    a = await harness.node("a")
    calls = _Calls()
    membership = harness.membership(a.database, "a", a.clock, calls)
    await membership.start()
    a.database.failing = 1000
    passes = int((LEASE - membership.check_interval) // membership.check_interval)
    for _ in range(passes - 1):
        scheduled = a.clock.scheduled()
        a.clock.advance(membership.check_interval)
        await scheduled
    assert calls.fenced == []
    fenced = calls.after()
    a.clock.advance(membership.check_interval)
    await fenced
    assert calls.fenced == [
        f"instance a could not record its heartbeat for {LEASE - membership.check_interval:.0f}s (lease {LEASE:g}s):"
        " stopping before another instance takes over its actions"
    ]
    a.database.failing = 0


@pytest_twisted.ensureDeferred
async def test_an_instance_whose_heartbeat_hangs_stops_itself_all_the_same(harness: _Harness) -> None:
    a = await harness.node("a")
    calls = _Calls()
    membership = harness.membership(a.database, "a", a.clock, calls)
    await membership.start()
    a.database.hung.clear()  # every statement from now on goes unanswered
    a.clock.advance(membership.check_interval)  # a pass starts, and hangs in its heartbeat
    assert calls.fenced == []
    fenced = calls.after()
    a.clock.advance(LEASE - 2 * membership.check_interval)
    await fenced
    assert calls.fenced == [
        f"instance a could not record its heartbeat for {LEASE - membership.check_interval:.0f}s (lease {LEASE:g}s):"
        " stopping before another instance takes over its actions"
    ]
    a.database.hung.set()
