"""
The lab's SSH servers: one conch server per simulated machine.

Each machine that is up listens on its own loopback address, all on one
port, so that SSH clients reach C{<fqdn>:<port>} as they would a real host.
Logins are by password for the user C{cltbld} (every login fails on a
machine whose SSH refuses logins); exec requests run through
L{slaveapi.lab.shell}. The reboot commands answer first, then take the
machine down through L{slaveapi.lab.power.PowerControl}; the listener closes
while the machine is down and opens again when it boots.

For tests looking behind the API: C{connections_made} counts the
connections each machine's server accepted, and L{LabSSHServer.hold} keeps
a machine's commands unanswered until L{LabSSHServer.release} (an action
that cannot finish before the test lets it).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import SSHServerTransport, SSHTransportBase
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.lab import shell
from slaveapi.lab.machines import SSH_NONE, SSH_REFUSE_LOGIN, SSH_USER, LabMachine
from slaveapi.lab.power import PowerControl

_EXTENDED_DATA_STDERR = 1
_LISTEN_ATTEMPTS = 5
_RELISTEN_DELAY = 0.5


def generate_host_key() -> keys.Key:
    """A throwaway Ed25519 host key (a millisecond to make)."""
    return keys.Key(Ed25519PrivateKey.generate())


class LabSSHServer:
    """
    The SSH servers of the whole fleet; follows machines going down and up.

    @param hosts: the machines that may run an SSH server.
    @param power: reboots requested by a shell command go through it.
    @param password: the password of C{cltbld} on every machine.
    @param clock: the wall clock commands see (uptime).
    @param shutdown_delay: seconds between answering a reboot command and
        the machine going down.
    @param password_delay: seconds a failed password is held back (OpenSSH
        and conch wait a while; the lab is quick by default).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        hosts: list[LabMachine],
        power: PowerControl,
        password: str,
        host_key: keys.Key,
        clock: Callable[[], float],
        shutdown_delay: float = 0.1,
        password_delay: float = 0.0,
    ) -> None:
        self.reactor = reactor
        self._hosts = [host for host in hosts if host.ssh != SSH_NONE]
        self.power = power
        self._password = password.encode("utf-8")
        self.host_key = host_key
        self.clock = clock
        self.shutdown_delay = shutdown_delay
        self.password_delay = password_delay
        self.port = 0
        self._listeners: dict[str, IListeningPort] = {}
        self._closing: dict[str, defer.Deferred[Any]] = {}
        self._connections: dict[str, set[SSHServerTransport]] = {}
        self._calls: set[IDelayedCall] = set()
        self._stopped = False
        #: Connections each machine's server accepted, by machine name.
        self.connections_made: dict[str, int] = {}
        #: Commands waiting on held machines (see L{hold}).
        self._held: dict[str, list[Callable[[], None]]] = {}

    def start(self) -> int:
        """
        Listen for every machine that is up; returns the shared port.

        The port is one the OS picks as free on the first address; if it is
        taken on another address, everything is closed and another is tried.
        """
        up = [host for host in self._hosts if host.up]
        for attempt in range(_LISTEN_ATTEMPTS):
            self.port = 0
            try:
                for host in up:
                    self._listen(host)
                    if not self.port:
                        self.port = cast(IPv4Address, self._listeners[host.name].getHost()).port
                return self.port
            except CannotListenError:
                for name in list(self._listeners):
                    self._listeners.pop(name).stopListening()
                if attempt == _LISTEN_ATTEMPTS - 1:
                    raise
        return self.port

    def stop(self) -> defer.Deferred[Any]:
        """Close every listener and connection; cancel pending reboots."""
        self._stopped = True
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        for transports in self._connections.values():
            for transport in list(transports):
                _drop(transport)
        stops: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(port.stopListening) for port in self._listeners.values()
        ]
        stops += list(self._closing.values())
        self._listeners.clear()
        return defer.gatherResults(stops, consumeErrors=True)

    def listening(self, machine: LabMachine) -> bool:
        """Whether the machine's SSH server is accepting connections."""
        return machine.name in self._listeners

    # PowerObserver

    def machine_down(self, machine: LabMachine) -> None:
        """Close the machine's listener and drop its connections."""
        port = self._listeners.pop(machine.name, None)
        if port is not None:
            closing = defer.maybeDeferred(port.stopListening)
            self._closing[machine.name] = closing

            def closed(result: object) -> object:
                if self._closing.get(machine.name) is closing:
                    del self._closing[machine.name]
                return result

            closing.addBoth(closed)
        for transport in list(self._connections.get(machine.name, ())):
            _drop(transport)

    def machine_up(self, machine: LabMachine) -> None:
        """Open the machine's listener again, on the shared port."""
        if self._stopped or not machine.up or machine.ssh == SSH_NONE or machine.name in self._listeners:
            return
        closing = self._closing.get(machine.name)
        if closing is not None:
            closing.addBoth(lambda _: self.machine_up(machine))
            return
        try:
            self._listen(machine)
        except CannotListenError as error:
            self._log.error(
                "lab ssh: cannot listen for {machine} on {ip}:{port} ({error}); trying again",
                machine=machine.name, ip=machine.ip, port=self.port, error=str(error),
            )
            self.call_later(_RELISTEN_DELAY, self.machine_up, machine)

    # helpers for the protocol classes

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> IDelayedCall:
        """A delayed call that L{stop} cancels."""

        def run() -> None:
            self._calls.discard(call)
            function(*args)

        call: IDelayedCall = self.reactor.callLater(delay, run)
        self._calls.add(call)
        return call

    def check_password(self, machine: LabMachine, username: bytes, password: bytes) -> bool:
        if machine.ssh == SSH_REFUSE_LOGIN:
            return False
        return username == SSH_USER.encode() and hmac.compare_digest(password, self._password)

    def reboot_soon(self, machine: LabMachine) -> None:
        """A reboot command was answered: the machine goes down shortly."""
        self.call_later(self.shutdown_delay, self._reboot, machine)

    def _reboot(self, machine: LabMachine) -> None:
        if machine.up:
            self.power.reboot(machine, graceful=True)

    def connected(self, machine: LabMachine, transport: SSHServerTransport) -> None:
        self._connections.setdefault(machine.name, set()).add(transport)
        self.connections_made[machine.name] = self.connections_made.get(machine.name, 0) + 1

    def hold(self, name: str) -> None:
        """Hold the commands run on machine C{name} from now on, unanswered, until L{release}."""
        self._held.setdefault(name, [])

    def release(self, name: str) -> None:
        """Run the commands held on machine C{name}, and no longer hold new ones."""
        for run in self._held.pop(name, []):
            run()

    def run_or_hold(self, machine: LabMachine, run: Callable[[], None]) -> None:
        """Run a command now, or later if the machine is held."""
        held = self._held.get(machine.name)
        if held is None:
            run()
        else:
            held.append(run)

    def disconnected(self, machine: LabMachine, transport: SSHServerTransport) -> None:
        self._connections.get(machine.name, set()).discard(transport)

    def _listen(self, machine: LabMachine) -> None:
        factory = _MachineFactory(self, machine)
        self._listeners[machine.name] = self.reactor.listenTCP(self.port, factory, interface=machine.ip)


