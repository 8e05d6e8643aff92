"""
The in-process ICMP probe: the packets (checksum, identifier and sequence,
the IP header a raw socket delivers), the matching of replies to requests,
and real probes, which spawn no process: loopback answers; in a network
namespace of its own (C{unshare -n}), an address that cannot be reached or
that does not answer is "not alive", and a datagram ICMP socket is used
when C{ping_group_range} allows it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from slaveapi.clients.probe import (
    DATAGRAM,
    RAW,
    EchoReply,
    LocalProbeError,
    ProbeError,
    Prober,
    _EchoSocket,
    _prober,
    checksum,
    echo_request,
    open_icmp_socket,
    parse_echo_reply,
)
from slaveapi.config import ProbeConfig

#: A real timeout the tests expect never to reach.
GENEROUS = 30.0
ROOT = Path(__file__).resolve().parents[2]


def _reply(ident: int, seq: int, payload: bytes = b"abcdefgh", kind: int = 0) -> bytes:
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    total = checksum(header + payload)
    return struct.pack("!BBHHH", kind, 0, total, ident, seq) + payload


def _ip_header(options: bytes = b"") -> bytes:
    words = 5 + len(options) // 4
    return bytes([0x40 | words]) + bytes(19) + options


# --- packets --------------------------------------------------------------------


def test_checksum_of_rfc_1071s_example() -> None:
    # RFC 1071, 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, its complement 220d.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_checksum_pads_an_odd_length_and_folds_its_carries() -> None:
    assert checksum(b"\xff") == checksum(b"\xff\x00") == 0x00FF
    assert checksum(b"\xff\xff\xff\xff") == 0x0000  # ffff + ffff = 1fffe, folded ffff, complement 0


def test_an_echo_request_carries_type_ident_seq_and_a_checksum_that_verifies() -> None:
    packet = echo_request(0x1234, 0xBEEF, b"payload!")
    assert struct.unpack("!BBHHH", packet[:8])[0:2] == (8, 0)
    assert struct.unpack("!HH", packet[4:8]) == (0x1234, 0xBEEF)
    assert packet[8:] == b"payload!"
    assert checksum(packet) == 0


def test_an_echo_reply_is_parsed_with_or_without_an_ip_header() -> None:
    reply = _reply(0x1234, 7)
    assert parse_echo_reply(reply) == EchoReply(0x1234, 7)
    assert parse_echo_reply(_ip_header() + reply) == EchoReply(0x1234, 7)
    # A header with options (IHL 6): skipped by its length, not a fixed 20 bytes.
    assert parse_echo_reply(_ip_header(b"\x01\x01\x01\x00") + reply) == EchoReply(0x1234, 7)


def test_what_is_not_a_good_echo_reply_is_ignored() -> None:
    assert parse_echo_reply(_reply(1, 1, kind=8)) is None  # our own request, as a raw socket sees it
    assert parse_echo_reply(_reply(1, 1, kind=3)) is None  # unreachable
    broken = bytearray(_reply(1, 1))
    broken[-1] ^= 0xFF
    assert parse_echo_reply(bytes(broken)) is None  # bad checksum
    assert parse_echo_reply(_reply(1, 1)[:6]) is None
    assert parse_echo_reply(_ip_header()[:12]) is None
    assert parse_echo_reply(b"") is None


# --- matching replies to requests -----------------------------------------------------


class _Socket:
    """A socket that records what is sent; C{refuse} makes sending fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.refuse: int | None = None
        self.closed = False

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.refuse is not None:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.sent.append((data, address))
        return len(data)

    def fileno(self) -> int:
        return -1 if self.closed else 99

    def close(self) -> None:
        self.closed = True


class _Reactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


def _echo(kind: str, ident: int = 0x4242) -> tuple[_Reactor, _Socket, _EchoSocket]:
    reactor, sock = _Reactor(), _Socket()
    echo = _EchoSocket(reactor, sock, kind, ident)  # type: ignore[arg-type]
    assert reactor.readers == [echo]
    return reactor, sock, echo


