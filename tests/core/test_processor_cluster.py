"""
The processor among several instances (L{slaveapi.coordination.ICluster}):
joining another instance's request, holding a machine's lock across the
cluster, waking on another instance's writes, taking over queued requests,
and leaving its own queued ones to others when it stops.

The cluster is a fake that records what it is asked; the store is the real
SQLite one (another instance's writes are made to it directly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from slaveapi.actions import Action, ActionRun, FormField
from slaveapi.coordination import Created, ICluster, ResultChange
from slaveapi.events import FINISHED, ResultEvent, ResultEvents
from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS, ActionResult
from slaveapi.store import INTERRUPTED_TEXT, SQLiteResultStore
from tests.recorded_now import recorded_now


@implementer(ICluster)
class _FakeCluster:
    """Creates through the store; locks at once (or when the test says); records calls."""

    instance = "a"

    def __init__(self, store: SQLiteResultStore) -> None:
        self._store = store
        self.join: ActionResult | None = None
        self.locks: list[tuple[str, int]] = []
        self.unlocks: list[tuple[str, int]] = []
        self.gate: Deferred[None] | None = None
        self.followers: list[Callable[[ResultChange], None]] = []

    def create(
        self, slave: str, action: str, client: str | None, fields: Mapping[str, str], single_flight: bool
    ) -> Deferred[Created]:
        if self.join is not None and single_flight:
            return succeed(Created(self.join, joined=True))
        return self._store.create(slave, action, client, fields).addCallback(lambda result: Created(result, False))

    def lock(self, machine: str, requestid: int) -> Deferred[None]:
        self.locks.append((machine, requestid))
        return self.gate if self.gate is not None else succeed(None)

    def unlock(self, machine: str, requestid: int) -> Deferred[None]:
        self.unlocks.append((machine, requestid))
        return succeed(None)

    def follow(self, changed: Callable[[ResultChange], None]) -> None:
        self.followers.append(changed)


class _Gated:
    """An action body that waits for its gate; C{runs} records its arguments."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.gate: Deferred[str] = Deferred()

    async def __call__(self, run: ActionRun, **arguments: Any) -> str:
        self.runs.append(arguments)
        return await self.gate


def _processor(store: SQLiteResultStore, cluster: _FakeCluster, context_box: Any, clock: Clock, **kw: Any) -> Any:
    return ActionProcessor(store, lambda: context_box.context, kw.pop("concurrency", 2), clock, cluster=cluster, **kw)


async def _within(d: Deferred[Any], seconds: float = 5.0) -> Any:
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


