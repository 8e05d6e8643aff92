"""
An in-memory SSH client: scripted logins and command answers, and the
machines of L{FakeHosts} that go down when told to reboot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from slaveapi.clients.ssh import CommandResult, SSHBusy, SSHError, SSHUnreachable
from slaveapi.interfaces import ISSHClient, ISSHSession
from slaveapi.testing._hosts import FakeHost, FakeHosts

#: What a command answers: a result, an error to raise, or a function of the host asked.
Answer = CommandResult | Exception | Callable[[str], CommandResult]

#: Commands that take the machine down (the connection drops: no exit status).
REBOOTING_COMMANDS = frozenset({"reboot", "sudo reboot", "shutdown -f -t 3 -r"})


@dataclass
class _Logins:
    """Outcomes of the next logins to one host (C{None}: logged in), then C{then} for every one after."""

    queued: list[Exception | None] = field(default_factory=list)
    then: Exception | None = None

    def next(self) -> Exception | None:
        return self.queued.pop(0) if self.queued else self.then


@implementer(ISSHSession)
class FakeSSHSession:
    """One session of L{FakeSSH}; every command is recorded in the client's C{commands}."""

    def __init__(self, client: FakeSSH, host: str) -> None:
        self._client = client
        self._host = host
        self.closed = False

    @property
    def host(self) -> str:
        """The host as the session was asked for."""
        return self._host

    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """The scripted answer to C{command} (see L{FakeSSH.answer})."""
        return self._client._run(self, command)

    def close(self) -> Deferred[None]:
        """Close it (once; later calls do nothing)."""
        if not self.closed:
            self.closed = True
            self._client.open_sessions -= 1
        return succeed(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


@implementer(ISSHClient)
class FakeSSH:
    """
    SSH to the machines of C{hosts}: a machine that is down (or unknown) is
    unreachable; one that is up lets us in unless its logins are scripted
    otherwise (L{script_logins}).

    Without a scripted answer (L{answer}), C{reboot}, C{sudo reboot} and
    C{shutdown -f -t 3 -r} take the machine down (the connection drops: no
    exit status), C{cat /proc/uptime} tells its uptime, and anything else
    is not found (exit 127).

    @ivar commands: C{(host, command)} for every command run.
    @ivar logins: every host a session was asked for, in order.
    @ivar open_sessions: sessions not closed yet.
    @ivar forgotten: hosts whose key L{forget_host} was asked to forget.
    @ivar busy: hosts whose SSH places are all taken: a session that will
        not wait for one fails with C{SSHBusy} (one that waits gets in).
    """

    def __init__(self, hosts: FakeHosts | None = None) -> None:
        self._hosts = hosts
        self._answers: dict[tuple[str | None, str], Answer] = {}
        self._logins: dict[str, _Logins] = {}
        self.commands: list[tuple[str, str]] = []
        self.logins: list[str] = []
        self.open_sessions = 0
        self.forgotten: list[str] = []
        self.busy: set[str] = set()

    def answer(self, command: str, answer: Answer, host: str | None = None) -> None:
        """Answer C{command} (run exactly so) with C{answer}, on C{host} or on every host."""
        self._answers[(host, command)] = answer

    def script_logins(self, host: str, *outcomes: Exception | None, then: Exception | None = None) -> None:
        """
        The next logins to C{host} end as C{outcomes} say, in order (C{None}:
        logged in; an error: raised), and every later one as C{then}.
        """
        self._logins[host] = _Logins(list(outcomes), then)

    async def session(self, host: str, *, port: int | None = None, wait: bool = True) -> FakeSSHSession:
        """
        A session to C{host}, or the error its state or script says; without
        C{wait}, C{SSHBusy} for a host in C{busy}.
        """
        if not wait and host in self.busy:
            raise SSHBusy(f"ssh {host}:{port or 22}: no SSH session free now")
        self.logins.append(host)
        scripted = self._logins.get(host)
        error = scripted.next() if scripted is not None else None
        if error is not None:
            raise error
        machine = self._machine(host)
        if self._hosts is not None and (machine is None or not machine.up):
            raise SSHUnreachable(f"ssh {host}:{port or 22}: no route to host")
        self.open_sessions += 1
        return FakeSSHSession(self, host)

    async def run(
        self, host: str, command: str, *, timeout: float | None = None, port: int | None = None
    ) -> CommandResult:
        """Log in, run C{command}, log out."""
        async with await self.session(host, port=port) as session:
            return await session.run(command, timeout=timeout)

    def forget_host(self, host: str, port: int | None = None) -> bool:
        """Record that C{host}'s key was to be forgotten."""
        self.forgotten.append(host)
        return True

    def _machine(self, host: str) -> FakeHost | None:
        return self._hosts.find(host) if self._hosts is not None else None

    def _run(self, session: FakeSSHSession, command: str) -> CommandResult:
        host = session.host
        if session.closed:
            raise SSHError(f"ssh {host}:22: connection closed")
        machine = self._machine(host)
        if self._hosts is not None and (machine is None or not machine.up):
            raise SSHError(f"ssh {host}:22: connection lost")
        self.commands.append((host, command))
        answer = self._answers.get((host, command), self._answers.get((None, command)))
        if answer is None:
            return self._default(machine, command)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, CommandResult):
            return answer
        return answer(host)

    def _default(self, machine: FakeHost | None, command: str) -> CommandResult:
        if command in REBOOTING_COMMANDS:
            if machine is not None and self._hosts is not None:
                self._hosts.go_down(machine)
            return CommandResult(None, "", "")
        if command == "cat /proc/uptime" and machine is not None and self._hosts is not None:
            return CommandResult(0, f"{self._hosts.uptime(machine):.2f} 1.00\n", "")
        return CommandResult(127, "", f"{command.split()[0] if command.split() else command}: command not found")
