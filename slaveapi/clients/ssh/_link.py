"""
One TCP connection to a host and its login, as a state machine (L{Link}).

A link goes through the L{Phase}s in order: connecting (TCP), securing (key
exchange and the host key check), authenticating (trying one user's keys
and passwords in turn), connected, and closed, which it may reach from any
of them. The conch protocol objects of L{slaveapi.clients.ssh._protocol}
report their events to it; it decides what to offer next and what the
outcome of the login is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi._text import one_line
from slaveapi.clients.ssh._errors import (
    SSHError,
    SSHHostKeyMismatch,
    SSHTimeout,
    SSHUnreachable,
    connect_error,
)
from slaveapi.clients.ssh._hostkeys import HostKeyPolicy
from slaveapi.clients.ssh._protocol import ClientTransport, Connection, LoginAuth
from slaveapi.config import Secret

_log = Logger(namespace="slaveapi.clients.ssh")


class Phase(enum.Enum):
    """Where a L{Link} is, from connecting until closed."""

    CONNECTING = "connecting"
    SECURING = "securing"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class Login:
    """
    One way to log in as a user: a private key or a password.

    @ivar index: its place among the user's logins (keys first, then
        passwords), remembered per host when it works.
    @ivar key_file: where the key came from, for log lines; C{None} for a password.
    @ivar key: the private key; never shown in a repr.
    @ivar password: the password, for a password login.
    """

    index: int
    key_file: str | None = None
    key: Key | None = field(default=None, repr=False, compare=False)
    password: Secret | None = None


class Rejected(Exception):
    """
    Internal: the server rejected some logins of this user on one connection.

    @ivar keys: how many keys were rejected.
    @ivar passwords: how many passwords were rejected.
    @ivar untried: this user's logins not tried on that connection.
    @ivar exhausted: nothing of this user is worth trying on another connection.
    @ivar methods: the login methods the server let us try (C{"publickey"},
        C{"password"}).
    """

    def __init__(
        self, keys: int, passwords: int, untried: list[Login], exhausted: bool, methods: frozenset[str]
    ) -> None:
        super().__init__(keys, passwords)
        self.keys = keys
        self.passwords = passwords
        self.untried = untried
        self.exhausted = exhausted
        self.methods = methods


class Link:
    """
    One TCP connection to a host, from connecting until it is closed.

    It logs in as one user, trying that user's keys and passwords in turn on
    this connection. C{ready} fires with the authenticated L{Connection}, or
    fails with an L{SSHError}, or with L{Rejected} when the logins ran out or
    the server cut the connection after some were rejected (the caller then
    tries the rest on a new connection).
    """

    def __init__(
        self,
        reactor: Any,
        host_keys: HostKeyPolicy,
        host: str,
        port: int,
        user: str,
        logins: list[Login],
        first: bool,
    ) -> None:
        self.reactor = reactor
        self.host_keys = host_keys
        self.host = host
        self.port = port
        self.user = user
        self.untried = list(logins)
        self.first = first
        self.label = f"ssh {host}:{port}"
        self.phase = Phase.CONNECTING
        self.tried_keys = 0
        self.tried_passwords = 0
        self.accepted_index: int | None = None
        # Login methods the server let us try on this connection.
        self.methods: set[str] = set()
        self.host_key_error: SSHHostKeyMismatch | None = None
        # The host's key, and whether it is verified (passwords may go to it).
        self.host_key: Key | None = None
        self.host_verified = False
        self.we_disconnected: int | None = None
        self.server_said: str | None = None
        self.transport: ClientTransport | None = None
        self.connection: Connection | None = None
        self.closed: Deferred[None] = Deferred()
        self.ready: Deferred[Connection] = Deferred(self._cancel)
        self._connecting: Deferred[Any] | None = None
        self._cancelled_in: Phase | None = None
        self._cancelled = False

    def start(self, remaining: float) -> Deferred[Connection]:
        """
        Connect and log in. The caller bounds the whole login to C{remaining}
        seconds by cancelling the Deferred (see L{timed_out}); the TCP
        connection attempt is bounded to that too.
        """
        endpoint: Any
        if isIPAddress(self.host):
            endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=remaining + 1)
        elif isIPv6Address(self.host):
            endpoint = TCP6ClientEndpoint(self.reactor, self.host, self.port, timeout=remaining + 1)
        else:
            # Resolves the name without blocking; tries IPv6 and IPv4 addresses.
            endpoint = HostnameEndpoint(self.reactor, self.host, self.port, timeout=remaining + 1)
        self._connecting = connectProtocol(endpoint, ClientTransport(self))
        self._connecting.addErrback(self._connect_failed)
        return self.ready

    def _settle(self, outcome: Connection | Exception) -> None:
        if self._cancelled or self.ready.called:
            return
        if isinstance(outcome, Exception):
            self.ready.errback(Failure(outcome))
        else:
            self.ready.callback(outcome)

    def _abort(self) -> None:
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        if self.transport is not None and self.transport.transport is not None:
            cast(ITCPTransport, self.transport.transport).abortConnection()

    def _cancel(self, ready: Deferred[Connection]) -> None:
        self._cancelled = True
        self._cancelled_in = self.phase
        self._abort()

    def timed_out(self, seconds: float) -> SSHError:
        """
        Why a login cancelled after C{seconds} failed: the first connection
        to a host that never answered is L{SSHUnreachable}; any other is a
        L{SSHTimeout}.
        """
        if self._cancelled_in is Phase.CONNECTING and self.first:
            return SSHUnreachable(f"{self.label}: host unreachable (no answer within {seconds:g}s)")
        return SSHTimeout(f"{self.label}: not logged in within the connect timeout")

    def _connect_failed(self, reason: Failure) -> None:
        if self._cancelled or self.ready.called:
            return
        self._settle(connect_error(self.host, self.port, reason))
        return

    # Events from the transport, the user-auth service and the connection.

    def connection_made(self, transport: ClientTransport) -> None:
        self.transport = transport
        self.phase = Phase.SECURING

    def verify_host_key(self, blob: bytes) -> Deferred[bool]:
        # Decided at once: conch goes on reading the server's packets, which
        # after its NEWKEYS come under keys not set up until this fires.
        try:
            key = Key.fromString(blob)
            self.host_verified = self.host_keys.check(self.host, self.port, key)
            self.host_key = key
        except SSHHostKeyMismatch as mismatch:
            self.host_key_error = mismatch
            return fail(mismatch)
        except Exception as error:
            self.host_key_error = SSHHostKeyMismatch(
                f"{self.label}: host key not usable ({type(error).__name__}: {one_line(str(error))})"
            )
            return fail(self.host_key_error)
        return succeed(True)

    def secured(self, transport: ClientTransport) -> None:
        self.phase = Phase.AUTHENTICATING
        if not self.host_verified:
            # Only keys may go to a host whose key is not verified: a key
            # login gives the server a signature over this session only, a
            # password gives it the secret itself.
            self.untried = [login for login in self.untried if login.key is not None]
            if not self.untried:
                self._settle(self._rejected(exhausted=True))
                transport.loseConnection()
                return
        self.connection = Connection(self)
        transport.requestService(LoginAuth(self.user.encode("utf-8"), self.connection, self))

    def _take(self, login: Login) -> None:
        self.untried.remove(login)
        self.accepted_index = login.index

    def next_key(self, server_takes_passwords: bool) -> Login | None:
        """
        The next key to offer, or C{None} to go on to passwords.

        Logins go in order: while the next one is a password the server
        accepts, that password goes first (it is the one that worked last).
        """
        self.methods.add("publickey")
        if server_takes_passwords and self.untried and self.untried[0].key is None:
            return None
        login = next((login for login in self.untried if login.key is not None), None)
        if login is None:
            return None
        self._take(login)
        self.tried_keys += 1
        _log.debug(
            "ssh {host}:{port}: offering key {key_file} for {user}",
            host=self.host,
            port=self.port,
            user=self.user,
            key_file=login.key_file,
        )
        return login

    def next_password(self) -> bytes | None:
        self.methods.add("password")
        if not self.host_verified:
            return None
        login = next((login for login in self.untried if login.password is not None), None)
        if login is None or login.password is None:
            return None
        self._take(login)
        self.tried_passwords += 1
        _log.debug(
            "ssh {host}:{port}: trying password #{index} for {user}",
            host=self.host,
            port=self.port,
            user=self.user,
            index=login.index + 1,
        )
        return login.password.reveal().encode("utf-8")

    def _rejected(self, exhausted: bool) -> Rejected:
        return Rejected(
            self.tried_keys,
            self.tried_passwords,
            [] if exhausted else list(self.untried),
            exhausted,
            frozenset(self.methods),
        )

    def authenticated(self, connection: Connection) -> None:
        # Whatever the login, the host key's trust stays as it was: a server
        # can "accept" a key without checking our signature.
        self.phase = Phase.CONNECTED
        _log.debug(
            "ssh {host}:{port}: logged in as {user}",
            host=self.host,
            port=self.port,
            user=self.user,
        )
        self._settle(connection)

    def lost(self, reason: Failure) -> None:
        phase, self.phase = self.phase, Phase.CLOSED
        if not self.closed.called:
            self.closed.callback(None)
        if phase is Phase.CONNECTED or self._cancelled or self.ready.called:
            return
        detail = f" ({one_line(self.server_said)})" if self.server_said else ""
        outcome: Exception
        if self.host_key_error is not None:
            outcome = self.host_key_error
        elif phase is Phase.AUTHENTICATING:
            gave_up = self.we_disconnected == DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
            if gave_up or not self.untried:
                outcome = self._rejected(exhausted=True)
            elif self.tried_keys + self.tried_passwords > 0:
                # The server hung up after some rejections (MaxAuthTries):
                # the rest go on a new connection.
                outcome = self._rejected(exhausted=False)
            else:
                outcome = SSHError(f"{self.label}: connection closed during authentication{detail}")
        else:
            outcome = SSHError(f"{self.label}: connection closed before authentication{detail}")
        self._settle(outcome)
