"""
The prober: "is this machine up?", and waiting for a reboot to take it down
and bring it back.

Two kinds of probe, chosen by C{[probes] method}. C{tcp} connects to the
machine's SSH port. C{icmp} sends ICMP echo requests from inside the
process on the prober's one ICMP socket (L{slaveapi.clients.probe._socket}),
or probes over TCP when no ICMP socket may be opened, and says so once.
Names are resolved through the reactor's resolver first; a host with no
IPv4 address (an IPv6 literal or an IPv6-only name) is probed over TCP, as
ICMP here is IPv4 only.

Waiting is the one probe loop (L{slaveapi.clients.probe._loop}); this
module chooses what one probe is and how many of a host's may be out at
once: over TCP a new connection attempt each tick while older ones still
hang (up to C{ceil(tcp_timeout / interval) + 1}), over ICMP one probe, which
sends a request every C{interval} until its deadline. A waiting action holds
no work slot (L{slaveapi.work.waiting}).

A closed prober probes no more: L{Prober.alive} and L{Prober.wait_for}
raise L{ProbeError} rather than open a new socket behind its owner's back.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.clients._bounded import within
from slaveapi.clients.probe._errors import LocalProbeError, ProbeError, local_errno
from slaveapi.clients.probe._loop import ProbeLoop
from slaveapi.clients.probe._socket import DATAGRAM, RAW, EchoSocket, open_icmp_socket
from slaveapi.config import ProbeConfig
from slaveapi.interfaces import IProber
from slaveapi.work import waiting

#: How many hosts found to have no IPv4 address are remembered (each is logged once while remembered).
_TCP_HOSTS_KEPT = 1024


@dataclass(frozen=True)
class RebootWait:
    """What was seen while waiting for a reboot."""

    went_down: bool
    came_back: bool
    waited: float


class _Closer(Protocol):
    """The TCP probe's protocol: the connection is the answer, so it is closed as soon as it is made."""

    def connectionMade(self) -> None:
        """Connected: the machine answers; hang up."""
        if self.transport is not None:
            self.transport.loseConnection()


