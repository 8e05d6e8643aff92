"""The liveness prober: the TCP probe, and the bounded reboot wait on the probe loop."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from slaveapi.clients.probe import Prober, RebootWait
from slaveapi.config import ProbeConfig

#: A real timeout the tests expect never to reach (the peer is local and answers at once).
GENEROUS = 30.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _bounded(waiting: Deferred[Any]) -> Any:
    """A safety net for awaiting a real event, not a claim about speed."""
    return await waiting.addTimeout(GENEROUS, _reactor())


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound for the whole test, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


# --- one probe --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tcp_probe_sees_a_listening_port_and_a_closed_one(closed_port: int) -> None:
    listener = _reactor().listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        config = ProbeConfig(method="tcp", tcp_timeout=GENEROUS)
        assert await Prober(_reactor(), config, listener.getHost().port).alive("127.0.0.1") is True
        assert await Prober(_reactor(), config, closed_port).alive("127.0.0.1") is False
    finally:
        await listener.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_tcp_probe_of_an_address_resolves_nothing_and_logs_nothing() -> None:
    from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
    from zope.interface import provider

    class NoResolving:
        def resolveHostName(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("an address was sent to the resolver")

    reactor = _reactor()
    usual = reactor.installNameResolver(NoResolving())
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    quiet = Factory.forProtocol(Protocol)
    quiet.noisy = False
    listener = reactor.listenTCP(0, quiet, interface="127.0.0.1")
    globalLogPublisher.addObserver(observe)
    try:
        config = ProbeConfig(method="tcp", tcp_timeout=GENEROUS)
        assert await Prober(reactor, config, listener.getHost().port).alive("127.0.0.1") is True
    finally:
        reactor.installNameResolver(usual)
        globalLogPublisher.removeObserver(observe)
        await listener.stopListening()
    assert [(event.get("log_format"), event.get("factory")) for event in events if "factory" in event] == []


# The in-process ICMP probe: tests/clients_misc/test_icmp.py; the probe loop: test_probe_loop.py.


# --- waiting for a reboot ---------------------------------------------------------


class _ScriptedProber(Prober):
    """A prober whose machine is up or down as the test says; it notes when it was asked."""

    def __init__(self, clock: Clock, config: ProbeConfig, answers: list[bool]) -> None:
        super().__init__(clock, config, 22)
        self._clock = clock
        self._answers = answers
        self.asked: list[float] = []

    async def alive(self, host: str) -> bool:
        assert host == "b-1.example"
        self.asked.append(self._clock.seconds())
        # The last answer holds for ever: a machine that stays as it was.
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


def _run(clock: Clock, coroutine: Any, polls: int) -> Any:
    """Run C{coroutine} to its end by moving the clock at most C{polls} times; its result."""
    running = Deferred.fromCoroutine(coroutine)
    for _ in range(polls):
        if running.called:
            break
        clock.advance(1.0)
    assert running.called, f"still waiting after {polls} polls"
    outcome: list[Any] = []
    running.addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


CONFIG = ProbeConfig(method="tcp", interval=1.0, down_timeout=5.0, up_timeout=8.0)


def test_wait_for_reboot_sees_down_then_up() -> None:
    clock = Clock()
    prober = _ScriptedProber(clock, CONFIG, [True, True, False, False, False, True])
    seen: list[str] = []
    outcome = _run(clock, prober.wait_for_reboot("b-1.example", seen.append), polls=20)
    assert outcome == RebootWait(went_down=True, came_back=True, waited=4.0)
    # Polled every interval; the wait for "up" starts with a probe of its own.
    assert prober.asked == [0.0, 1.0, 2.0, 2.0, 3.0, 4.0]
    assert seen == ["down"]


def test_wait_for_reboot_is_bounded_when_the_machine_never_goes_down() -> None:
    clock = Clock()
    prober = _ScriptedProber(clock, CONFIG, [True])
    seen: list[str] = []
    outcome = _run(clock, prober.wait_for_reboot("b-1.example", seen.append), polls=20)
    assert outcome == RebootWait(went_down=False, came_back=False, waited=5.0)
    assert prober.asked == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert seen == []


def test_wait_for_reboot_is_bounded_when_the_machine_never_comes_back() -> None:
    clock = Clock()
    prober = _ScriptedProber(clock, CONFIG, [True, False])
    seen: list[str] = []
    outcome = _run(clock, prober.wait_for_reboot("b-1.example", seen.append), polls=20)
    # Down at 1 s, then up_timeout (8 s) of probes that find it still down.
    assert outcome == RebootWait(went_down=True, came_back=False, waited=9.0)
    assert prober.asked == [0.0, 1.0, *(1.0 + n for n in range(9))]
    assert seen == ["down"]


def test_wait_for_gives_up_after_its_limit() -> None:
    clock = Clock()
    prober = _ScriptedProber(clock, CONFIG, [False])
    assert _run(clock, prober.wait_for("b-1.example", up=True, limit=3.0), polls=20) is False
    assert prober.asked == [0.0, 1.0, 2.0, 3.0]
    assert _run(clock, prober.wait_for("b-1.example", up=False, limit=3.0), polls=20) is True
    assert prober.asked[4:] == [3.0]