def _sent_seq(sock: _Socket, index: int = -1) -> int:
    return int(struct.unpack("!H", sock.sent[index][0][6:8])[0])


def test_a_raw_socket_matches_by_address_identifier_and_sequence() -> None:
    reactor, sock, echo = _echo(RAW, ident=0x4242)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    [(packet, address)] = sock.sent
    assert address == ("10.0.0.5", 0) and struct.unpack("!H", packet[4:6]) == (0x4242,)
    seq = _sent_seq(sock)
    header = _ip_header()
    echo._received(header + _reply(0x4243, seq), "10.0.0.5")  # another process's ping
    echo._received(header + _reply(0x4242, seq), "10.0.0.6")  # another machine
    echo._received(header + _reply(0x4242, seq + 1), "10.0.0.5")  # a sequence not sent
    echo._received(header + _reply(0x4242, seq, kind=8), "10.0.0.5")  # a request, not a reply
    assert not probing.called
    echo._received(header + _reply(0x4242, seq), "10.0.0.5")
    assert probing.called and probing.result is True
    assert reactor.getDelayedCalls() == []  # further sends and the deadline: cancelled


def test_a_datagram_socket_matches_by_address_and_sequence_the_kernel_sets_the_identifier() -> None:
    reactor, sock, echo = _echo(DATAGRAM)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    echo._received(_reply(0x0777, _sent_seq(sock)), "10.0.0.5")
    assert probing.called and probing.result is True
    assert reactor.getDelayedCalls() == []


def test_requests_go_out_every_spacing_until_the_deadline_which_says_not_alive() -> None:
    reactor, sock, echo = _echo(RAW)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    for _ in range(4):
        reactor.advance(1.0)
    # At 0, 1, 2, 3 and 4 s: a machine that answers again is heard within a spacing.
    assert len(sock.sent) == 5 and len({_sent_seq(sock, n) for n in range(5)}) == 5
    assert not probing.called
    reactor.advance(1.0)
    assert len(sock.sent) == 5
    assert probing.called and probing.result is False
    assert reactor.getDelayedCalls() == []
    # A late reply to a request given up on is ignored.
    echo._received(_ip_header() + _reply(0x4242, _sent_seq(sock)), "10.0.0.5")


def test_requests_squeezed_into_a_short_deadline_stop_before_it() -> None:
    reactor, sock, echo = _echo(RAW)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=1.5, spacing=0.5))
    reactor.pump([0.5, 0.5, 0.5])
    assert len(sock.sent) == 3  # at 0, 0.5 and 1 s; none at the deadline itself
    assert probing.called and probing.result is False


def test_a_reply_to_a_later_request_counts() -> None:
    reactor, sock, echo = _echo(RAW)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    reactor.advance(1.0)
    echo._received(_ip_header() + _reply(0x4242, _sent_seq(sock, 1)), "10.0.0.5")
    assert probing.called and probing.result is True


def test_a_first_request_that_cannot_be_sent_reads_as_not_alive_at_once() -> None:
    reactor, sock, echo = _echo(RAW)
    sock.refuse = errno.ENETUNREACH
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    assert probing.called and probing.result is False
    assert reactor.getDelayedCalls() == []


def test_a_later_request_that_cannot_be_sent_is_lost_and_the_probe_goes_on() -> None:
    reactor, sock, echo = _echo(RAW)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    sock.refuse = errno.ENETUNREACH
    reactor.advance(1.0)
    sock.refuse = None
    reactor.advance(1.0)
    assert not probing.called
    echo._received(_ip_header() + _reply(0x4242, _sent_seq(sock)), "10.0.0.5")
    assert probing.called and probing.result is True


