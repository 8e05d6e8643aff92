"""
Liveness probes: is a machine up, and did a reboot take it down and bring it back?

Two kinds, chosen by C{[probes] method}. C{tcp} connects to the machine's
SSH port. C{icmp} sends ICMP echo requests from inside the process, on one
socket per prober read through the reactor: a thousand machines rebooting
at once, each probed every second, must not cost a thousand child
processes a second (the system C{ping} it replaced did). The socket is

 - an ICMP datagram socket when the kernel lets this process's group have
   one (C{net.ipv4.ping_group_range}); the kernel then sets the echo
   identifier and hands over only replies to this socket's requests;
 - else a raw ICMP socket when the process may have one (root or
   C{CAP_NET_RAW}); it receives every ICMP packet of the host, so replies
   are told apart by the prober's own identifier;
 - else none: the prober probes over TCP instead, and says so once.

A probe sends up to C{ping_count} echo requests (one a second, or closer
together when C{ping_deadline} is short) and says "alive" at the first
reply, "not alive" once C{ping_deadline} seconds have passed, or at once
when no request could be sent at all (no route: the machine cannot be
reached). Names are resolved through the reactor's resolver first; a host
with no IPv4 address (an IPv6 literal or an IPv6-only name) is probed over
TCP, as ICMP here is IPv4 only. The lab uses C{tcp}: every loopback address
answers ICMP.

Waiting is one loop per prober, not one per waiter: L{Prober.wait_for}
(and so L{Prober.wait_for_reboot}) registers a waiter for a host; while
any waiter is left, the loop probes every watched host once every
C{interval} (a host whose probe is still out is not probed again; the
probes of one tick go out together) and gives each waiter its verdict when
the machine is seen in the state waited for or when its limit has passed.
A waiting action holds no work slot (L{slaveapi.work.waiting}).
"""

from __future__ import annotations

import os
import socket
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReadDescriptor, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from slaveapi.clients._bounded import within
from slaveapi.clients._errors import ClientError, ClientTimeout
from slaveapi.config import ProbeConfig
from slaveapi.interfaces import IProber
from slaveapi.work import waiting

ECHO_REPLY = 0
ECHO_REQUEST = 8

#: What each echo request carries (replies echo it back; it is not relied on).
PAYLOAD = b"slaveapi-probe\x00\x00"

#: The kinds of ICMP socket tried, in order.
DATAGRAM = "datagram"
RAW = "raw"

#: Most packets read in one go, so a flood of ICMP does not starve the reactor.
_READS_PER_CALL = 256


@dataclass(frozen=True)
class RebootWait:
    """What was seen while waiting for a reboot."""

    went_down: bool
    came_back: bool
    waited: float


class ProbeError(ClientError):
    """A probe could not be run at all (as opposed to a machine that does not answer it)."""


# --- ICMP packets ---------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of C{data}: the ones' complement of its ones'-complement 16-bit sum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMP echo request (type 8, code 0) with its checksum."""
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    total = checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, total, ident & 0xFFFF, seq & 0xFFFF) + payload


@dataclass(frozen=True)
class EchoReply:
    """The identifier and sequence number of an ICMP echo reply."""

    ident: int
    seq: int


def parse_echo_reply(packet: bytes) -> EchoReply | None:
    """
    The echo reply in C{packet}, or C{None} for anything else (another
    ICMP type, a bad checksum, a truncated packet).

    A raw socket (and a datagram one on some systems) delivers the IPv4
    header too; it is recognised by its version nibble (an ICMP message
    starts with its type, and an echo reply's is 0) and skipped by its
    length field.
    """
    if packet and packet[0] >> 4 == 4:
        header_length = (packet[0] & 0x0F) * 4
        if header_length < 20 or len(packet) < header_length:
            return None
        packet = packet[header_length:]
    if len(packet) < 8:
        return None
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    if kind != ECHO_REPLY or code != 0 or checksum(packet) != 0:
        return None
    return EchoReply(ident, seq)


