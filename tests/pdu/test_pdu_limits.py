"""
L{PDUClient}'s limits on a L{Clock}, with the SNMP exchange faked: at most
C{per_pdu} requests to one PDU at once, at most C{max_requests} to all,
waits that do not count against a request's deadline, cancelled waits that
leave the line, and a pause between off and on that holds no work slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.pdu import PDUClient, PDUError
from slaveapi.config import Secret, SNMPConfig
from tests.recorded_slot import RecordedSlot

_SENTRY_STATUS = (1, 3, 6, 1, 4, 1, 1718, 3, 2, 3, 1, 5)


@dataclass
class _Exchange:
    """One SNMP request sent and not answered yet."""

    address: str
    oid: tuple[int, ...]
    value: int | None
    answer: Deferred[Any] = field(default_factory=Deferred)


class _FakeSNMP(PDUClient):
    """A PDU client whose SNMP exchanges wait for the test (or answer after C{answer_after})."""

    def __init__(self, clock: Clock, config: SNMPConfig, answer_after: float | None = None) -> None:
        super().__init__(clock, config, Secret("fake-community"), None, None)
        self.clock = clock
        self.answer_after = answer_after
        self.pending: list[_Exchange] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        self.most_overall = 0
        self.outlets: dict[tuple[str, tuple[int, ...]], int] = {}

    async def _request(self, address: str, auth: Any, oid: tuple[int, ...], value: int | None) -> Any:
        return _Exchange(address, oid, value)

    async def _run(self, coroutine: Any, bound: float) -> Any:
        exchange: _Exchange = await Deferred.fromCoroutine(coroutine)
        self.pending.append(exchange)
        host = exchange.address
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        self.most_in_flight[host] = max(self.most_in_flight.get(host, 0), self.in_flight[host])
        self.most_overall = max(self.most_overall, len(self.pending))
        if self.answer_after is not None:
            self.clock.callLater(self.answer_after, self._answer, exchange)
        try:
            return await self._within(exchange.answer, bound)
        finally:
            self.in_flight[host] -= 1
            if exchange in self.pending:
                self.pending.remove(exchange)

    def answer(self, host: str) -> None:
        """Answer the oldest request to C{host}."""
        self._answer(next(exchange for exchange in self.pending if exchange.address == host))

    def _answer(self, exchange: _Exchange) -> None:
        if exchange.answer.called:
            return
        index = exchange.oid[len(_SENTRY_STATUS):]
        key = (exchange.address, index)
        if exchange.value is not None:
            self.outlets[key] = 1 if exchange.value == 1 else 0  # a Sentry: 1 on, 2 off -> state 1 / 0
        exchange.answer.callback((None, 0, 0, [(exchange.oid, self.outlets.get(key, 1))]))


def _config(**changes: Any) -> SNMPConfig:
    values: dict[str, Any] = dict(timeout=1.0, retries=0, per_pdu=1, max_requests=32, poll_interval=0.2,
                                  state_timeout=5.0, power_delay=0.5)
    values.update(changes)
    return SNMPConfig(**values)


def _outcome(deferred: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    deferred.addBoth(lambda result: seen.append(getattr(result, "value", result)))
    return seen


def _outlet(pdu: int, number: int) -> PDUOutlet:
    return PDUOutlet(f"pdu{pdu}.example.test", f"AA{number}")


def test_a_second_request_to_one_pdu_waits_until_the_first_ends() -> None:
    client = _FakeSNMP(Clock(), _config())
    first = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(1, 1))))
    second = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(1, 2))))
    other = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(2, 1))))

    assert sorted(exchange.address for exchange in client.pending) == ["pdu1.example.test", "pdu2.example.test"]
    client.answer("pdu1.example.test")
    assert first == [True] and second == []
    client.answer("pdu1.example.test")
    client.answer("pdu2.example.test")
    assert (second, other) == ([True], [True])
    assert client.most_in_flight == {"pdu1.example.test": 1, "pdu2.example.test": 1}


def test_at_most_max_requests_in_flight_to_all_pdus() -> None:
    client = _FakeSNMP(Clock(), _config(max_requests=3))
    outcomes = [_outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(pdu, 1)))) for pdu in range(5)]

    assert len(client.pending) == 3
    client.answer("pdu0.example.test")
    assert len(client.pending) == 3
    for pdu in range(1, 5):
        client.answer(f"pdu{pdu}.example.test")
    assert all(outcome == [True] for outcome in outcomes)
    assert client.most_overall == 3


def test_a_request_waiting_for_its_pdu_holds_no_overall_place() -> None:
    client = _FakeSNMP(Clock(), _config(max_requests=2))
    for number in range(1, 4):
        Deferred.fromCoroutine(client.outlet_state(_outlet(1, number)))
    other = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(2, 1))))

    assert sorted(exchange.address for exchange in client.pending) == ["pdu1.example.test", "pdu2.example.test"]
    client.answer("pdu2.example.test")
    assert other == [True]


def test_waiting_for_the_pdu_does_not_count_against_the_deadline() -> None:
    clock = Clock()
    client = _FakeSNMP(clock, _config(timeout=1.0, retries=0))
    first = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(1, 1))))
    second = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(1, 2))))
    clock.advance(1.2)
    client.answer("pdu1.example.test")
    clock.advance(1.2)  # the second has waited 2.4 s, more than its own deadline of 1.5 s
    client.answer("pdu1.example.test")

    assert (first, second) == ([True], [True])


def test_a_cancelled_wait_leaves_the_line_and_idle_pdus_are_forgotten() -> None:
    client = _FakeSNMP(Clock(), _config())
    Deferred.fromCoroutine(client.outlet_state(_outlet(1, 1)))
    waiting = Deferred.fromCoroutine(client.outlet_state(_outlet(1, 2)))
    waiting.addErrback(lambda _: None)
    waiting.cancel()

    assert client._pdus.waiting("pdu1.example.test") == 0
    client.answer("pdu1.example.test")
    assert client.pending == []
    assert (len(client._pdus), len(client._overall)) == (0, 0)


def test_an_unanswered_request_still_fails_at_its_deadline() -> None:
    clock = Clock()
    client = _FakeSNMP(clock, _config(timeout=1.0, retries=0))
    outcome = _outcome(Deferred.fromCoroutine(client.outlet_state(_outlet(1, 1))))
    clock.advance(1.5)
    clock.advance(0)

    assert len(outcome) == 1 and isinstance(outcome[0], PDUError)
    assert (len(client._pdus), len(client._overall)) == (0, 0)


def test_many_power_cycles_on_one_pdu_all_finish_one_request_at_a_time() -> None:
    clock = Clock()
    client = _FakeSNMP(clock, _config(), answer_after=0.01)
    outcomes = [_outcome(Deferred.fromCoroutine(client.powercycle(_outlet(1, n)))) for n in range(1, 33)]
    for _ in range(10_000):
        if all(outcomes):
            break
        clock.advance(0.01)

    assert all(outcome == [None] for outcome in outcomes)
    assert client.most_in_flight == {"pdu1.example.test": 1}


def test_the_pause_between_off_and_on_holds_no_work_slot() -> None:
    clock = Clock()
    client = _FakeSNMP(clock, _config(power_delay=30.0), answer_after=0.01)
    recorded = RecordedSlot(clock)

    assert recorded.run(lambda: client.powercycle(_outlet(1, 1))) == [None]
    assert any(end - start >= 30.0 for start, end in recorded.pauses())
    assert recorded.slot.held