class _CloserFactory(Factory):
    """Makes L{_Closer}s without logging a line per probe, as a noisy factory would (two, in fact)."""

    protocol = _Closer
    noisy = False


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what a name resolution found; C{done} fires at its end."""

    def __init__(self) -> None:
        self.ipv4: list[str] = []
        self.ipv6: list[str] = []
        self.done: Deferred[None] = Deferred()

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        """The resolution started; nothing to do until it ends."""

    def addressResolved(self, address: Any) -> None:
        """One address found: kept by family."""
        if isinstance(address, IPv4Address):
            self.ipv4.append(address.host)
        elif isinstance(address, IPv6Address):
            self.ipv6.append(address.host)

    def resolutionComplete(self) -> None:
        """Every address found: C{done} fires."""
        if not self.done.called:
            self.done.callback(None)


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
        # None: not opened yet (or lost: opened again at the next probe); False: no ICMP socket to be had.
        self._echo: EchoSocket | bool | None = None
        self._ident = zlib.crc32(f"{os.getpid()}:{id(self)}".encode()) & 0xFFFF
        self._loop = ProbeLoop(reactor, config.interval, self._loop_probe, self._probe_bound, self._per_host)
        # Hosts with no IPv4 address, probed over TCP: the most recently seen, each logged once.
        self._tcp_hosts: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    # --- one probe

    async def alive(self, host: str) -> bool:
        """
        Whether C{host} answers the configured probe now.

        @raise ProbeError: the probe cannot be run (the prober is closed, say).
        @raise LocalProbeError: it failed for a local reason (too many open
            files, no buffer space): no answer either way.
        """
        if self._closed:
            raise ProbeError("the prober is closed")
        if self._config.method == "tcp":
            return await self._tcp(host)
        return await self._icmp(host)

    async def _loop_probe(self, host: str) -> bool:
        """The loop's probe: L{alive}, looked up on each call so a subclass's counts."""
        return await self.alive(host)

    @property
    def icmp_method(self) -> str | None:
        """The ICMP socket kind in use (C{datagram}, C{raw}), or C{None}: not opened yet or TCP instead."""
        return self._echo.kind if isinstance(self._echo, EchoSocket) else None

    def _endpoint(self, host: str) -> IStreamClientEndpoint:
        """
        Where the TCP probe connects: C{host}'s SSH port. An address is
        connected to directly: a name resolution per probe (a thread-pool
        round trip, even for an address) was most of a wave's probing cost.
        """
        timeout = self._config.tcp_timeout
        if isIPAddress(host):
            return TCP4ClientEndpoint(self._reactor, host, self._ssh_port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self._reactor, host, self._ssh_port, timeout=timeout)
        return HostnameEndpoint(self._reactor, host, self._ssh_port, timeout=timeout)

    async def _tcp(self, host: str) -> bool:
        """
        Whether a connection to C{host}'s SSH port is made within
        C{tcp_timeout}.

        @raise LocalProbeError: the attempt failed for a local reason.
        """
        try:
            endpoint = self._endpoint(host)
            attempt = endpoint.connect(_CloserFactory())
            if isinstance(endpoint, HostnameEndpoint):
                await within(self._reactor, self._config.tcp_timeout + 1, attempt, f"tcp probe of {host}")
            else:
                # An address: the connector's own timeout (tcp_timeout) bounds the attempt.
                await attempt
        except CancelledError:
            raise
        except Exception as error:
            number = local_errno(error)
            if number is not None:
                raise LocalProbeError(f"tcp probe of {host}: {os.strerror(number)}") from error
            return False
        return True

    def _echo_socket(self) -> EchoSocket | None:
        """
        The prober's ICMP socket, opened at the first ICMP probe (and again
        after one is lost); C{None}: probe over TCP.

        @raise LocalProbeError: it cannot be opened for a local reason now.
        """
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
                self._echo = EchoSocket(self._reactor, sock, kind, self._ident, on_lost=self._echo_lost)
                self._log.info(
                    "ICMP probes in process on a {kind} ICMP socket: {why}", kind=kind, why=why, probe_method=kind
                )
        return self._echo if isinstance(self._echo, EchoSocket) else None

    def _echo_lost(self, echo: EchoSocket) -> None:
        """The ICMP socket was lost (and closed): the next probe opens a new one."""
        if self._echo is echo:
            self._echo = None

    async def _icmp(self, host: str) -> bool:
        """
        Whether C{host} answers ICMP echo requests within C{ping_deadline}
        (name resolution included): one goes out every C{interval}, closer
        together when C{ping_count} of them would not fit in the deadline.
        """
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
        spacing = min(self._config.interval, deadline / self._config.ping_count)
        return await echo.ping(address, left, spacing)

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
        self._note_tcp_host(host)
        return ""

    def _note_tcp_host(self, host: str) -> None:
        """Remember (a bounded number of) hosts probed over TCP for want of IPv4, logging each once."""
        if host in self._tcp_hosts:
            self._tcp_hosts.move_to_end(host)
            return
        self._tcp_hosts[host] = None
        while len(self._tcp_hosts) > _TCP_HOSTS_KEPT:
            self._tcp_hosts.popitem(last=False)
        self._log.info("{host} has no IPv4 address: probed over TCP (ICMP probes are IPv4 only)", host=host)

    def _probe_bound(self) -> float:
        """The most a probe may take in the loop before it counts as "not alive"."""
        if self._config.method == "tcp":
            return self._config.tcp_timeout + 2
        return max(self._config.ping_deadline, self._config.tcp_timeout) + 2

    def _per_host(self, host: str) -> int:
        """
        How many probes of C{host} the loop may have out at once: over TCP
        one more each tick while older connection attempts still hang, so a
        machine that answers again is seen within a tick; over ICMP one,
        which sends a request every C{interval} itself.
        """
        if self._config.method == "tcp" or self._echo is False or host in self._tcp_hosts:
            return math.ceil(self._config.tcp_timeout / self._config.interval) + 1
        return 1

    # --- waiting: one loop for every waiter

    async def wait_for(self, host: str, up: bool, limit: float) -> bool:
        """
        Wait until C{host} is up (or down); False if C{limit} seconds pass
        first. The loop probes it every C{interval} (at once when no one
        was waiting on it yet); cancelling the wait leaves the loop. The
        action's work slot is given back for the wait, unless the verdict
        is there at once.

        @raise ProbeError: the probe cannot be run.
        """
        if self._closed:
            raise ProbeError("the prober is closed")
        verdict = self._loop.wait(host, up, limit)
        if verdict.called:
            return await verdict
        async with waiting():
            return await verdict

    async def wait_for_reboot(self, host: str, progress: Callable[[str], None] | None = None) -> RebootWait:
        """
        Wait, bounded, for C{host} to go down and then to come back, as one
        wait for the action's work slot.

        A machine that never goes down is reported as such; whether it
        rebooted too fast to be seen is for the caller to decide.
        """
        started = self._reactor.seconds()
        async with waiting():
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
        return self._loop.watched

    async def close(self) -> None:
        """
        Stop the loop and close the ICMP socket; the prober probes no more.
        A context is closed once no action uses it, so no one should be
        waiting; any waiter left is failed (L{ProbeError}) rather than left
        hanging.
        """
        self._closed = True
        self._loop.close()
        if isinstance(self._echo, EchoSocket):
            self._echo.close()
        self._echo = None
        self._tcp_hosts.clear()


__all__ = ["Prober", "RebootWait"]