def open_icmp_socket(kinds: Sequence[str] = (DATAGRAM, RAW)) -> tuple[socket.socket | None, str, str]:
    """
    The first ICMP socket of C{kinds} this process may open (non-blocking),
    its kind (C{None} for none), and why it is that one, for the log.
    """
    refused: list[str] = []
    for kind in kinds:
        sock_type = socket.SOCK_DGRAM if kind == DATAGRAM else socket.SOCK_RAW
        try:
            sock = socket.socket(socket.AF_INET, sock_type, socket.IPPROTO_ICMP)
        except OSError as error:
            refused.append(f"{kind} ICMP socket refused ({error.strerror or error})")
            continue
        sock.setblocking(False)
        if kind == DATAGRAM:
            why = "net.ipv4.ping_group_range admits this process's group"
        else:
            why = "; ".join([*refused, "raw sockets are permitted (root or CAP_NET_RAW)"])
        return sock, kind, why
    return None, "", "; ".join(refused) or "no ICMP socket kind tried"


@implementer(IReadDescriptor)
class _EchoSocket:
    """
    One ICMP socket read through the reactor; L{ping} sends echo requests
    and fires at the first matching reply.

    A reply is matched by its source address and sequence number, and for a
    raw socket (which sees every ICMP packet of the host) by the identifier
    too; a datagram socket's identifier is the kernel's.
    """

    _log = Logger()

    def __init__(self, reactor: Any, sock: socket.socket, kind: str, ident: int) -> None:
        self._reactor = reactor
        self._sock = sock
        self.kind = kind
        self._ident = ident & 0xFFFF
        self._seq = 0
        self._pending: dict[tuple[str, int], Deferred[bool]] = {}
        self._reactor.addReader(self)

    # IReadDescriptor

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "icmp-probe"

    def doRead(self) -> None:
        if self._sock.fileno() == -1:
            return  # closed while a read was already due
        for _ in range(_READS_PER_CALL):
            try:
                packet, source = self._sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # An ICMP error queued on the socket, say; the next read goes on.
                self._log.debug("icmp probe socket: {error}", error=str(error))
                return
            self._received(packet, source[0])

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def _received(self, packet: bytes, source: str) -> None:
        reply = parse_echo_reply(packet)
        if reply is None or (self.kind == RAW and reply.ident != self._ident):
            return
        answered = self._pending.get((source, reply.seq))
        if answered is not None and not answered.called:
            answered.callback(True)

    def _next_seq(self, address: str) -> int:
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if (address, self._seq) not in self._pending:
                return self._seq
        raise ProbeError(f"icmp probe of {address}: every sequence number is in use")

    async def ping(self, address: str, count: int, deadline: float) -> bool:
        """
        Send up to C{count} echo requests to C{address} (an IPv4 address);
        True at the first reply, False after C{deadline} seconds or at once
        when none could be sent.
        """
        answered: Deferred[bool] = Deferred()
        keys: list[tuple[str, int]] = []
        timers: list[Any] = []
        spacing = min(1.0, deadline / count)
        attempts = 0

        def send() -> None:
            nonlocal attempts
            attempts += 1
            key = (address, self._next_seq(address))
            try:
                self._sock.sendto(echo_request(self._ident, key[1]), (address, 0))
            except OSError as error:
                # No route, a network that is down, a full buffer: that request is lost.
                self._log.debug(
                    "icmp echo to {address} not sent: {error}", address=address, error=os.strerror(error.errno or 0)
                )
            else:
                keys.append(key)
                self._pending[key] = answered
            if attempts == count and not keys and not answered.called:
                answered.callback(False)

        def give_up() -> None:
            if not answered.called:
                answered.callback(False)

        try:
            timers.append(self._reactor.callLater(deadline, give_up))
            send()
            timers.extend(self._reactor.callLater(spacing * n, send) for n in range(1, count))
            return await answered
        finally:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            for key in keys:
                self._pending.pop(key, None)

    def close(self) -> None:
        """Stop reading and close the socket (once)."""
        if self._sock.fileno() == -1:
            return
        self._reactor.removeReader(self)
        self._sock.close()