def test_a_first_request_refused_for_a_local_reason_is_no_verdict() -> None:
    reactor, sock, echo = _echo(RAW)
    sock.refuse = errno.ENOBUFS
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    failure = _failed(probing)
    assert failure.check(LocalProbeError) and "buffer" in failure.getErrorMessage()
    assert reactor.getDelayedCalls() == []


def test_a_later_request_refused_for_a_local_reason_makes_silence_no_verdict() -> None:
    reactor, sock, echo = _echo(RAW)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=2.0, spacing=1.0))
    sock.refuse = errno.ENOMEM
    reactor.advance(1.0)
    reactor.advance(1.0)
    assert _failed(probing).check(LocalProbeError)


def test_closing_fails_the_probes_out_as_local() -> None:
    reactor, _sock, echo = _echo(RAW)
    probing = Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))
    echo.close()
    assert _failed(probing).check(LocalProbeError)
    assert reactor.getDelayedCalls() == []
    assert _failed(Deferred.fromCoroutine(echo.ping("10.0.0.5", deadline=5.0, spacing=1.0))).check(LocalProbeError)


def _failed(probing: Deferred[Any]) -> Failure:
    assert probing.called, "still probing"
    seen: list[Any] = []
    probing.addBoth(seen.append)
    assert isinstance(seen[0], Failure), seen[0]
    return seen[0]


def test_closing_removes_the_reader_and_closes_the_socket_once() -> None:
    reactor, sock, echo = _echo(RAW)
    echo.close()
    echo.close()
    assert reactor.readers == [] and sock.closed


# --- the prober's socket: lost, reopened; a closed prober ---------------------------


class _Opener:
    """Stands in for open_icmp_socket: hands out fake raw sockets and counts them."""

    def __init__(self) -> None:
        self.opened: list[_Socket] = []

    def __call__(self, kinds: Any = None) -> tuple[_Socket, str, str]:
        self.opened.append(_Socket())
        return self.opened[-1], RAW, "a test socket"


@pytest.fixture
def opener(monkeypatch: pytest.MonkeyPatch) -> _Opener:
    fake = _Opener()
    monkeypatch.setattr(_prober, "open_icmp_socket", fake)
    return fake


def _icmp_prober(reactor: _Reactor) -> Prober:
    return Prober(reactor, ProbeConfig(method="icmp", ping_count=1, ping_deadline=1.0), 22)


def test_a_lost_socket_is_let_go_and_the_next_probe_opens_a_new_one(opener: _Opener) -> None:
    reactor = _Reactor()
    prober = _icmp_prober(reactor)
    first = Deferred.fromCoroutine(prober.alive("10.0.0.5"))
    lost = prober._echo
    assert isinstance(lost, _EchoSocket) and len(opener.opened[0].sent) == 1
    lost.connectionLost(Failure(OSError(errno.EBADF, "Bad file descriptor")))
    # The probe out on it is no evidence either way; the socket is closed and forgotten.
    assert _failed(first).check(LocalProbeError)
    assert opener.opened[0].closed and reactor.readers == [] and prober._echo is None
    second = Deferred.fromCoroutine(prober.alive("10.0.0.5"))
    assert len(opener.opened) == 2 and len(opener.opened[1].sent) == 1
    reactor.advance(1.0)
    assert second.called and second.result is False


@pytest_twisted.ensureDeferred
async def test_a_closed_prober_refuses_to_probe_and_opens_no_socket(opener: _Opener) -> None:
    reactor = _Reactor()
    prober = _icmp_prober(reactor)
    await prober.close()
    for probing in (prober.alive("10.0.0.5"), prober.wait_for("10.0.0.5", up=True, limit=5.0)):
        with pytest.raises(ProbeError, match="closed"):
            await probing
    assert opener.opened == [] and reactor.getDelayedCalls() == []


