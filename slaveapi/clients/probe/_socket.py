"""
The prober's one ICMP socket: opening it, reading it through the reactor,
and matching echo replies to the requests sent.

One socket serves every probe of a prober, so a thousand machines probed
every second cost no process and no file descriptor each. It is

 - an ICMP datagram socket when the kernel lets this process's group have
   one (C{net.ipv4.ping_group_range}); the kernel then sets the echo
   identifier and hands over only replies to this socket's requests;
 - else a raw ICMP socket when the process may have one (root or
   C{CAP_NET_RAW}); it receives every ICMP packet of the host, so replies
   are told apart by the prober's own identifier.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from slaveapi.clients.probe._errors import LOCAL_ERRNOS, LocalProbeError, ProbeError
from slaveapi.clients.probe._icmp import echo_request, parse_echo_reply

#: The kinds of ICMP socket tried, in order.
DATAGRAM = "datagram"
RAW = "raw"

#: Most packets read in one go, so a flood of ICMP does not starve the reactor.
_READS_PER_CALL = 256

#: A hair under one spacing: the last request goes out before the deadline, not at it.
_EPSILON = 1e-9


def open_icmp_socket(kinds: Sequence[str] = (DATAGRAM, RAW)) -> tuple[socket.socket | None, str, str]:
    """
    The first ICMP socket of C{kinds} this process may open (non-blocking),
    its kind (C{""} for none), and why it is that one, for the log.

    @raise LocalProbeError: a socket could not be opened for a local reason
        (too many open files, no memory): that says nothing about whether
        one may be opened, so it is not taken as a refusal.
    """
    refused: list[str] = []
    for kind in kinds:
        sock_type = socket.SOCK_DGRAM if kind == DATAGRAM else socket.SOCK_RAW
        try:
            sock = socket.socket(socket.AF_INET, sock_type, socket.IPPROTO_ICMP)
        except OSError as error:
            if error.errno in LOCAL_ERRNOS:
                raise LocalProbeError(f"cannot open an ICMP socket: {error.strerror or error}") from error
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
class EchoSocket:
    """
    One ICMP socket read through the reactor; L{ping} sends echo requests
    and fires at the first matching reply.

    A reply is matched by its source address and sequence number, and for a
    raw socket (which sees every ICMP packet of the host) by the identifier
    too; a datagram socket's identifier is the kernel's.

    @param on_lost: called (once) when the reactor reports the socket lost,
        after it is closed, so its owner opens a new one for the next probe.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        kind: str,
        ident: int,
        on_lost: Callable[[EchoSocket], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._sock = sock
        self.kind = kind
        self._ident = ident & 0xFFFF
        self._seq = 0
        self._pending: dict[tuple[str, int], Deferred[bool]] = {}
        self._on_lost = on_lost
        self.closed = False
        self._reactor.addReader(self)

    # IReadDescriptor

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed), for the reactor to watch."""
        return self._sock.fileno()

    def logPrefix(self) -> str:
        """What the reactor's log lines about this reader start with."""
        return "icmp-probe"

    def doRead(self) -> None:
        """The socket is readable: read what has come (at most L{_READS_PER_CALL} packets) and match it."""
        if self.closed:
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
        """
        The reactor gave up on the socket (an error reading it): close it,
        fail the probes out (no evidence about their machines) and tell the
        owner, whose next probe opens a new socket.
        """
        self._log.warn("icmp probe socket lost: {reason}", reason=reason.getErrorMessage())
        self.close()
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost(self)

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

    async def ping(self, address: str, deadline: float, spacing: float) -> bool:
        """
        Send an echo request to C{address} (an IPv4 address) at once and
        then every C{spacing} seconds while C{deadline} seconds have not
        passed. True at the first reply to any of them; False once
        C{deadline} seconds have passed without one, or at once when the
        first request cannot be sent (no route: the machine cannot be
        reached). A later request that cannot be sent is lost; the others'
        replies may still come.

        @raise LocalProbeError: a request could not be sent for a local
            reason (L{LOCAL_ERRNOS}) and no reply came, or the socket was
            closed or lost: no evidence about the machine.
        """
        if self.closed:
            raise LocalProbeError("the icmp probe socket is closed")
        answered: Deferred[bool] = Deferred()
        keys: list[tuple[str, int]] = []
        started = self._reactor.seconds()
        sent = 0
        local: OSError | None = None
        next_send: Any = None

        def send() -> None:
            nonlocal sent, local, next_send
            next_send = None
            attempt = sent
            sent += 1
            key = (address, self._next_seq(address))
            try:
                self._sock.sendto(echo_request(self._ident, key[1]), (address, 0))
            except OSError as error:
                # No route, a network that is down, a full buffer: that request is lost.
                self._log.debug(
                    "icmp echo to {address} not sent: {error}", address=address, error=os.strerror(error.errno or 0)
                )
                if error.errno in LOCAL_ERRNOS:
                    local = error
                if attempt == 0:
                    give_up()
                    return
            else:
                keys.append(key)
                self._pending[key] = answered
            if sent * spacing < deadline - _EPSILON:
                next_send = self._reactor.callLater(started + sent * spacing - self._reactor.seconds(), send)

        def give_up() -> None:
            if answered.called:
                return
            if local is not None:
                error = LocalProbeError(f"icmp probe of {address}: {os.strerror(local.errno or 0)}")
                answered.errback(Failure(error))
            else:
                answered.callback(False)

        timer = self._reactor.callLater(deadline, give_up)
        try:
            send()
            return await answered
        finally:
            if timer.active():
                timer.cancel()
            if next_send is not None and next_send.active():
                next_send.cancel()
            for key in keys:
                self._pending.pop(key, None)

    def close(self) -> None:
        """Stop reading and close the socket (once); the probes still out fail (L{LocalProbeError})."""
        if self.closed:
            return
        self.closed = True
        self._reactor.removeReader(self)
        self._sock.close()
        pending, self._pending = self._pending, {}
        for answered in pending.values():
            if not answered.called:
                answered.errback(Failure(LocalProbeError("the icmp probe socket was closed")))


#: The name the module's tests and earlier code used.
_EchoSocket = EchoSocket

__all__ = ["DATAGRAM", "RAW", "EchoSocket", "open_icmp_socket"]