# --- the prober ---------------------------------------------------------------------------


class _Closer(Protocol):
    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what a name resolution found; C{done} fires at its end."""

    def __init__(self) -> None:
        self.ipv4: list[str] = []
        self.ipv6: list[str] = []
        self.done: Deferred[None] = Deferred()

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, IPv4Address):
            self.ipv4.append(address.host)
        elif isinstance(address, IPv6Address):
            self.ipv6.append(address.host)

    def resolutionComplete(self) -> None:
        if not self.done.called:
            self.done.callback(None)


@dataclass(eq=False)
class _Waiter:
    """One caller of L{Prober.wait_for}: what it waits for, until when, and its verdict."""

    up: bool
    give_up: float
    #: The first probe (by number, per host) whose answer counts: one started after it arrived.
    first_probe: int
    verdict: Deferred[bool]


@dataclass(eq=False)
class _Watch:
    """A host some waiter waits on."""

    host: str
    waiters: list[_Waiter] = field(default_factory=list)
    #: How many probes of the host were started (the number of the next).
    started: int = 0
    in_flight: Deferred[None] | None = None


@implementer(IProber)
class Prober:
    """
    Answers "is it up?" by ICMP or TCP, and waits for reboots.

    @param ssh_port: the port the TCP probe connects to.
    @param icmp_kinds: the ICMP socket kinds to try, in order (see
        L{open_icmp_socket}); none that opens means the TCP probe.
    """

    _log = Logger()

    def __init__(
        self, reactor: Any, config: ProbeConfig, ssh_port: int, icmp_kinds: Sequence[str] = (DATAGRAM, RAW)
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._ssh_port = ssh_port
        self._icmp_kinds = tuple(icmp_kinds)
        # None: not opened yet; False: no ICMP socket to be had (TCP instead).
        self._echo: _EchoSocket | bool | None = None
        self._ident = zlib.crc32(f"{os.getpid()}:{id(self)}".encode()) & 0xFFFF
        self._watches: dict[str, _Watch] = {}
        self._tick_call: Any = None
        self._noted_tcp_hosts: set[str] = set()

    # --- one probe

    async def alive(self, host: str) -> bool:
        """Whether C{host} answers the configured probe now."""
        if self._config.method == "tcp":
            return await self._tcp(host)
        return await self._icmp(host)

    @property
    def icmp_method(self) -> str | None:
        """The ICMP socket kind in use (C{datagram}, C{raw}), or C{None}: not opened yet or TCP instead."""
        return self._echo.kind if isinstance(self._echo, _EchoSocket) else None

    async def _tcp(self, host: str) -> bool:
        endpoint = HostnameEndpoint(self._reactor, host, self._ssh_port, timeout=self._config.tcp_timeout)
        attempt = endpoint.connect(Factory.forProtocol(_Closer))
        try:
            await within(self._reactor, self._config.tcp_timeout + 1, attempt, f"tcp probe of {host}")
        except CancelledError:
            raise
        except Exception:
            return False
        return True

    def _echo_socket(self) -> _EchoSocket | None:
        """The prober's ICMP socket, opened at the first ICMP probe; C{None}: probe over TCP."""
        if self._echo is None:
            sock, kind, why = open_icmp_socket(self._icmp_kinds)
            if sock is None:
                self._echo = False
                self._log.warn(
                    "[probes] method = icmp, but no ICMP socket can be opened ({why}): probing over TCP "
                    "(port {port}) instead. Grant CAP_NET_RAW, or admit the service's group in "
                    "net.ipv4.ping_group_range, or set [probes] method = tcp.",
                    why=why,
                    port=self._ssh_port,
                    probe_method="tcp",
                )
            else:
                self._echo = _EchoSocket(self._reactor, sock, kind, self._ident)
                self._log.info(
                    "ICMP probes in process on a {kind} ICMP socket: {why}", kind=kind, why=why, probe_method=kind
                )
        return self._echo if isinstance(self._echo, _EchoSocket) else None

    async def _icmp(self, host: str) -> bool:
        echo = self._echo_socket()
        if echo is None:
            return await self._tcp(host)
        started = self._reactor.seconds()
        deadline = self._config.ping_deadline
        address = await self._ipv4(host, deadline)
        if address is None:
            return False
        if address == "":
            return await self._tcp(host)
        left = deadline - (self._reactor.seconds() - started)
        if left <= 0:
            return False
        return await echo.ping(address, self._config.ping_count, left)

    async def _ipv4(self, host: str, limit: float) -> str | None:
        """
        An IPv4 address of C{host}; C{""} when it has only IPv6 ones (probed
        over TCP); C{None} when it does not resolve within C{limit}.
        """
        if isIPAddress(host):
            return host
        if not isIPv6Address(host):
            found = _Addresses()
            self._reactor.nameResolver.resolveHostName(found, host, 0, [IPv4Address, IPv6Address])
            try:
                await within(self._reactor, limit, found.done, f"resolving {host}")
            except CancelledError:
                raise
            except Exception as error:
                self._log.debug("icmp probe: {host} did not resolve: {error}", host=host, error=str(error))
                return None
            if found.ipv4:
                return found.ipv4[0]
            if not found.ipv6:
                return None
        if host not in self._noted_tcp_hosts:
            self._noted_tcp_hosts.add(host)
            self._log.info("{host} has no IPv4 address: probed over TCP (ICMP probes are IPv4 only)", host=host)
        return ""

    def _probe_bound(self) -> float:
        """The most a probe may take in the loop before it counts as "not alive"."""
        if self._config.method == "tcp":
            return self._config.tcp_timeout + 2
        return max(self._config.ping_deadline, self._config.tcp_timeout) + 2

    # --- waiting: one loop for every waiter

    async def wait_for(self, host: str, up: bool, limit: float) -> bool:
        """
        Wait until C{host} is up (or down); False if C{limit} seconds pass
        first. The loop probes it every C{interval} (at once when no one
        was waiting on it yet); cancelling the wait leaves the loop.

        @raise ProbeError: the probe cannot be run.
        """
        watch = self._watches.get(host)
        fresh = watch is None
        if watch is None:
            watch = self._watches[host] = _Watch(host)
        waiter = _Waiter(
            up, self._reactor.seconds() + limit, watch.started, Deferred(lambda _: self._leave(watch, waiter))
        )
        watch.waiters.append(waiter)
        if fresh:
            self._probe(watch)
        self._keep_ticking()
        async with waiting():
            return await waiter.verdict

    async def wait_for_reboot(self, host: str, progress: Callable[[str], None] | None = None) -> RebootWait:
        """
        Wait, bounded, for C{host} to go down and then to come back.

        A machine that never goes down is reported as such; whether it
        rebooted too fast to be seen is for the caller to decide.
        """
        started = self._reactor.seconds()
        went_down = await self.wait_for(host, up=False, limit=self._config.down_timeout)
        if not went_down:
            return RebootWait(False, False, self._reactor.seconds() - started)
        if progress:
            progress("down")
        came_back = await self.wait_for(host, up=True, limit=self._config.up_timeout)
        return RebootWait(True, came_back, self._reactor.seconds() - started)

    @property
    def watched(self) -> list[str]:
        """The hosts some waiter waits on now."""
        return list(self._watches)

    def _keep_ticking(self) -> None:
        if self._watches and self._tick_call is None:
            self._tick_call = self._reactor.callLater(self._config.interval, self._tick)
        elif not self._watches and self._tick_call is not None:
            if self._tick_call.active():
                self._tick_call.cancel()
            self._tick_call = None

    def _tick(self) -> None:
        """Probe every watched host with no probe out, all at once."""
        self._tick_call = None
        for watch in list(self._watches.values()):
            # A waiter settled by an earlier probe of this tick may have left (or replaced) a watch.
            if watch.in_flight is None and self._watches.get(watch.host) is watch:
                self._probe(watch)
        self._keep_ticking()

    def _probe(self, watch: _Watch) -> None:
        number = watch.started
        watch.started += 1
        probing = Deferred.fromCoroutine(
            within(self._reactor, self._probe_bound(), self.alive(watch.host), f"probe of {watch.host}")
        )
        done: Deferred[None] = probing.addCallbacks(
            lambda answer: self._judge(watch, number, answer, None),
            lambda failure: self._judge(watch, number, None, failure),
        )
        if not done.called:
            watch.in_flight = done

    def _judge(self, watch: _Watch, number: int, answer: bool | None, failure: Failure | None) -> None:
        """Give their verdict to the waiters this probe's answer (or failure) settles."""
        if watch.in_flight is not None and watch.in_flight.called:
            watch.in_flight = None
        if failure is not None and failure.check(CancelledError):
            return  # the watch was left; no one is waiting on this answer
        if failure is not None and failure.check(ClientTimeout):
            # Overstayed its bound: not seen up.
            self._log.debug("probe of {host}: {error}", host=watch.host, error=failure.getErrorMessage())
            answer, failure = False, None
        now = self._reactor.seconds()
        settled: list[tuple[_Waiter, bool | Failure]] = []
        for waiter in watch.waiters:
            if waiter.first_probe > number:
                continue
            if failure is not None:
                settled.append((waiter, failure))
            elif answer == waiter.up:
                settled.append((waiter, True))
            elif now >= waiter.give_up:
                settled.append((waiter, False))
        for waiter, _ in settled:
            watch.waiters.remove(waiter)
        if not watch.waiters and self._watches.get(watch.host) is watch:
            del self._watches[watch.host]
        self._keep_ticking()
        for waiter, verdict in settled:
            if isinstance(verdict, Failure):
                waiter.verdict.errback(verdict)
            else:
                waiter.verdict.callback(verdict)

    def _leave(self, watch: _Watch, waiter: _Waiter) -> None:
        """A cancelled waiter: out of the loop; a host no one waits on any more is not probed."""
        if waiter in watch.waiters:
            watch.waiters.remove(waiter)
        if not watch.waiters and self._watches.get(watch.host) is watch:
            del self._watches[watch.host]
            if watch.in_flight is not None:
                probing, watch.in_flight = watch.in_flight, None
                probing.cancel()
        self._keep_ticking()

    async def close(self) -> None:
        """
        Stop the loop and close the ICMP socket. A context is closed once no
        action uses it, so no one should be waiting; any waiter left is
        failed (L{ProbeError}) rather than left hanging.
        """
        left = [(watch, waiter) for watch in self._watches.values() for waiter in watch.waiters]
        for watch in list(self._watches.values()):
            watch.waiters.clear()
            if watch.in_flight is not None:
                probing, watch.in_flight = watch.in_flight, None
                probing.cancel()
        self._watches.clear()
        self._keep_ticking()
        for _, waiter in left:
            waiter.verdict.errback(ProbeError("the prober was closed while waiting"))
        if isinstance(self._echo, _EchoSocket):
            self._echo.close()
        self._echo = None


__all__ = [
    "DATAGRAM",
    "RAW",
    "EchoReply",
    "ProbeError",
    "Prober",
    "RebootWait",
    "checksum",
    "echo_request",
    "open_icmp_socket",
    "parse_echo_reply",
]
