"""The liveness prober: TCP connects and the system ping, and the bounded reboot wait."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest_twisted
from twisted.internet.protocol import Factory, Protocol

from slaveapi.clients.probe import Prober
from slaveapi.config import ProbeConfig


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _listen(port: int = 0) -> Any:
    return _reactor().listenTCP(port, Factory.forProtocol(Protocol), interface="127.0.0.1")


def _fake_ping(tmp_path: Any, body: str) -> str:
    path = tmp_path / "ping"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest_twisted.ensureDeferred
async def test_tcp_probe_sees_a_listening_port_and_a_closed_one() -> None:
    listener = _listen()
    port = listener.getHost().port
    prober = Prober(_reactor(), ProbeConfig(method="tcp", tcp_timeout=2), port)
    try:
        assert await prober.alive("127.0.0.1") is True
    finally:
        await listener.stopListening()
    assert await prober.alive("127.0.0.1") is False


@pytest_twisted.ensureDeferred
async def test_icmp_probe_pings_loopback_with_the_system_ping() -> None:
    prober = Prober(_reactor(), ProbeConfig(method="icmp", ping_count=1, ping_deadline=2), 22)
    assert await prober.alive("127.0.0.1") is True


@pytest_twisted.ensureDeferred
async def test_icmp_probe_reads_ping_failing_and_passes_count_and_deadline(tmp_path: Any) -> None:
    record = tmp_path / "args"
    ping = _fake_ping(tmp_path, f'printf "%s\\n" "$@" > {record}; exit 1')
    prober = Prober(_reactor(), ProbeConfig(method="icmp", ping_count=4, ping_deadline=7), 22, ping_path=ping)
    assert await prober.alive("10.9.8.7") is False
    assert record.read_text().split() == ["-n", "-q", "-c", "4", "-w", "7", "--", "10.9.8.7"]


@pytest_twisted.ensureDeferred
async def test_a_ping_that_overstays_is_killed_and_counts_as_down(tmp_path: Any) -> None:
    pidfile = tmp_path / "pid"
    ping = _fake_ping(tmp_path, f"echo $$ > {pidfile}; exec sleep 60")
    prober = Prober(_reactor(), ProbeConfig(method="icmp", ping_count=1, ping_deadline=1), 22, ping_path=ping)
    assert await prober.alive("127.0.0.1") is False
    pid = int(pidfile.read_text())
    # Killed, not left behind: signal 0 to a reaped PID fails.
    try:
        os.kill(pid, 0)
        still_there = True
    except ProcessLookupError:
        still_there = False
    assert still_there is False


@pytest_twisted.ensureDeferred
async def test_wait_for_reboot_sees_down_then_up() -> None:
    reactor = _reactor()
    listener = _listen()
    port = listener.getHost().port
    prober = Prober(reactor, ProbeConfig(method="tcp", tcp_timeout=1, interval=0.05, down_timeout=5, up_timeout=5), port)
    relisten: list[Any] = []

    async def reboot() -> None:
        await listener.stopListening()
        reactor.callLater(0.3, lambda: relisten.append(_listen(port)))

    reactor.callLater(0.2, lambda: _start(reboot()))
    try:
        outcome = await prober.wait_for_reboot("127.0.0.1")
    finally:
        for again in relisten:
            await again.stopListening()
    assert (outcome.went_down, outcome.came_back) == (True, True)


@pytest_twisted.ensureDeferred
async def test_wait_for_reboot_is_bounded_when_nothing_happens() -> None:
    listener = _listen()
    port = listener.getHost().port
    prober = Prober(
        _reactor(), ProbeConfig(method="tcp", tcp_timeout=1, interval=0.05, down_timeout=0.3, up_timeout=0.3), port
    )
    try:
        outcome = await prober.wait_for_reboot("127.0.0.1")
    finally:
        await listener.stopListening()
    assert (outcome.went_down, outcome.came_back) == (False, False)
    never_back = await prober.wait_for("127.0.0.1", up=True, limit=0.3)
    assert never_back is False


def _start(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)