def test_an_icmp_socket_refused_for_a_local_reason_is_not_taken_for_no_permission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_many(*args: Any) -> socket.socket:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(socket, "socket", too_many)
    with pytest.raises(LocalProbeError):
        open_icmp_socket()
    prober = _icmp_prober(_Reactor())
    with pytest.raises(LocalProbeError):
        prober._echo_socket()
    assert prober._echo is None  # tried again next time, not "TCP for good"


def test_the_hosts_noted_as_ipv6_only_are_bounded_and_forgotten_at_close() -> None:
    prober = _icmp_prober(_Reactor())
    for n in range(_prober._TCP_HOSTS_KEPT + 10):
        prober._note_tcp_host(f"v6-{n}.example")
    assert len(prober._tcp_hosts) == _prober._TCP_HOSTS_KEPT
    assert "v6-0.example" not in prober._tcp_hosts and f"v6-{_prober._TCP_HOSTS_KEPT + 9}.example" in prober._tcp_hosts
    Deferred.fromCoroutine(prober.close())
    assert not prober._tcp_hosts


# --- real probes -----------------------------------------------------------------


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _no_process(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the ICMP probe spawned a process")


def _can_open_icmp() -> bool:
    for sock_type in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            socket.socket(socket.AF_INET, sock_type, socket.IPPROTO_ICMP).close()
        except OSError:
            continue
        return True
    return False


@pytest_twisted.ensureDeferred
async def test_the_in_process_probe_sees_loopback_alive_without_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _can_open_icmp():
        pytest.fail("needs an ICMP socket: run as root (make test does), or widen net.ipv4.ping_group_range")
    reactor = _reactor()
    monkeypatch.setattr(reactor, "spawnProcess", _no_process)
    prober = Prober(reactor, ProbeConfig(method="icmp", ping_count=1, ping_deadline=GENEROUS), 22)
    try:
        alive = Deferred.fromCoroutine(prober.alive("127.0.0.1"))
        assert await alive.addTimeout(GENEROUS, reactor) is True
        assert prober.icmp_method in (DATAGRAM, RAW)
        echo = prober._echo
        assert echo in reactor.getReaders()
    finally:
        await prober.close()
    assert echo not in reactor.getReaders()


@pytest_twisted.ensureDeferred
async def test_with_no_icmp_socket_to_be_had_the_probe_is_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = _reactor()
    monkeypatch.setattr(reactor, "spawnProcess", _no_process)
    listener = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    prober = Prober(reactor, ProbeConfig(method="icmp", tcp_timeout=GENEROUS), listener.getHost().port, icmp_kinds=())
    try:
        assert await Deferred.fromCoroutine(prober.alive("127.0.0.1")).addTimeout(GENEROUS, reactor) is True
        assert prober.icmp_method is None
    finally:
        await prober.close()
        await listener.stopListening()


def _in_own_namespace(setup: str, address: str, deadline: float = 1.0) -> dict[str, Any]:
    """The child's verdict, probing from a network namespace of its own (root only)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("needs root, unshare and ip for a network namespace of its own (make test runs as root)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = ROOT / "tests" / "clients_misc" / "icmp_child.py"
    done = subprocess.run(
        ["unshare", "-n", sys.executable, str(child), setup, address, f"{deadline:g}"],
        capture_output=True,
        text=True,
        timeout=GENEROUS,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_an_address_that_cannot_be_reached_is_not_alive() -> None:
    # A new namespace's lo is down: sending fails (network unreachable), which reads as "not alive".
    assert _in_own_namespace("lo-down", "127.0.0.1") == {"alive": False, "method": RAW}


def test_an_address_that_does_not_answer_is_not_alive_after_the_deadline() -> None:
    # lo up, but the namespace's kernel ignores echo requests: nothing ever answers.
    assert _in_own_namespace("ignore", "127.0.0.1") == {"alive": False, "method": RAW}


def test_a_datagram_icmp_socket_is_used_when_ping_group_range_allows_it() -> None:
    assert _in_own_namespace("datagram", "127.0.0.1") == {"alive": True, "method": DATAGRAM}
