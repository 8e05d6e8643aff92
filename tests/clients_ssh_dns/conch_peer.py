"""
A conch SSH server for tests that must see what an SSH client does.

It records every authentication request (user and method), counts the
sessions (logged-in connections) and the commands open at once, and can
hold each command until the test lets it finish. Logins: a password and/or
one authorized public key (properly verified), or, for a rogue server, no
login at all, or any key at all once, without a signature (it answers
"accepted" to the client's first unsigned key query, as a server that checks
nothing can), and passwords only after that.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError, ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.protocol import Factory
from zope.interface import implementer


def new_key() -> keys.Key:
    """A throwaway Ed25519 private key."""
    return keys.Key(Ed25519PrivateKey.generate())


@dataclass
class PeerState:
    """What the server saw; shared by its connections."""

    attempts: list[tuple[str, str]] = field(default_factory=list)
    # Every password offered, and how many unsigned key queries were "accepted".
    passwords: list[bytes] = field(default_factory=list)
    unsigned_accepted: int = 0
    sessions: int = 0
    max_sessions: int = 0
    commands: int = 0
    max_commands: int = 0
    started: int = 0
    held: list[Callable[[], None]] = field(default_factory=list)
    _waiters: list[tuple[int, defer.Deferred[None]]] = field(default_factory=list)

    def methods(self) -> set[str]:
        """The authentication methods asked for, C{none} left out."""
        return {method for _, method in self.attempts if method != "none"}

    def command_started(self) -> None:
        self.started += 1
        self.commands += 1
        self.max_commands = max(self.max_commands, self.commands)
        ready = [waiter for waiter in self._waiters if waiter[0] <= self.started]
        self._waiters = [waiter for waiter in self._waiters if waiter[0] > self.started]
        for _, waiting in ready:
            waiting.callback(None)

    def commands_started(self, count: int) -> defer.Deferred[None]:
        """Fires once C{count} commands have started in all."""
        if self.started >= count:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, waiting))
        return waiting

    def release_all(self) -> None:
        """Let every held command finish."""
        held, self.held = self.held, []
        for finish in held:
            finish()


class ConchPeer:
    """
    One SSH server on a loopback address.

    @param password: the password it accepts for any user; C{None} for none.
    @param authorized: the public key it accepts for any user; C{None} for none.
    @param hold: commands wait for L{PeerState.release_all} before finishing.
    @param accept_any_key_once: answer "accepted" to the first key query,
        any key, no signature needed; refuse every key after that.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        host_key: keys.Key | None = None,
        password: str | None = None,
        authorized: keys.Key | None = None,
        hold: bool = False,
        accept_any_key_once: bool = False,
    ) -> None:
        self.reactor = reactor
        self.host_key = host_key or new_key()
        self.password = password.encode() if password is not None else None
        self.authorized = authorized.public() if authorized is not None else None
        self.hold = hold
        self.accept_any_key_once = accept_any_key_once
        self.state = PeerState()
        self._port: Any = None

    def listen(self, interface: str = "127.0.0.1") -> int:
        self._port = self.reactor.listenTCP(0, _PeerFactory(self), interface=interface)
        return int(self._port.getHost().port)

    def stop(self) -> defer.Deferred[None]:
        self.state.release_all()
        return defer.maybeDeferred(self._port.stopListening)

    def known_hosts_line(self, host: str, port: int) -> str:
        """The line filing this server's key under C{host}:C{port}."""
        name = host if port == 22 else f"[{host}]:{port}"
        return f"{name} {self.host_key.public().toString('openssh').decode()}\n"


class _Session(SSHChannel):
    name = b"session"

    def request_exec(self, data: bytes) -> int:
        command = getNS(data)[0].decode()
        peer: ConchPeer = cast(_Avatar, self.avatar).peer
        peer.state.command_started()

        def finish() -> None:
            peer.state.commands -= 1
            self.write(f"ran {command}\n".encode())
            self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
            self.conn.sendEOF(self)
            self.loseConnection()

        if peer.hold:
            peer.state.held.append(finish)
        else:
            peer.reactor.callLater(0, finish)
        return 1


class _Avatar(ConchUser):
    def __init__(self, peer: ConchPeer) -> None:
        super().__init__()
        self.peer = peer
        self.channelLookup[b"session"] = _Session


@implementer(IRealm)
class _Realm:
    def __init__(self, peer: ConchPeer) -> None:
        self._peer = peer

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        return IConchUser, _Avatar(self._peer), lambda: None


@implementer(ICredentialsChecker)
class _Checker:
    credentialInterfaces = (IUsernamePassword, ISSHPrivateKey)

    def __init__(self, peer: ConchPeer) -> None:
        self._peer = peer

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        peer = self._peer
        if IUsernamePassword.providedBy(credentials):
            peer.state.passwords.append(credentials.password)
            if peer.password is not None and credentials.password == peer.password:
                return defer.succeed(credentials.username)
            return defer.fail(UnauthorizedLogin("wrong password"))
        if peer.accept_any_key_once:
            if peer.state.unsigned_accepted == 0 and credentials.signature is None:
                peer.state.unsigned_accepted += 1
                return defer.succeed(credentials.username)
            return defer.fail(UnauthorizedLogin("key not authorized"))
        if peer.authorized is None or credentials.blob != peer.authorized.blob():
            return defer.fail(UnauthorizedLogin("key not authorized"))
        if credentials.signature is None:
            return defer.fail(ValidPublicKey())
        if not peer.authorized.verify(credentials.signature, credentials.sigData):
            return defer.fail(UnauthorizedLogin("bad signature"))
        return defer.succeed(credentials.username)


class _UserAuth(userauth.SSHUserAuthServer):
    passwordDelay = 0
    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        user, rest = getNS(packet)
        _service, rest = getNS(rest)
        method, _ = getNS(rest)
        self.transport.factory.peer.state.attempts.append((user.decode(), method.decode()))
        return super().ssh_USERAUTH_REQUEST(packet)


class _Connection(connection.SSHConnection):
    def serviceStarted(self) -> None:
        super().serviceStarted()
        state = self.transport.factory.peer.state
        state.sessions += 1
        state.max_sessions = max(state.max_sessions, state.sessions)

    def serviceStopped(self) -> None:
        super().serviceStopped()
        self.transport.factory.peer.state.sessions -= 1


class _PeerFactory(SSHFactory):
    services = {b"ssh-userauth": _UserAuth, b"ssh-connection": _Connection}
    noisy = False

    def __init__(self, peer: ConchPeer) -> None:
        self.peer = peer
        self.portal = Portal(_Realm(peer), [_Checker(peer)])
        self.publicKeys = {peer.host_key.sshType(): peer.host_key.public()}
        self.privateKeys = {peer.host_key.sshType(): peer.host_key}
        self.primes = None

    def buildProtocol(self, addr: Any) -> SSHServerTransport:
        transport = Factory.buildProtocol(self, addr)
        if transport is None:
            raise ConchError("no transport")
        transport.supportedPublicKeys = list(self.peer.host_key.supportedSignatureAlgorithms())
        transport.supportedKeyExchanges = [
            kex for kex in transport.supportedKeyExchanges if b"group-exchange" not in kex
        ]
        return transport
