"""
SSH client: run commands on a machine over an exec channel (twisted.conch).

Actions use it to read uptime, tail a buildbot log and ask a machine to
reboot. Logins come from the credentials file: for each user, its private
keys (publickey authentication) and then its passwords, tried in order on one
connection, like the 2015 client's password list; the login that worked last
on a host is tried first next time. Keys are read once, when the client is
made, and no key from C{~/.ssh} or an ssh-agent is ever used.

Host keys are checked per the configured policy (C{strict}, trust on first
use, or C{off}) against the verified known_hosts file and, for trust on
first use, the keys recorded beside it (L{slaveapi.clients.ssh_hostkeys}).
A password is only ever offered to a host whose key is verified, that is in
known_hosts, where only an operator puts keys: under C{strict} nothing at
all goes to another host; under C{tofu} only keys do, for good. No login
outcome ever makes a key verified: a server may answer "accepted" to our
key without checking any signature, so a key login proves nothing about
the server. At most C{per_host} sessions to one host are open at once.

Everything is bounded: connecting and logging in by C{connect_timeout}, each
command by its own timeout. Failures are L{SSHError} subclasses whose
one-line messages name the host and port and never a password or key. A connection
that drops after a command was sent is not an error: the result has
C{exit_code=None}, which is what asking a machine to reboot looks like.

Built directly on C{twisted.conch.ssh} rather than
C{SSHCommandClientEndpoint}, because the endpoint discards stderr, cannot
tell exit status 0 from a dropped connection, tries one password per
connection and closes its connection after the first command. Public key
logins use C{rsa-sha2-256}/C{-512} signatures for RSA keys when the server
lists them (RFC 8332; OpenSSH refuses C{ssh-rsa} ones by default), which
conch's stock user-auth client does not.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Mapping

from twisted.conch.ssh import common
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import EXTENDED_DATA_STDERR, SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import (
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    SSHClientTransport,
)
from twisted.conch.ssh.userauth import MSG_USERAUTH_REQUEST, SSHUserAuthClient
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.defer import TimeoutError as WaitTimedOut
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi.clients.ssh_hostkeys import (
    CHANGED,
    UNKNOWN,
    VERIFIED,
    HostKeyStore,
    describe_key,
    known_hosts_name,
)
from slaveapi.config import Secret, SSHConfig, load_ssh_key

# Collected output per stream beyond this is dropped: results are meant for
# uptime lines and log tails, not bulk transfers.
_MAX_OUTPUT = 8 * 1024 * 1024

# How long close() waits for the TCP connection to go before aborting it.
_CLOSE_GRACE = 5.0

_log = Logger(namespace="slaveapi.clients.ssh")


class SSHError(Exception):
    """Talking to a host over SSH failed; the message is one line naming host and port."""


class SSHConnectionRefused(SSHError):
    """Nothing listens on the host's SSH port (the TCP connection was refused)."""


class SSHAuthenticationFailed(SSHError):
    """Every configured user, key and password was rejected."""


class SSHTimeout(SSHError):
    """Logging in or a command took longer than allowed."""


class SSHHostKeyMismatch(SSHError):
    """The host's key differs from the recorded one, or (strict) none is recorded."""


class SSHHostKeyNotVerified(SSHHostKeyMismatch):
    """
    The host's key is not verified (not in known_hosts), so no password is
    offered to it: under C{strict} nothing is, under C{tofu} only keys.
    """


class SSHBusy(SSHError):
    """No SSH session to the host came free in time (C{[ssh] per_host} are open)."""


class SSHUnreachable(SSHError):
    """The host cannot be reached: its name does not resolve, no route, or no answer at all."""


