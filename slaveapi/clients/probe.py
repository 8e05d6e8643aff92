"""
Liveness probes: is a machine up, and did a reboot take it down and bring it back?

Two kinds, chosen by C{[probes] method}: C{icmp} runs the system C{ping} as a
child process (count and deadline from config; the process is killed if it
overstays), C{tcp} connects to the machine's SSH port. The lab uses C{tcp}:
every loopback address answers ping.

L{Prober.wait_for_reboot} polls, every C{interval}, first for the machine to
go down (at most C{down_timeout}), then for it to come back (at most
C{up_timeout}).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from slaveapi.clients._bounded import poll_until, within
from slaveapi.clients._errors import ClientError, ClientTimeout
from slaveapi.config import ProbeConfig
from slaveapi.interfaces import IProber

#: Where the system ping usually lives; the first that exists is used.
_PING_PATHS = ("/usr/bin/ping", "/bin/ping", "/sbin/ping", "/usr/sbin/ping")


@dataclass(frozen=True)
class RebootWait:
    """What was seen while waiting for a reboot."""

    went_down: bool
    came_back: bool
    waited: float


class ProbeError(ClientError):
    """A probe could not be run at all (as opposed to a machine that does not answer it)."""


class _NotSeen(Exception):
    """The machine did not reach the state waited for in time."""


class _PingProtocol(ProcessProtocol):
    """C{ended} fires with ping's exit code once it is reaped."""

    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()

    def exit_code(self) -> Deferred[int]:
        """Fires as C{ended} does; cancelling it kills ping."""
        waiting: Deferred[int] = Deferred(self._kill)

        def follow(code: int) -> int:
            if not waiting.called:
                waiting.callback(code)
            return code

        self.ended.addCallback(follow)
        return waiting

    def _kill(self, _: Deferred[int]) -> None:
        # Already gone is fine: the point is that it is gone.
        with contextlib.suppress(Exception):
            cast(IProcessTransport, self.transport).signalProcess("KILL")

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.ended.callback(code if code is not None else -1)


class _Closer(Protocol):
    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


@implementer(IProber)
class Prober:
    """
    Answers "is it up?" by ICMP or TCP, and waits for reboots.

    @param ssh_port: the port the TCP probe connects to.
    @param ping_path: the ping program; by default the system's.
    """

    _log = Logger()

    def __init__(self, reactor: Any, config: ProbeConfig, ssh_port: int, ping_path: str | None = None) -> None:
        self._reactor = reactor
        self._config = config
        self._ssh_port = ssh_port
        self._ping_path = ping_path

    async def alive(self, host: str) -> bool:
        """Whether C{host} answers the configured probe now."""
        if self._config.method == "tcp":
            return await self._tcp(host)
        return await self._ping(host)

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

    async def _ping(self, host: str) -> bool:
        ping = self._ping_path or next((path for path in _PING_PATHS if os.path.exists(path)), None)
        if ping is None:
            raise ProbeError("no ping command found (install iputils-ping) or set [probes] method = tcp")
        protocol = _PingProtocol()
        deadline = self._config.ping_deadline
        args = [ping, "-n", "-q", "-c", str(self._config.ping_count), "-w", f"{deadline:g}", "--", host]
        self._reactor.spawnProcess(protocol, ping, args, env={"LC_ALL": "C"})
        # ping -w bounds itself; this is for a ping that does not.
        try:
            code = await within(self._reactor, deadline + 2, protocol.exit_code(), f"ping {host}")
        except ClientTimeout:
            self._log.warn("ping {host} overstayed its deadline; killing it", host=host)
            await protocol.ended
            return False
        return code == 0

    async def wait_for(self, host: str, up: bool, limit: float) -> bool:
        """
        Poll until C{host} is up (or down); False if C{limit} seconds pass first.

        @raise ProbeError: the probe cannot be run.
        """

        async def seen() -> bool:
            return await self.alive(host) == up

        what = f"wait for {host} to be {'up' if up else 'down'}"
        try:
            await poll_until(self._reactor, seen, self._config.interval, limit, what, timeout_error=_NotSeen)
        except _NotSeen:
            return False
        return True

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
