"""
The conch protocol pieces of one SSH connection: the client transport (host
key check), the user-auth client (key and password logins) and the
connection service, each reporting to its L{Link}; and the exec channel
that runs one command (L{ExecChannel}).

Public key logins use C{rsa-sha2-256}/C{-512} signatures for RSA keys when
the server lists them (RFC 8332; OpenSSH refuses C{ssh-rsa} ones by
default), which conch's stock user-auth client does not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh import common
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import EXTENDED_DATA_STDERR, SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.conch.ssh.userauth import MSG_USERAUTH_REQUEST, SSHUserAuthClient
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi._text import one_line
from slaveapi.clients.ssh._errors import SSHError

if TYPE_CHECKING:
    from slaveapi.clients.ssh._link import Link

# Collected output per stream beyond this is dropped: results are meant for
# uptime lines and log tails, not bulk transfers.
_MAX_OUTPUT = 8 * 1024 * 1024

_log = Logger(namespace="slaveapi.clients.ssh")


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


class ClientTransport(SSHClientTransport):
    """The SSH transport of one L{Link}: host key check, then key and password logins."""

    def __init__(self, link: Link) -> None:
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
            description=one_line(text),
        )

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._link.we_disconnected is None:
            self._link.we_disconnected = reason
        super().sendDisconnect(reason, desc)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._link.lost(reason or Failure(net_error.ConnectionDone()))


class LoginAuth(SSHUserAuthClient):
    """
    Publickey and password authentication with the logins the L{Link} hands out in turn.

    The publickey method is our own rather than conch's, to sign with
    C{rsa-sha2-*} for RSA keys when the server lists them in
    C{server-sig-algs}.
    """

    preferredOrder = [b"publickey", b"password"]

    def __init__(self, user: bytes, instance: SSHConnection, link: Link) -> None:
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
        own: bytes = key.sshType()
        return own

    def auth_publickey(self) -> bool:  # type: ignore[override]  # conch declares it returning a Deferred; we answer synchronously
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


class Connection(SSHConnection):
    """The authenticated connection service of one L{Link}."""

    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.link.authenticated(self)


class ExecChannel(SSHChannel):
    """
    A session channel running one command with C{exec}.

    C{done} fires with the L{CommandResult} when the channel closes (for
    whatever reason, once the exec request was sent), or fails with an
    L{SSHError} when the command could not be started.
    """

    name = b"session"

    def __init__(self, command: bytes, connection: Connection, label: str) -> None:
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
        channel_id: int | None = self.id  # conch sets it once the channel is open
        if self.localClosed or channel_id is None or self.conn is None:
            return
        if self in self.conn.channelsToRemoteChannel:
            self.conn.sendRequest(self, b"signal", common.NS(b"KILL"))
            self.loseConnection()

    def openFailed(self, reason: Any) -> None:
        self._finish(SSHError(f"{self._label}: cannot open a session channel ({one_line(str(reason))})"))

    def channelOpen(self, specificData: bytes) -> None:
        assert self.conn is not None  # noqa: S101  (conch opens channels on a connection)
        request = self.conn.sendRequest(self, b"exec", common.NS(self._command), wantReply=True)
        if request is not None:
            request.addErrback(self._exec_failed)

    def _exec_failed(self, reason: Failure) -> None:
        if self.localClosed and self.remoteClosed:
            # The channel is going away (e.g. the connection dropped);
            # closed() reports what we have.
            return
        self._refused = True
        self.loseConnection()
        return

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