@dataclass(frozen=True)
class CommandResult:
    """
    What a remote command did.

    @ivar exit_code: its exit status; C{None} when none arrived (the
        connection dropped, e.g. because the machine went down for a reboot,
        or the command was killed by a signal).
    @ivar stdout: its standard output, decoded as UTF-8 (invalid bytes replaced).
    @ivar stderr: its standard error, decoded likewise.
    """

    exit_code: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited with status 0."""
        return self.exit_code == 0


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


_ENROL_HINT = "enrol it with 'python -m slaveapi.hostkeys scan --config <slaveapi.ini> --write'"


class _HostKeys:
    """
    The host key policy, applied against the verified known_hosts file and
    the keys recorded on first use beside it (L{HostKeyStore}).

    Checking and recording a new key happen in one synchronous call (the
    key is pinned in memory at once), so concurrent connections to new
    hosts cannot interleave between the check and the record. The file is
    written afterwards, in a worker thread (with a reactor), never on the
    reactor: the check cannot wait for it, since conch's client reads on
    after the host key (a server's next packets come under the new keys).

    @param reactor: writes go to its thread pool; without one, at once.
    @param store: the store to use (the previous client's, on a reload, so
        that one process has one writer per file); default a new one on C{path}.
    """

    def __init__(self, policy: str, path: str, reactor: Any = None, store: HostKeyStore | None = None) -> None:
        if policy not in ("tofu", "strict", "off"):
            raise ValueError(f"unknown host key policy {policy!r}")
        self._policy = policy
        self._store = store if store is not None and store.path == path else HostKeyStore(path, reactor)
        if policy != "off":
            self._store.create()

    @property
    def store(self) -> HostKeyStore:
        """The files the keys are recorded in."""
        return self._store

    @property
    def path(self) -> str:
        """The verified known_hosts file."""
        return self._store.path

    def forget(self, host: str, port: int) -> bool:
        """
        Drop the keys recorded for C{host}:C{port} (trust on first use only),
        so the next machine to get that address is trusted afresh.
        """
        if self._policy != "tofu":
            return False
        dropped, written = self._store.forget(known_hosts_name(host, port))
        written.addErrback(self._not_written, host, port, "cannot drop its recorded host key")
        if not dropped:
            return False
        _log.info("ssh {host}:{port}: forgot its recorded host key", host=host, port=port)
        return True

    @staticmethod
    def _not_written(failure: Failure, host: str, port: int, what: str) -> None:
        """Log that a change to the host key files could not be written (it is reported, not raised)."""
        error = failure.value
        reason = (error.strerror if isinstance(error, OSError) else None) or _one_line(str(error)) or type(error).__name__
        _log.error("ssh {host}:{port}: {what}: {reason}", host=host, port=port, what=what, reason=reason)

    def check(self, host: str, port: int, key: Key) -> bool:
        """
        Accept C{key} for C{host}:C{port}, or raise L{SSHHostKeyMismatch}.

        @return: whether the key is verified (in known_hosts), so that
            passwords may be offered to the host. Under C{tofu} an unknown
            key is recorded and accepted unverified: only key logins may
            follow, now and later. It is pinned at once and written to
            disk in the background; a write that fails is logged, and the
            key recorded again on the next connection.

        Unlike C{KnownHostsFile.hasHostKey}, a recorded key of another type
        counts as a mismatch, so that a server cannot dodge the check by
        offering a different key type.
        """
        if self._policy == "off":
            return True
        name = known_hosts_name(host, port)
        verdict = self._store.judge(name, key, first_use=self._policy == "tofu")
        described = describe_key(key)
        if verdict.status == CHANGED:
            _log.error(
                "ssh {host}:{port}: host key {key} does not match {path}",
                host=host,
                port=port,
                key=described,
                path=verdict.path,
            )
            raise SSHHostKeyMismatch(
                f"ssh {host}:{port}: host key changed ({described} does not match the key recorded in {verdict.path})"
            )
        if verdict.status == VERIFIED:
            return True
        if self._policy == "strict":
            raise SSHHostKeyNotVerified(
                f"ssh {host}:{port}: host key not verified ({described} is not in {self.path}"
                f" and host_keys is strict); check its fingerprint and {_ENROL_HINT}"
            )
        if verdict.status == UNKNOWN:
            _log.info(
                "ssh {host}:{port}: recorded host key {key} on first use (not verified: key logins only)",
                host=host,
                port=port,
                key=described,
            )
            recorded = self._store.record_unverified(name, key)
            recorded.addErrback(self._not_written, host, port, f"cannot record its host key {described}")
        return False

    def not_verified(self, host: str, port: int, key: Key) -> SSHHostKeyNotVerified:
        """The error for a host whose key is not verified and that took none of our keys."""
        return SSHHostKeyNotVerified(
            f"ssh {host}:{port}: host key not verified ({describe_key(key)} is not in {self.path};"
            " a key recorded on first use only ever gets key logins: a server can accept any key"
            " without our signature being checked, so a key login proves nothing about the server),"
            " so no password was offered; give the user a key in the credentials' ssh_keys,"
            f" or check the fingerprint and {_ENROL_HINT}"
        )


@dataclass(frozen=True)
class _Login:
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


class _Rejected(Exception):
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
        self, keys: int, passwords: int, untried: list[_Login], exhausted: bool, methods: frozenset[str]
    ) -> None:
        super().__init__(keys, passwords)
        self.keys = keys
        self.passwords = passwords
        self.untried = untried
        self.exhausted = exhausted
        self.methods = methods


def _connect_error(host: str, port: int, reason: Failure) -> SSHError:
    """Map a failure to open the TCP connection to an L{SSHError}."""
    where = f"ssh {host}:{port}"
    value = reason.value
    if isinstance(value, net_error.ConnectionRefusedError):
        return SSHConnectionRefused(f"{where}: connection refused")
    if isinstance(value, net_error.DNSLookupError):
        return SSHUnreachable(f"{where}: host name does not resolve")
    if isinstance(value, (net_error.NoRouteError, net_error.TCPTimedOutError, net_error.TimeoutError)):
        return SSHUnreachable(f"{where}: host unreachable ({type(value).__name__})")
    os_error = getattr(value, "osError", None)
    if os_error in (errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETUNREACH):
        return SSHUnreachable(f"{where}: host unreachable ({errno.errorcode[os_error]})")
    return SSHUnreachable(f"{where}: cannot connect ({type(value).__name__}: {_one_line(str(value))})")


class _Link:
    """
    One TCP connection to a host, from connecting until it is closed.

    It logs in as one user, trying that user's keys and passwords in turn on
    this connection. C{ready} fires with the authenticated L{_Connection}, or
    fails with an L{SSHError}, or with L{_Rejected} when the logins ran out or
    the server cut the connection after some were rejected (the caller then
    tries the rest on a new connection).
    """

    def __init__(
        self,
        reactor: Any,
        host_keys: _HostKeys,
        host: str,
        port: int,
        user: str,
        logins: list[_Login],
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
        self.phase = "connecting"  # -> securing -> authenticating -> connected -> closed
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
        self.transport: _ClientTransport | None = None
        self.connection: _Connection | None = None
        self.closed: Deferred[None] = Deferred()
        self.ready: Deferred[_Connection] = Deferred(self._cancel)
        self._connecting: Deferred[Any] | None = None
        self._timer: Any = None
        self._cancelled = False

    def start(self, remaining: float) -> Deferred[_Connection]:
        """Connect and log in, giving up after C{remaining} seconds."""
        # Our own timer bounds the whole login; the endpoint's only the TCP part.
        endpoint: Any
        if isIPAddress(self.host):
            endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=remaining + 1)
        elif isIPv6Address(self.host):
            endpoint = TCP6ClientEndpoint(self.reactor, self.host, self.port, timeout=remaining + 1)
        else:
            # Resolves the name without blocking; tries IPv6 and IPv4 addresses.
            endpoint = HostnameEndpoint(self.reactor, self.host, self.port, timeout=remaining + 1)
        self._timer = self.reactor.callLater(remaining, self._time_out, remaining)
        self._connecting = connectProtocol(endpoint, _ClientTransport(self))
        self._connecting.addErrback(self._connect_failed)
        return self.ready

    def _settle(self, outcome: _Connection | Exception) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
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
            self.transport.transport.abortConnection()

    def _cancel(self, ready: Deferred[_Connection]) -> None:
        self._cancelled = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._abort()

    def _time_out(self, seconds: float) -> None:
        if self.phase == "connecting" and self.first:
            error: SSHError = SSHUnreachable(f"{self.label}: host unreachable (no answer within {seconds:g}s)")
        else:
            error = SSHTimeout(f"{self.label}: not logged in within the connect timeout")
        self._settle(error)
        self._abort()

    def _connect_failed(self, reason: Failure) -> None:
        if self._cancelled or self.ready.called:
            return None
        self._settle(_connect_error(self.host, self.port, reason))
        return None

    # Events from the transport, the user-auth service and the connection.

    def connection_made(self, transport: _ClientTransport) -> None:
        self.transport = transport
        self.phase = "securing"

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
                f"{self.label}: host key not usable ({type(error).__name__}: {_one_line(str(error))})"
            )
            return fail(self.host_key_error)
        return succeed(True)

    def secured(self, transport: _ClientTransport) -> None:
        self.phase = "authenticating"
        if not self.host_verified:
            # Only keys may go to a host whose key is not verified: a key
            # login gives the server a signature over this session only, a
            # password gives it the secret itself.
            self.untried = [login for login in self.untried if login.key is not None]
            if not self.untried:
                self._settle(self._rejected(exhausted=True))
                transport.loseConnection()
                return
        self.connection = _Connection(self)
        transport.requestService(_LoginAuth(self.user.encode("utf-8"), self.connection, self))

    def _take(self, login: _Login) -> None:
        self.untried.remove(login)
        self.accepted_index = login.index

    def next_key(self, server_takes_passwords: bool) -> _Login | None:
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

    def _rejected(self, exhausted: bool) -> _Rejected:
        return _Rejected(
            self.tried_keys,
            self.tried_passwords,
            [] if exhausted else list(self.untried),
            exhausted,
            frozenset(self.methods),
        )

    def authenticated(self, connection: _Connection) -> None:
        # Whatever the login, the host key's trust stays as it was: a server
        # can "accept" a key without checking our signature.
        self.phase = "connected"
        _log.debug(
            "ssh {host}:{port}: logged in as {user}",
            host=self.host,
            port=self.port,
            user=self.user,
        )
        self._settle(connection)

    def lost(self, reason: Failure) -> None:
        phase, self.phase = self.phase, "closed"
        if not self.closed.called:
            self.closed.callback(None)
        if phase == "connected" or self._cancelled or self.ready.called:
            return
        detail = f" ({_one_line(self.server_said)})" if self.server_said else ""
        outcome: Exception
        if self.host_key_error is not None:
            outcome = self.host_key_error
        elif phase == "authenticating":
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


class _ClientTransport(SSHClientTransport):
    """The SSH transport of one L{_Link}: host key check, then key and password logins."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    def connectionMade(self) -> None:
        self._link.connection_made(self)
        super().connectionMade()

    def verifyHostKey(self, pubKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        return self._link.verify_host_key(pubKey)

    def connectionSecure(self) -> None:
        self._link.secured(self)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        text = description.decode("utf-8", errors="replace")
        self._link.server_said = text
        _log.debug(
            "ssh {host}:{port}: server disconnected: {description}",
            host=self._link.host,
            port=self._link.port,
            description=_one_line(text),
        )

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._link.we_disconnected is None:
            self._link.we_disconnected = reason
        super().sendDisconnect(reason, desc)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._link.lost(reason or Failure(net_error.ConnectionDone()))


class _LoginAuth(SSHUserAuthClient):
    """
    Publickey and password authentication with the logins the L{_Link} hands out in turn.

    The publickey method is our own rather than conch's, to sign with
    C{rsa-sha2-*} for RSA keys when the server lists them in
    C{server-sig-algs}.
    """

    preferredOrder = [b"publickey", b"password"]

    def __init__(self, user: bytes, instance: SSHConnection, link: _Link) -> None:
        super().__init__(user, instance)
        self._link = link
        self._server_methods: frozenset[bytes] = frozenset()
        self._key: Key | None = None
        self._algorithm = b""

    def tryAuth(self, kind: bytes) -> Any:
        if kind not in (b"publickey", b"password"):
            return None
        return super().tryAuth(kind)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        methods, _ = getNS(packet)
        self._server_methods = frozenset(methods.split(b","))
        return super().ssh_USERAUTH_FAILURE(packet)

    def _signature_algorithm(self, key: Key) -> bytes:
        if key.type() == "RSA":
            transport: Any = self.transport
            extensions = getattr(transport, "peerExtensions", {}) or {}
            offered = extensions.get(b"server-sig-algs", b"").split(b",")
            for algorithm in (b"rsa-sha2-512", b"rsa-sha2-256"):
                if algorithm in offered:
                    return algorithm
        return key.sshType()

    def auth_publickey(self) -> bool:  # type: ignore[override]
        login = self._link.next_key(b"password" in self._server_methods)
        if login is None or login.key is None:
            return False
        self._key = login.key
        self._algorithm = self._signature_algorithm(login.key)
        # Ask first whether the server would take this key (no signature yet).
        self.askForAuth(b"publickey", b"\x00" + NS(self._algorithm) + NS(login.key.public().blob()))
        return True

    def ssh_USERAUTH_PK_OK_publickey(self, packet: bytes) -> None:
        key = self._key
        if key is None:
            self.askForAuth(b"none", b"")
            return
        transport: Any = self.transport
        public = NS(self._algorithm) + NS(key.public().blob())
        signed = (
            NS(transport.sessionID)
            + bytes((MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + public
        )
        signature = key.sign(signed, signatureType=self._algorithm)
        self.askForAuth(b"publickey", b"\x01" + public + NS(signature))

    def getPublicKey(self) -> None:
        return None

    def getPassword(self, prompt: bytes | None = None) -> Deferred[bytes] | None:
        password = self._link.next_password()
        return None if password is None else succeed(password)

    def ssh_USERAUTH_PK_OK_password(self, packet: bytes) -> None:
        # The server accepted the password but wants it changed: never do
        # that unattended; count it as rejected and go on.
        _log.warn(
            "ssh {host}:{port}: password for {user} has expired",
            host=self._link.host,
            port=self._link.port,
            user=self._link.user,
        )
        self.askForAuth(b"none", b"")


class _Connection(SSHConnection):
    """The authenticated connection service of one L{_Link}."""

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self.link = link

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.link.authenticated(self)


class _ExecChannel(SSHChannel):
    """
    A session channel running one command with C{exec}.

    C{done} fires with the L{CommandResult} when the channel closes (for
    whatever reason, once the exec request was sent), or fails with an
    L{SSHError} when the command could not be started.
    """

    name = b"session"

    def __init__(self, command: bytes, connection: _Connection, label: str) -> None:
        super().__init__(conn=connection)
        self._command = command
        self._label = label
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._exit_code: int | None = None
        self._refused = False
        self.done: Deferred[CommandResult] = Deferred(lambda _: self.stop())

    def _finish(self, outcome: CommandResult | SSHError) -> None:
        if self.done.called:
            return
        if isinstance(outcome, SSHError):
            self.done.errback(Failure(outcome))
        else:
            self.done.callback(outcome)

    def stop(self) -> None:
        """Kill the command if the server allows, and close the channel."""
        if self.localClosed or self.id is None or self.conn is None:
            return
        if self in self.conn.channelsToRemoteChannel:
            self.conn.sendRequest(self, b"signal", common.NS(b"KILL"))
            self.loseConnection()

    def openFailed(self, reason: Any) -> None:
        self._finish(SSHError(f"{self._label}: cannot open a session channel ({_one_line(str(reason))})"))

    def channelOpen(self, specificData: bytes) -> None:
        assert self.conn is not None
        request = self.conn.sendRequest(self, b"exec", common.NS(self._command), wantReply=True)
        if request is not None:
            request.addErrback(self._exec_failed)

    def _exec_failed(self, reason: Failure) -> None:
        if self.localClosed and self.remoteClosed:
            # The channel is going away (e.g. the connection dropped);
            # closed() reports what we have.
            return None
        self._refused = True
        self.loseConnection()
        return None

    def dataReceived(self, data: bytes) -> None:
        if len(self._stdout) < _MAX_OUTPUT:
            self._stdout += data[: _MAX_OUTPUT - len(self._stdout)]

    def extReceived(self, dataType: int, data: bytes) -> None:
        if dataType == EXTENDED_DATA_STDERR and len(self._stderr) < _MAX_OUTPUT:
            self._stderr += data[: _MAX_OUTPUT - len(self._stderr)]

    def request_exit_status(self, data: bytes) -> int:
        (self._exit_code,) = struct.unpack(">L", data[:4])
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        signal_name = common.getNS(data)[0].decode("ascii", errors="replace")
        _log.info("{label}: command killed by signal {signal}", label=self._label, signal=signal_name)
        return 1

    def eofReceived(self) -> None:
        pass

    def closeReceived(self) -> None:
        self.loseConnection()

    def closed(self) -> None:
        if self._refused:
            self._finish(SSHError(f"{self._label}: the server refused to run the command"))
            return
        self._finish(
            CommandResult(
                exit_code=self._exit_code,
                stdout=self._stdout.decode("utf-8", errors="replace"),
                stderr=self._stderr.decode("utf-8", errors="replace"),
            )
        )


class SSHSession:
    """
    One authenticated SSH connection, for running several commands of one action.

    Get one from L{SSHClient.session}; close it with L{close}, or use it as
    C{async with await client.session(host) as session:}.
    """

    def __init__(self, reactor: Any, link: _Link, command_timeout: float) -> None:
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
        if link.phase != "connected" or connection is None:
            raise SSHError(f"{link.label}: connection closed")
        limit = timeout or self._command_timeout
        channel = _ExecChannel(command.encode("utf-8"), connection, link.label)

        def time_out() -> None:
            # Stop first: failing `done` resumes our caller at once, and
            # run() then disconnects.
            channel.stop()
            channel._finish(SSHTimeout(f"{link.label}: command did not finish within {limit:g}s"))

        timer = self._reactor.callLater(limit, time_out)
        try:
            connection.openChannel(channel)
            result = await channel.done
        finally:
            if timer.active():
                timer.cancel()
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
        link = self._link
        if link.closed.called:
            return succeed(None)
        done: Deferred[None] = Deferred()
        guard = None
        transport = link.transport
        if transport is not None and transport.transport is not None:
            # A clean SSH disconnect; abort if the TCP close hangs.
            guard = self._reactor.callLater(_CLOSE_GRACE, transport.transport.abortConnection)
            transport.loseConnection()

        def closed(_: object) -> None:
            if guard is not None and guard.active():
                guard.cancel()
            if not done.called:
                done.callback(None)

        link.closed.addBoth(closed)
        return done

    async def __aenter__(self) -> SSHSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class _SessionSlots:
    """
    At most C{per_host} sessions to one host at once: a semaphore per host,
    made when first needed and dropped again when the host has none open.
    Hosts are told apart by name as given, lower-cased, without a final dot.
    """

    def __init__(self, reactor: Any, per_host: int) -> None:
        self._reactor = reactor
        self.per_host = per_host
        self._semaphores: dict[str, DeferredSemaphore] = {}

    async def acquire(self, host: str, timeout: float, label: str) -> Callable[[], None]:
        """
        Wait, at most C{timeout} seconds, for a place among C{host}'s sessions.

        @return: the function that gives the place back (calling it again does nothing).
        @raise SSHBusy: none came free in time.
        """
        key = host.lower().rstrip(".")
        semaphore = self._semaphores.get(key)
        if semaphore is None:
            semaphore = self._semaphores[key] = DeferredSemaphore(self.per_host)
        waiting = semaphore.acquire()
        waiting.addTimeout(timeout, self._reactor)
        try:
            await waiting
        except WaitTimedOut:
            self._drop_if_idle(key, semaphore)
            raise SSHBusy(
                f"{label}: no SSH session came free within {timeout:g}s"
                f" ({self.per_host} already open to this host, the [ssh] per_host limit)"
            ) from None
        except BaseException:
            self._drop_if_idle(key, semaphore)
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                semaphore.release()
                self._drop_if_idle(key, semaphore)

        return release

    def _drop_if_idle(self, key: str, semaphore: DeferredSemaphore) -> None:
        if semaphore.tokens == semaphore.limit and not semaphore.waiting and self._semaphores.get(key) is semaphore:
            del self._semaphores[key]


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
        self._logins: dict[str, tuple[_Login, ...]] = {}
        for user in [*logins, *(user for user in key_files if user not in logins)]:
            user_keys = [_Login(index, path, load_ssh_key(path)) for index, path in enumerate(key_files.get(user, ()))]
            passwords = [
                _Login(len(user_keys) + index, password=secret) for index, secret in enumerate(logins.get(user, ()))
            ]
            self._logins[user] = (*user_keys, *passwords)
        # On a reload, the previous client's store: one writer per file in the process.
        self._host_keys: _HostKeys = _HostKeys(
            config.host_keys,
            known_hosts_path,
            reactor,
            store=previous._host_keys.store if previous is not None else None,
        )
        self._slots: _SessionSlots
        if previous is not None and previous._slots.per_host == config.per_host:
            self._slots = previous._slots
        else:
            self._slots = _SessionSlots(reactor, config.per_host)
        # (host, port) -> (user, login index) that logged in last time.
        self._last_login: dict[tuple[str, int], tuple[str, int]] = {}

    def _plan(self, host: str, port: int) -> list[tuple[str, list[_Login]]]:
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

    async def session(self, host: str, *, port: int | None = None) -> SSHSession:
        """
        Connect to C{host} and log in: one connection for several commands.

        At most C{[ssh] per_host} sessions to one host are open at once; a
        session holds its place until its connection is closed.

        @raise SSHBusy: no place came free within C{connect_timeout}.
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
        release = await self._slots.acquire(host, self._config.connect_timeout, label)
        try:
            link = await self._log_in(host, port, label, plan)
        except BaseException:
            release()
            raise
        link.closed.addBoth(lambda _: release())
        return SSHSession(self._reactor, link, self._config.command_timeout)

    async def _log_in(self, host: str, port: int, label: str, plan: list[tuple[str, list[_Login]]]) -> _Link:
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
                link = _Link(self._reactor, self._host_keys, host, port, user, remaining, first)
                first = False
                try:
                    connection = await link.start(left)
                except _Rejected as rejection:
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
                assert connection is link.connection
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
        session = await self.session(host, port=port)
        try:
            return await session.run(command, timeout=timeout)
        finally:
            await session.close()