class _Session(SSHChannel):
    """A session channel that runs one exec request and reports its exit status."""

    name = b"session"
    _log = Logger()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exit_code: int | None = None
        self._ran = False
        self._gone = False
        self._call: IDelayedCall | None = None

    @property
    def _user(self) -> _Avatar:
        return cast(_Avatar, self.avatar)

    @property
    def _server(self) -> LabSSHServer:
        return self._user.server

    def request_env(self, data: bytes) -> int:
        return 1  # accepted and ignored, like sshd without AcceptEnv

    def request_exec(self, data: bytes) -> int:
        if self._ran:
            return 0
        self._ran = True
        command = getNS(data)[0].decode("utf-8", "replace")
        # Output may only go out once the exec request has been answered.
        self._call = self._server.call_later(
            0, self._server.run_or_hold, self._user.machine, lambda: self._run(command)
        )
        return 1

    def _run(self, command: str) -> None:
        self._call = None
        if self._gone:
            return
        machine = self._user.machine
        result = shell.run(machine, command, self._server.clock())
        self._log.debug(
            "lab ssh: {machine} ran {command!r}: exit {code}", machine=machine.name, command=command,
            code=result.exit_code,
        )
        if result.stdout:
            self.write(result.stdout.encode("utf-8"))
        if result.stderr:
            self.writeExtended(_EXTENDED_DATA_STDERR, result.stderr.encode("utf-8"))
        self._exit_code = result.exit_code
        self._finish_when_flushed()
        if result.reboot:
            self._server.reboot_soon(machine)

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._finish_when_flushed()

    def _finish_when_flushed(self) -> None:
        """Send the exit status (after all output) and close the channel."""
        if self._exit_code is None or self.buf or self.extBuf or self.closing:
            return
        conn = cast(connection.SSHConnection, self.conn)
        conn.sendRequest(self, b"exit-status", struct.pack(">L", self._exit_code))
        conn.sendEOF(self)
        self.loseConnection()

    def closed(self) -> None:
        self._gone = True
        if self._call is not None and self._call.active():
            self._call.cancel()


