"""
L{IPMIClient}'s queues on fake workers and a L{Clock}: at most C{per_bmc}
requests to one BMC at once, a BMC's line and the worker queue do not count
against a request's deadline, and a burst much larger than the pool all
completes, none timing out for want of a worker. The power cycle's pause
between off and on holds no work slot.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from slaveapi.clients.ipmi import IPMIClient, IPMIError
from slaveapi.config import IPMIConfig, Secret
from tests.recorded_slot import RecordedSlot

from .fake_workers import FakeWorkers


def _client(fake: FakeWorkers, **changes: Any) -> IPMIClient:
    values: dict[str, Any] = dict(
        timeout=1.0, retries=1, workers=4, per_bmc=1, off_timeout=5.0, poll_interval=0.2, power_delay=0.5
    )
    values.update(changes)
    return IPMIClient(fake, IPMIConfig(**values), "ADMIN", Secret("fake-password"))


def _outcome(deferred: Deferred[Any]) -> list[Any]:
    """What C{deferred} ended with (a value, or the exception), once it has."""
    seen: list[Any] = []
    deferred.addBoth(lambda result: seen.append(getattr(result, "value", result)))
    return seen


def test_a_second_request_to_one_bmc_waits_until_the_first_ends() -> None:
    workers = FakeWorkers()
    client = _client(workers)
    first = _outcome(Deferred.fromCoroutine(client.power_state("10.0.0.1")))
    second = _outcome(Deferred.fromCoroutine(client.power_state("10.0.0.1")))
    workers.clock.advance(0)  # the workers say they are ready

    assert [sent.host for sent in workers.pending] == ["10.0.0.1"]
    workers.answer("10.0.0.1")
    assert first == [False]
    assert [sent.host for sent in workers.pending] == ["10.0.0.1"]
    workers.answer("10.0.0.1")
    assert second == [False]
    assert workers.most_busy == {"10.0.0.1": 1}


def test_requests_to_two_bmcs_run_at_once() -> None:
    workers = FakeWorkers()
    client = _client(workers)
    for host in ("10.0.0.1", "10.0.0.2"):
        Deferred.fromCoroutine(client.power_state(host))
    workers.clock.advance(0)

    assert sorted(sent.host for sent in workers.pending) == ["10.0.0.1", "10.0.0.2"]


def test_per_bmc_above_one_lets_that_many_through() -> None:
    workers = FakeWorkers()
    client = _client(workers, per_bmc=2)
    for _ in range(3):
        Deferred.fromCoroutine(client.power_state("10.0.0.1"))
    workers.clock.advance(0)

    assert len(workers.pending) == 2


def test_waiting_for_the_bmc_does_not_count_against_the_deadline() -> None:
    workers = FakeWorkers()
    client = _client(workers, timeout=1.0)
    first = _outcome(Deferred.fromCoroutine(client.power_state("10.0.0.1")))
    second = _outcome(Deferred.fromCoroutine(client.power_state("10.0.0.1")))
    workers.clock.advance(0)

    workers.clock.advance(0.9)
    workers.answer("10.0.0.1")
    workers.clock.advance(0.9)  # 1.8 s after the second asked: its own deadline has 0.1 s left
    workers.answer("10.0.0.1")

    assert (first, second) == ([False], [False])


def test_a_cancelled_wait_for_a_bmc_leaves_its_line() -> None:
    workers = FakeWorkers()
    client = _client(workers)
    Deferred.fromCoroutine(client.power_state("10.0.0.1"))
    waiting = Deferred.fromCoroutine(client.power_state("10.0.0.1"))
    third = _outcome(Deferred.fromCoroutine(client.power_state("10.0.0.1")))
    workers.clock.advance(0)
    waiting.addErrback(lambda _: None)
    waiting.cancel()

    assert client._bmcs.waiting("10.0.0.1") == 1
    workers.answer("10.0.0.1")
    workers.answer("10.0.0.1")
    assert third == [False]
    assert len(workers.served) == 2
    assert len(client._bmcs) == 0  # an idle BMC is forgotten


def test_a_burst_far_larger_than_the_pool_completes_without_a_timeout() -> None:
    # 500 power cycles (a few requests each) on 4 workers answering in 50 ms, with a 1 s deadline:
    # the last requests wait half a minute for a worker and must still succeed.
    workers = FakeWorkers(answer_after=0.05)
    client = _client(workers, workers=4, timeout=1.0)
    hosts = [f"10.0.{n // 250}.{n % 250 + 1}" for n in range(500)]
    for host in hosts:
        workers.powered[host] = True
    outcomes = [_outcome(Deferred.fromCoroutine(client.powercycle(host))) for host in hosts]

    rounds = 0
    while any(not outcome for outcome in outcomes) and rounds < 100_000:
        workers.clock.advance(0.05)
        rounds += 1

    failures = [outcome[0] for outcome in outcomes if outcome and isinstance(outcome[0], BaseException)]
    assert failures == []
    assert all(outcome == [None] for outcome in outcomes)
    assert all(workers.powered[host] for host in hosts)
    assert workers.spawned == 4
    assert workers.most_workers_busy == 4
    assert max(workers.most_busy.values()) == 1
    # Far more than fit in one deadline went through the pool, one after another.
    assert len(workers.served) > 4 * (1.0 / 0.05) * 10


def test_a_request_that_outlives_its_deadline_still_fails() -> None:
    workers = FakeWorkers()
    client = _client(workers, timeout=1.0, retries=0)
    outcome = _outcome(Deferred.fromCoroutine(client.power_state("10.0.0.1")))
    workers.clock.advance(0)
    workers.clock.advance(1.0)
    workers.clock.advance(0)

    assert len(outcome) == 1 and isinstance(outcome[0], IPMIError)


def test_the_pause_between_off_and_on_holds_no_work_slot() -> None:
    workers = FakeWorkers(answer_after=0.01)
    client = _client(workers, power_delay=30.0, poll_interval=0.05)
    workers.powered["10.0.0.1"] = True
    recorded = RecordedSlot(workers.clock)

    assert recorded.run(lambda: client.powercycle("10.0.0.1")) == [None]
    assert any(end - start >= 30.0 for start, end in recorded.pauses())
    assert recorded.slot.held