async def _turns(n: int = 5) -> None:
    """Let the real reactor (the store's writer thread's answers) go round C{n} times."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(n):
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_request_joined_to_another_instances_runs_nothing_here(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    cluster = _FakeCluster(store)
    theirs = await store.create("bld-1", "reboot", "someone")
    cluster.join = theirs
    processor = _processor(store, cluster, context_box, clock)
    body = _Gated()
    result = await processor.submit("bld-1", Action("reboot", body, exclusive=True, single_flight=True))
    assert result.requestid == theirs.requestid
    await _turns()
    assert body.runs == []
    assert processor.queued() == {"read-only": 0, "changing": 0}
    assert cluster.locks == []


@pytest_twisted.ensureDeferred
async def test_an_exclusive_action_runs_only_once_it_holds_the_cluster_lock_and_gives_it_back(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    cluster = _FakeCluster(store)
    cluster.gate = Deferred()
    processor = _processor(store, cluster, context_box, clock)
    body = _Gated()
    result = await processor.submit("BLD-1", Action("reboot", body, exclusive=True))
    await _turns()
    assert cluster.locks == [("bld-1", result.requestid)]
    assert body.runs == []
    assert recorded_now(processor, result).state == PENDING
    cluster.gate.callback(None)
    await _turns()
    assert body.runs == [{}]
    assert cluster.unlocks == []
    body.gate.callback("done")
    await _within(processor.wait(result, 3600))
    assert recorded_now(processor, result).state == SUCCESS
    assert cluster.unlocks == [("bld-1", result.requestid)]


@pytest_twisted.ensureDeferred
async def test_a_read_only_action_takes_no_cluster_lock(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    cluster = _FakeCluster(store)
    processor = _processor(store, cluster, context_box, clock)
    body = _Gated()
    result = await processor.submit("bld-1", Action("uptime", body))
    body.gate.callback("up")
    await _within(processor.wait(result, 3600))
    assert cluster.locks == [] and cluster.unlocks == []


@pytest_twisted.ensureDeferred
async def test_another_instances_finish_wakes_a_waiter_here_and_is_published_as_not_local(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    cluster = _FakeCluster(store)
    events = ResultEvents(id_base=0)
    seen: list[ResultEvent] = []
    events.subscribe(seen.append)
    processor = _processor(store, cluster, context_box, clock, events=events)
    theirs = await store.create("bld-2", "reboot", "someone")
    waiting = processor.wait(theirs, 600)
    await _turns()
    assert not waiting.called
    theirs.state, theirs.text = SUCCESS, "Rebooted"
    await store.save(theirs)
    for follower in cluster.followers:
        follower(ResultChange(theirs.requestid, SUCCESS, "b"))
    await _within(waiting)
    await _turns()
    assert [(event.kind, event.requestid, event.local, event.text) for event in seen] == [
        (FINISHED, theirs.requestid, False, "Rebooted")
    ]
    # The wait left no timer behind.
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_wait_on_another_instances_result_gives_up_after_its_time(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    processor = _processor(store, _FakeCluster(store), context_box, clock)
    theirs = await store.create("bld-2", "reboot", "someone")
    waiting = processor.wait(theirs, 30)
    await _turns()
    clock.advance(30)
    assert await _within(waiting) is None
    assert recorded_now(processor, theirs).state == PENDING


@pytest_twisted.ensureDeferred
async def test_a_queued_request_taken_over_runs_with_the_fields_it_was_asked_with(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    processor = _processor(store, _FakeCluster(store), context_box, clock)
    body = _Gated()

    def arguments(form: Mapping[str, str]) -> dict[str, Any]:
        return {"force": form.get("force") == "yes"}

    action = Action("reboot", body, exclusive=True, arguments=arguments, fields=(FormField("force"),))
    theirs = await store.create("bld-3", "reboot", "someone", {"force": "yes"})
    processor.adopt(theirs, action, {"force": "yes"})
    await _turns()
    assert body.runs == [{"force": True}]
    body.gate.callback("done")
    await _within(processor.wait(theirs, 3600))
    assert recorded_now(processor, theirs).state == SUCCESS


@pytest_twisted.ensureDeferred
async def test_a_queued_request_this_instance_cannot_run_is_recorded_as_failed(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    processor = _processor(store, _FakeCluster(store), context_box, clock)
    unknown = await store.create("bld-4", "teleport", "someone")
    processor.adopt(unknown, None, {})
    secret_body = _Gated()
    secret = Action("login", secret_body, fields=(FormField("password", secret=True),))
    with_secret = await store.create("bld-4", "login", "someone")
    processor.adopt(with_secret, secret, {})
    await _within(processor.wait(unknown, 3600))
    await _within(processor.wait(with_secret, 3600))
    shown = recorded_now(processor, unknown)
    assert shown.state == FAILURE
    assert shown.text == (
        "Not run: taken over from a stopped instance, but this instance knows no action 'teleport'."
    )
    shown = recorded_now(processor, with_secret)
    assert shown.state == FAILURE
    assert "secret fields were kept only by the instance that stopped" in shown.text
    assert secret_body.runs == []


@pytest_twisted.ensureDeferred
async def test_stopping_leaves_queued_requests_queued_for_other_instances(
    store: SQLiteResultStore, context_box: Any, clock: Clock
) -> None:
    processor = _processor(store, _FakeCluster(store), context_box, clock, concurrency=1)
    processor.startService()
    running_body, queued_body = _Gated(), _Gated()
    running = await processor.submit("bld-5", Action("first", running_body))
    queued = await processor.submit("bld-6", Action("second", queued_body))
    await _turns()
    assert running_body.runs == [{}]
    await _within(processor.stopService())
    assert recorded_now(processor, running).state == FAILURE
    assert recorded_now(processor, running).text.startswith(INTERRUPTED_TEXT)
    assert recorded_now(processor, queued).state == PENDING
    assert queued_body.runs == []
    assert RUNNING not in {recorded_now(processor, result).state for result in (running, queued)}
