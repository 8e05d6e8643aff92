"""
The public API of the SSH client: L{SSHClient}, which logs in to hosts, and
the L{SSHSession} it hands out, which runs commands on one connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from types import TracebackType
from typing import Any, Self, cast

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.clients._bounded import settled, within
from slaveapi.clients._errors import ClientTimeout
from slaveapi.clients.ssh._errors import SSHAuthenticationFailed, SSHError, SSHTimeout
from slaveapi.clients.ssh._hostkeys import HostKeyPolicy
from slaveapi.clients.ssh._limits import SessionSlots
from slaveapi.clients.ssh._link import Link, Login, Phase, Rejected
from slaveapi.clients.ssh._protocol import CommandResult, ExecChannel
from slaveapi.config import Secret, SSHConfig, load_ssh_key
from slaveapi.interfaces import ISSHClient, ISSHSession

# How long close() waits for the TCP connection to go before aborting it.
_CLOSE_GRACE = 5.0

_log = Logger(namespace="slaveapi.clients.ssh")


@implementer(ISSHSession)
class SSHSession:
    """
    One authenticated SSH connection, for running several commands of one action.

    Get one from L{SSHClient.session} and use it as
    C{async with await client.session(host) as session:}, which awaits
    L{close} on the way out.
    """

    def __init__(self, reactor: Any, link: Link, command_timeout: float) -> None:
        self._reactor = reactor
        self._link = link
        self._command_timeout = command_timeout

    @property
    def host(self) -> str:
        """The host as it was given to L{SSHClient.session}."""
        return self._link.host

    @property
    def port(self) -> int:
        """The port connected to."""
        return self._link.port

    @property
    def user(self) -> str:
        """The user logged in as."""
        return self._link.user

    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """
        Run C{command} (a shell command line) in a new exec channel.

        @param timeout: seconds the command may take; default the configured
            C{command_timeout}.
        @return: its exit status and output; C{exit_code} is C{None} when the
            connection dropped after the command was sent.
        @raise SSHTimeout: it ran longer than C{timeout} (it is killed where
            the server allows and its channel closed).
        @raise SSHError: the connection is closed, or the server would not run it.
        """
        link = self._link
        connection = link.connection
        if link.phase is not Phase.CONNECTED or connection is None:
            raise SSHError(f"{link.label}: connection closed")
        limit = timeout or self._command_timeout
        channel = ExecChannel(command.encode("utf-8"), connection, link.label)
        connection.openChannel(channel)
        result = await within(
            self._reactor,
            limit,
            channel.done,
            f"{link.label}: command",
            timeout_error=lambda: SSHTimeout(f"{link.label}: command did not finish within {limit:g}s"),
        )
        _log.debug(
            "{label}: command as {user} exited with {exit_code}",
            label=link.label,
            user=link.user,
            exit_code=result.exit_code,
        )
        return result

    def close(self) -> Deferred[None]:
        """
        Close the connection; the returned Deferred fires once it is closed.

        Safe to call more than once, and after the connection dropped.
        """
        if self._link.closed.called:
            return succeed(None)
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        link = self._link
        transport = link.transport
        if transport is None or transport.transport is None:
            await settled(link.closed)
            return
        transport.loseConnection()
        try:
            await within(self._reactor, _CLOSE_GRACE, settled(link.closed), f"{link.label}: close")
        except ClientTimeout:
            # The clean SSH disconnect hangs: drop the TCP connection.
            if transport.transport is not None:
                cast(ITCPTransport, transport.transport).abortConnection()
            await settled(link.closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


@implementer(ISSHClient)
class SSHClient:
    """
    Runs commands on hosts over SSH with key and password logins.

    @param reactor: the reactor to connect and time with.
    @param config: ports, timeouts and the host key policy.
    @param logins: user name to the passwords tried in order (the
        credentials file's C{ssh}); users are tried in this order too.
    @param known_hosts_path: the known_hosts file for the C{tofu} and
        C{strict} policies; created if missing.
    @param keys: user name to private key files (the credentials' C{ssh_keys}),
        offered in order before that user's passwords; users with keys but
        no passwords come after the users in C{logins}. The files are read
        here, once.
    @param previous: the client this one replaces on a reload: its sessions
        count against the same per-host limit.
    @raise slaveapi.config.ConfigError: a key file cannot be used (the
        message names the file, never its content).
    """

    def __init__(
        self,
        reactor: Any,
        config: SSHConfig,
        logins: Mapping[str, tuple[Secret, ...]],
        known_hosts_path: str,
        keys: Mapping[str, tuple[str, ...]] | None = None,
        previous: SSHClient | None = None,
    ) -> None:
        self._reactor = reactor
        self._config = config
        key_files = dict(keys or {})
        self._logins: dict[str, tuple[Login, ...]] = {}
        for user in [*logins, *(user for user in key_files if user not in logins)]:
            user_keys = [Login(index, path, load_ssh_key(path)) for index, path in enumerate(key_files.get(user, ()))]
            passwords = [
                Login(len(user_keys) + index, password=secret) for index, secret in enumerate(logins.get(user, ()))
            ]
            self._logins[user] = (*user_keys, *passwords)
        # On a reload, the previous client's store: one writer per file in the process.
        self._host_keys: HostKeyPolicy = HostKeyPolicy(
            config.host_keys,
            known_hosts_path,
            reactor,
            store=previous._host_keys.store if previous is not None else None,
        )
        self._slots: SessionSlots
        if previous is not None and previous._slots.per_host == config.per_host:
            self._slots = previous._slots
        else:
            self._slots = SessionSlots(reactor, config.per_host)
        # (host, port) -> (user, login index) that logged in last time.
        self._last_login: dict[tuple[str, int], tuple[str, int]] = {}

    def _plan(self, host: str, port: int) -> list[tuple[str, list[Login]]]:
        """Users and their logins in the order to try them on C{host}."""
        plan = [(user, list(logins)) for user, logins in self._logins.items() if logins]
        remembered = self._last_login.get((host, port))
        if remembered is not None:
            user, index = remembered
            for position, (name, logins) in enumerate(plan):
                if name == user:
                    logins.sort(key=lambda login: login.index != index)
                    plan.insert(0, plan.pop(position))
                    break
        return plan

    def host_keys_flushed(self) -> Deferred[None]:
        """
        Fires once every host key recorded or forgotten so far is on disk
        (or its write failed and was logged): the files are written in the
        background.
        """
        return self._host_keys.store.flushed()

    def forget_host(self, host: str, port: int | None = None) -> bool:
        """
        Forget the host key recorded for C{host} (an address or name) under
        trust on first use: its machine is gone (e.g. a terminated instance)
        and the address may come back with another machine's key.
        """
        return self._host_keys.forget(host, port or self._config.port)

    async def session(self, host: str, *, port: int | None = None, wait: bool = True) -> SSHSession:
        """
        Connect to C{host} and log in: one connection for several commands.

        At most C{[ssh] per_host} sessions to one host are open at once; a
        session holds its place until its connection is closed.

        @param wait: C{False}: only if a place to the host is free now; the
            caller never waits in the host's line (the health checks, which
            must not hold up actions).
        @raise SSHBusy: no place came free within C{connect_timeout} (without
            C{wait}: none was free at once).
        @raise SSHConnectionRefused: nothing listens on the port.
        @raise SSHUnreachable: the name does not resolve or the host does not answer.
        @raise SSHHostKeyMismatch: the host key fails the configured policy;
            L{SSHHostKeyNotVerified} when it is not verified and no key let us in.
        @raise SSHAuthenticationFailed: every login was rejected.
        @raise SSHTimeout: not logged in within C{connect_timeout} (after a place came free).
        @raise SSHError: anything else that stopped the login.
        """
        port = port or self._config.port
        label = f"ssh {host}:{port}"
        plan = self._plan(host, port)
        if not plan:
            raise SSHAuthenticationFailed(f"{label}: no SSH logins configured")
        release = await self._slots.acquire(host, self._config.connect_timeout, label, wait=wait)
        try:
            link = await self._log_in(host, port, label, plan)
        except BaseException:
            release()
            raise
        link.closed.addBoth(lambda _: release())
        return SSHSession(self._reactor, link, self._config.command_timeout)

    async def _log_in(self, host: str, port: int, label: str, plan: list[tuple[str, list[Login]]]) -> Link:
        """Try the users and their logins in turn, each user on connections of its own."""
        deadline = self._reactor.seconds() + self._config.connect_timeout
        first = True
        rejected_keys = rejected_passwords = 0
        # Which of our kinds of login the server let us try at all.
        usable = False
        # The host's key, once a connection found it not verified: passwords stay home.
        unverified_key: Key | None = None
        for user, logins in plan:
            remaining = logins
            while remaining:
                if unverified_key is not None:
                    remaining = [login for login in remaining if login.key is not None]
                    if not remaining:
                        break
                left = deadline - self._reactor.seconds()
                if left <= 0:
                    raise SSHTimeout(f"{label}: not logged in within {self._config.connect_timeout:g}s")
                link = Link(self._reactor, self._host_keys, host, port, user, remaining, first)
                first = False
                try:
                    connection = await within(
                        self._reactor, left, link.start(left), label, timeout_error=partial(link.timed_out, left)
                    )
                except Rejected as rejection:
                    if not link.host_verified and link.host_key is not None:
                        unverified_key = link.host_key
                    rejected_keys += rejection.keys
                    rejected_passwords += rejection.passwords
                    usable = usable or any(
                        (login.key is not None and "publickey" in rejection.methods)
                        or (login.password is not None and "password" in rejection.methods)
                        for login in logins
                    )
                    remaining = rejection.untried
                    _log.info(
                        "{label}: login as {user} rejected ({keys} keys, {count} passwords tried)",
                        label=label,
                        user=user,
                        keys=rejection.keys,
                        count=rejection.passwords,
                    )
                    continue
                assert connection is link.connection  # noqa: S101  (the link just made it)
                if link.accepted_index is not None:
                    self._last_login[(host, port)] = (user, link.accepted_index)
                return link
        if unverified_key is not None and any(login.password is not None for _, logins in plan for login in logins):
            raise self._host_keys.not_verified(host, port, unverified_key)
        if not usable:
            kinds = [
                kind
                for kind, present in (
                    ("publickey", any(login.key is not None for _, logins in plan for login in logins)),
                    ("password", any(login.password is not None for _, logins in plan for login in logins)),
                )
                if present
            ]
            raise SSHAuthenticationFailed(f"{label}: the server does not accept {' or '.join(kinds)} authentication")
        users = len(plan)
        tried = f"{rejected_passwords} password{'s' if rejected_passwords != 1 else ''}"
        if rejected_keys:
            tried = f"{rejected_keys} key{'s' if rejected_keys != 1 else ''}, {tried}"
        raise SSHAuthenticationFailed(
            f"{label}: every login was rejected ({users} user{'s' if users != 1 else ''}, {tried} tried)"
        )

    async def run(
        self, host: str, command: str, *, timeout: float | None = None, port: int | None = None
    ) -> CommandResult:
        """
        Connect, log in, run C{command} (a shell command line), disconnect.

        @param timeout: seconds the command may take; default the configured
            C{command_timeout}. Logging in is bounded by C{connect_timeout}.
        @return: exit status and output; C{exit_code} is C{None} when the
            connection dropped after the command was sent (e.g. a reboot).
        @raise SSHError: see L{session} and L{SSHSession.run}.
        """
        async with await self.session(host, port=port) as session:
            return await session.run(command, timeout=timeout)