class _Avatar(ConchUser):
    """A logged-in C{cltbld} on one machine: only session channels."""

    def __init__(self, server: LabSSHServer, machine: LabMachine) -> None:
        super().__init__()
        self.server = server
        self.machine = machine
        self.channelLookup[b"session"] = _Session


@implementer(IRealm)
class _Realm:
    def __init__(self, server: LabSSHServer, machine: LabMachine) -> None:
        self._server = server
        self._machine = machine

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH logins")
        return IConchUser, _Avatar(self._server, self._machine), lambda: None


@implementer(ICredentialsChecker)
class _PasswordChecker:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, server: LabSSHServer, machine: LabMachine) -> None:
        self._server = server
        self._machine = machine

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        if self._server.check_password(self._machine, credentials.username, credentials.password):
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin("wrong user name or password"))


class _UserAuth(userauth.SSHUserAuthServer):
    """Password logins with the lab's (short) delay after a wrong password."""

    def serviceStarted(self) -> None:
        factory = _factory(self.transport)
        self.clock = factory.server.reactor
        self.passwordDelay = factory.server.password_delay  # type: ignore[assignment]  # callLater takes floats
        super().serviceStarted()


class _Transport(SSHServerTransport):
    def connectionMade(self) -> None:
        factory = _factory(self)
        factory.server.connected(factory.machine, self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        factory = _factory(self)
        factory.server.disconnected(factory.machine, self)
        super().connectionLost(reason)


class _MachineFactory(SSHFactory):
    """The SSH server of one machine."""

    protocol = _Transport
    services = {b"ssh-userauth": _UserAuth, b"ssh-connection": connection.SSHConnection}
    noisy = False

    def __init__(self, server: LabSSHServer, machine: LabMachine) -> None:
        self.server = server
        self.machine = machine
        self.portal = Portal(_Realm(server, machine), [_PasswordChecker(server, machine)])
        self.publicKeys = {server.host_key.sshType(): server.host_key.public()}
        self.privateKeys = {server.host_key.sshType(): server.host_key}
        self.primes = None

    def buildProtocol(self, addr: Any) -> SSHServerTransport:
        # SSHFactory.buildProtocol, without its log line on every connection
        # about the missing moduli file: fixed DH groups and curves only.
        transport: SSHServerTransport | None = Factory.buildProtocol(self, addr)
        if transport is None:
            raise ConchError("no transport")
        transport.supportedPublicKeys = list(self.server.host_key.supportedSignatureAlgorithms())
        transport.supportedKeyExchanges = [
            kex for kex in transport.supportedKeyExchanges if b"group-exchange" not in kex
        ]
        return transport


def _factory(transport: SSHTransportBase | None) -> _MachineFactory:
    if transport is None:
        raise ConchError("no transport")
    return cast(_MachineFactory, transport.factory)


def _drop(transport: SSHServerTransport) -> None:
    if transport.transport is not None:
        transport.transport.loseConnection()
