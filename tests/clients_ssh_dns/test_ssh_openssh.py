"""
Tests for slaveapi.clients.ssh against a real OpenSSH sshd on loopback.

Each sshd is started by a fixture with a throwaway ed25519 host key and its
own config (password and public key logins for local test users, no PAM),
on a free 127.0.0.1 port; it is stopped by its PID at teardown. Readiness is
awaited by polling a TCP connect on the reactor. The tests run as root: the
test users are created (or their passwords reset) idempotently. Client keys
are throwaway ones made per test module; only the first test user's
authorized_keys lists some of them. sshd reads authorized_keys as the user, so
those files live in a world-readable directory of their own under /tmp
(pytest's temporary directories are root's alone), removed at teardown.

A password only ever goes to a host whose key is verified, so the client
helper first enrols the sshd's host key (its C{host_key.pub}) in the
test's known_hosts, as an operator would, and uses C{host_keys = strict};
the host key tests start from an empty file instead (and, under tofu, await
C{host_keys_flushed} before reading the files, written in the background). A host key change is
made by swapping the key of the running sshd (config rewritten, SIGHUP: sshd
re-executes itself on the same port), never by restarting on a freed port.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.ssh.keys import Key
from twisted.internet import error as net_error, reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from slaveapi.clients.ssh import (
    CommandResult,
    SSHAuthenticationFailed,
    SSHClient,
    SSHConnectionRefused,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyNotVerified,
    SSHTimeout,
    SSHUnreachable,
)
from slaveapi.clients.ssh._errors import connect_error as _connect_error
from slaveapi.config import ConfigError, Secret, SSHConfig
from slaveapi.hostkeys import fetch_host_key
from tests.clients_ssh_dns.sshd_wait import wait_listening

reactor: Any = _reactor

SSHD = "/usr/sbin/sshd"
USER = "slaveapitest"
# A second local account with the same password and no authorized keys.
OTHER = "slaveapitest2"
# The password of a throwaway local account that only a loopback sshd started
# by these tests accepts.
PASSWORD = "slaveapi-Test-pw-4711"
WRONG = ("wrong-one", "wrong-two", "wrong-three")
# sshd listens on these loopback addresses (one host key, several "hosts").
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
# How the client's enrolment hint reads in its "not verified" errors.
ENROL_HINT = "enrol it with 'python -m slaveapi.hostkeys scan --config <slaveapi.ini> --write'"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _host_key(path: Path, *kind: str) -> Path:
    kind = kind or ("-t", "ed25519")
    subprocess.run(["ssh-keygen", "-q", *kind, "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


def _public_key(host_key: Path) -> str:
    """The key's C{type base64} as C{ssh-keygen} wrote it to C{<key>.pub} (no comment)."""
    kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
    return f"{kind} {blob}"


def _fingerprint(host_key: Path) -> str:
    """The key's fingerprint as OpenSSH prints it (C{SHA256:...}), from C{ssh-keygen -l}."""
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{host_key}.pub"], check=True, capture_output=True, text=True
    )
    return listed.stdout.split()[1]


class _Sshd:
    """One OpenSSH sshd in the foreground, with its own config, log and PID file."""

    def __init__(
        self, directory: Path, host_key: Path, port: int, pubkey: bool = True, keys_dir: Path | None = None
    ) -> None:
        self.directory = directory
        self.host_key = host_key
        self.port = port
        self.pubkey = pubkey
        self.keys_dir = keys_dir or directory
        self.log = directory / "sshd.log"
        self.config = directory / "sshd_config"
        self._write_config()
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        listen = "".join(f"ListenAddress {address}\n" for address in ADDRESSES)
        self.config.write_text(
            f"Port {self.port}\n"
            f"{listen}"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.keys_dir / 'authorized_keys'}.%u\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            f"PubkeyAuthentication {'yes' if self.pubkey else 'no'}\n"
            "PermitRootLogin no\n"
            "MaxAuthTries 6\n"
            "MaxStartups 50\n"
            "LogLevel VERBOSE\n"
        )

    def public_key(self) -> str:
        """The host key sshd serves, as C{type base64}."""
        return _public_key(self.host_key)

    def fingerprint(self) -> str:
        """The served host key's fingerprint as OpenSSH prints it."""
        return _fingerprint(self.host_key)

    async def swap_host_key(self, host_key: Path) -> None:
        """
        Serve C{host_key} instead, on the same port: rewrite the config and
        SIGHUP sshd, which re-executes itself with it. Returns once a key
        exchange on the port presents the new key (polled, at most 30 s).
        """
        assert self.process is not None and self.process.poll() is None
        self.host_key = host_key
        self._write_config()
        wanted = Key.fromFile(f"{host_key}.pub")
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = reactor.seconds() + 30
        while reactor.seconds() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {self.log_text()}")
            try:
                # The old key until sshd handles the signal, refused while it re-executes.
                served = await fetch_host_key(reactor, "127.0.0.1", self.port, timeout=5)
            except Exception:
                served = None
            if served == wanted:
                return
            await deferLater(reactor, 0.02, lambda: None)
        raise RuntimeError(f"sshd on port {self.port} did not take its new host key: {self.log_text()}")

    async def start(self) -> _Sshd:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(self.config.resolve()), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await self._wait_listening()
        return self

    async def _wait_listening(self) -> None:
        """Poll a TCP connect until sshd accepts, for at most 10 seconds."""
        assert self.process is not None
        await wait_listening(reactor, self.process, "127.0.0.1", self.port, self.log_text)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def count(self, text: str) -> int:
        return self.log_text().count(text)

    def stop(self) -> None:
        """SIGTERM the listener by its PID and wait for it (its port is free afterwards)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def test_user() -> str:
    """A local account with a known password; created if missing, password reset every run."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
    return USER


@pytest.fixture(scope="module")
def other_user(test_user: str) -> str:
    """A second account with the same password, which authorizes no key."""
    try:
        pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", OTHER], check=True)
    subprocess.run(["chpasswd"], input=f"{OTHER}:{PASSWORD}\n", text=True, check=True)
    return OTHER


class _ClientKeys:
    """Throwaway client private keys: C{good} and C{rsa} are authorized for USER, C{wrong} nowhere."""

    def __init__(self, directory: Path) -> None:
        self.good = _host_key(directory / "good_ed25519")
        self.rsa = _host_key(directory / "good_rsa", "-t", "rsa", "-b", "2048", "-m", "PEM")
        self.wrong = _host_key(directory / "wrong_ed25519")

    def authorized_keys(self) -> str:
        return "".join(Path(f"{key}.pub").read_text() for key in (self.good, self.rsa))


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> _ClientKeys:
    return _ClientKeys(tmp_path_factory.mktemp("client-keys"))


@pytest.fixture(scope="module")
def authorized_keys_dir(client_keys: _ClientKeys) -> Iterator[Path]:
    """A world-readable directory with USER's authorized_keys (the good client keys)."""
    directory = Path(tempfile.mkdtemp(prefix="slaveapi-test-authorized-keys-"))
    try:
        directory.chmod(0o755)
        authorized = directory / f"authorized_keys.{USER}"
        authorized.write_text(client_keys.authorized_keys())
        authorized.chmod(0o644)
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest_twisted.async_yield_fixture(scope="module")
async def sshd(
    test_user: str, other_user: str, authorized_keys_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[_Sshd]:
    """The sshd most tests share; USER's authorized_keys lists the good client keys."""
    directory = tmp_path_factory.mktemp("sshd")
    server = _Sshd(directory, _host_key(directory / "host_key"), _free_port(), keys_dir=authorized_keys_dir)
    await server.start()
    yield server
    server.stop()


@pytest.fixture
def new_sshd(
    test_user: str, authorized_keys_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Deferred[_Sshd]]]:
    """Start extra sshds (with a host key of their own); all stopped at teardown."""
    started: list[_Sshd] = []

    def start(key_name: str, pubkey: bool = True) -> Deferred[_Sshd]:
        directory = tmp_path / f"sshd-{len(started)}"
        directory.mkdir()
        key = tmp_path / key_name
        if not key.exists():
            _host_key(key)
        server = _Sshd(directory, key, _free_port(), pubkey=pubkey, keys_dir=authorized_keys_dir)
        started.append(server)
        return Deferred.fromCoroutine(server.start())

    yield start
    for server in started:
        server.stop()


def _enrol(known_hosts: Path, server: _Sshd, *names: str) -> None:
    """
    Enrol C{server}'s host key in C{known_hosts} (verified), as an operator
    would: an OpenSSH line C{[name]:port type base64} per name (default
    127.0.0.1), unless the file has it already.
    """
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
    for name in names or ("127.0.0.1",):
        line = f"[{name}]:{server.port} {server.public_key()}"
        if line not in lines:
            lines.append(line)
    known_hosts.write_text("".join(f"{line}\n" for line in lines))


def _client(
    known_hosts: Path,
    logins: dict[str, tuple[str, ...]] | None = None,
    *,
    enrol: _Sshd | None = None,
    names: tuple[str, ...] = ("127.0.0.1",),
    host_keys: str = "strict",
    connect_timeout: float = 10.0,
    command_timeout: float = 10.0,
    keys: dict[str, tuple[Path, ...]] | None = None,
) -> SSHClient:
    """
    A client with these logins (default USER's password) and private keys.

    With C{enrol}, that sshd's host key is first enrolled in C{known_hosts}
    under C{names} (see L{_enrol}), so that passwords may go to it.
    """
    if enrol is not None:
        _enrol(known_hosts, enrol, *names)
    if logins is None:
        logins = {USER: (PASSWORD,)}
    config = SSHConfig(
        port=22, connect_timeout=connect_timeout, command_timeout=command_timeout, host_keys=host_keys
    )
    secrets = {user: tuple(Secret(p) for p in passwords) for user, passwords in logins.items()}
    key_files = {user: tuple(str(path) for path in paths) for user, paths in (keys or {}).items()}
    return SSHClient(reactor, config, secrets, str(known_hosts), key_files)


class _Silent(Protocol):
    """Accepts a TCP connection and never says anything."""


class _Hangup(Protocol):
    """Closes every connection at once."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()


@pytest.fixture
def listen() -> Iterator[Callable[[type[Protocol]], int]]:
    """Listen on a free loopback port with the given protocol; the port is closed at teardown."""
    ports: list[Any] = []

    def start(protocol: type[Protocol]) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
        ports.append(port)
        return int(port.getHost().port)

    yield start
    for port in ports:
        port.stopListening()


# --- running commands -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_run_collects_exit_status_stdout_and_stderr(sshd: _Sshd, tmp_path: Path) -> None:
    client = _client(tmp_path / "known_hosts", enrol=sshd)
    result = await client.run("127.0.0.1", "echo hello; echo err >&2; exit 3", port=sshd.port)
    assert result == CommandResult(exit_code=3, stdout="hello\n", stderr="err\n")
    assert result.ok is False
    success = await client.run("127.0.0.1", "printf 'caf\\303\\251 \\377'", port=sshd.port)
    assert success == CommandResult(exit_code=0, stdout="café \ufffd", stderr="")
    assert success.ok is True


@pytest_twisted.ensureDeferred
async def test_proc_uptime_parses_as_two_floats(sshd: _Sshd, tmp_path: Path) -> None:
    client = _client(tmp_path / "known_hosts", enrol=sshd)
    result = await client.run("127.0.0.1", "cat /proc/uptime", port=sshd.port)
    assert result.exit_code == 0 and result.stderr == ""
    up, idle = (float(field) for field in result.stdout.split())
    assert up > 0 and idle >= 0


@pytest_twisted.ensureDeferred
async def test_session_runs_two_commands_on_one_connection(sshd: _Sshd, tmp_path: Path) -> None:
    client = _client(tmp_path / "known_hosts", enrol=sshd)
    logins_before = sshd.count(f"Accepted password for {USER}")
    async with await client.session("127.0.0.1", port=sshd.port) as session:
        assert (session.host, session.port, session.user) == ("127.0.0.1", sshd.port, USER)
        first = await session.run('echo "one $SSH_CONNECTION"')
        second = await session.run('echo "two $SSH_CONNECTION" >&2; exit 1')
    # SSH_CONNECTION names the client's source port: the same connection ran both.
    connection = first.stdout.split(" ", 1)[1]
    assert connection.startswith("127.0.0.1 ") and connection.endswith(f" 127.0.0.1 {sshd.port}\n")
    assert first == CommandResult(0, f"one {connection}", "")
    assert second == CommandResult(1, "", f"two {connection}")
    assert sshd.count(f"Accepted password for {USER}") == logins_before + 1
    with pytest.raises(SSHError) as caught:
        await session.run("true")
    assert str(caught.value) == f"ssh 127.0.0.1:{sshd.port}: connection closed"
    await session.close()  # closing again is harmless


@pytest_twisted.ensureDeferred
async def test_command_timeout(sshd: _Sshd, tmp_path: Path) -> None:
    client = _client(tmp_path / "known_hosts", enrol=sshd, command_timeout=30.0)
    with pytest.raises(SSHTimeout) as caught:
        await client.run("127.0.0.1", "sleep 30.25", timeout=0.5, port=sshd.port)
    # The call's own timeout ended it, not the client's 30 s one.
    assert str(caught.value) == f"ssh 127.0.0.1:{sshd.port}: command did not finish within 0.5s"
    # On a session, a timed-out command leaves the connection usable.
    async with await client.session("127.0.0.1", port=sshd.port) as session:
        with pytest.raises(SSHTimeout):
            await session.run("sleep 30.5", timeout=0.3)
        assert await session.run("echo still here") == CommandResult(0, "still here\n", "")
        # Both timed-out commands were killed (sshd honours the "signal" request).
        leftovers = await session.run("pgrep -f 'sleep 3[0][.]' || echo none")
        assert leftovers == CommandResult(0, "none\n", "")


@pytest_twisted.ensureDeferred
async def test_dropped_connection_gives_no_exit_status(sshd: _Sshd, tmp_path: Path) -> None:
    # The command kills the sshd process serving its connection: the
    # connection drops after the command was sent, as in a reboot.
    client = _client(tmp_path / "known_hosts", enrol=sshd)
    result = await client.run("127.0.0.1", "kill -9 $PPID; exec sleep 1", port=sshd.port)
    assert result == CommandResult(exit_code=None, stdout="", stderr="")
    assert result.ok is False


# --- logging in ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wrong_password_then_right_one_and_the_right_one_is_remembered(
    sshd: _Sshd, tmp_path: Path
) -> None:
    client = _client(tmp_path / "known_hosts", {USER: (WRONG[0], PASSWORD)}, enrol=sshd)
    failed = f"Failed password for {USER}"
    before = sshd.count(failed)
    assert (await client.run("127.0.0.1", "echo in", port=sshd.port)).stdout == "in\n"
    assert sshd.count(failed) == before + 1
    # The next call tries the password that worked first.
    assert (await client.run("127.0.0.1", "echo again", port=sshd.port)).stdout == "again\n"
    assert sshd.count(failed) == before + 1


@pytest_twisted.ensureDeferred
async def test_next_user_after_one_is_rejected(sshd: _Sshd, tmp_path: Path) -> None:
    client = _client(
        tmp_path / "known_hosts", {"nosuchuser-slaveapi": (PASSWORD,), USER: (WRONG[0], PASSWORD)}, enrol=sshd
    )
    result = await client.run("127.0.0.1", "id -un", port=sshd.port)
    assert result == CommandResult(0, f"{USER}\n", "")


@pytest_twisted.ensureDeferred
async def test_more_wrong_passwords_than_the_server_allows_per_connection(sshd: _Sshd, tmp_path: Path) -> None:
    # sshd hangs up after MaxAuthTries (6) failures; the rest of the list is
    # tried on a new connection.
    wrong = tuple(f"wrong-{n}" for n in range(8))
    client = _client(tmp_path / "known_hosts", {USER: (*wrong, PASSWORD)}, enrol=sshd)
    before = sshd.count(f"Failed password for {USER}")
    result = await client.run("127.0.0.1", "echo finally", port=sshd.port)
    assert result == CommandResult(0, "finally\n", "")
    assert sshd.count(f"Failed password for {USER}") == before + 8


@pytest_twisted.ensureDeferred
async def test_all_passwords_wrong(sshd: _Sshd, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        client = _client(tmp_path / "known_hosts", {USER: WRONG, "nosuchuser-slaveapi": (PASSWORD,)}, enrol=sshd)
        with pytest.raises(SSHAuthenticationFailed) as caught:
            await client.run("127.0.0.1", "true", port=sshd.port)
    finally:
        globalLogPublisher.removeObserver(observer)
    message = str(caught.value)
    assert message == f"ssh 127.0.0.1:{sshd.port}: every login was rejected (2 users, 4 passwords tried)"
    logged = "\n".join(formatEvent(event) + repr(event) for event in events)
    assert events
    for secret in (*WRONG, PASSWORD):
        assert secret not in logged
        assert secret not in message


@pytest_twisted.ensureDeferred
async def test_no_logins_configured(tmp_path: Path) -> None:
    client = _client(tmp_path / "known_hosts", {USER: ()})
    with pytest.raises(SSHAuthenticationFailed) as caught:
        await client.run("127.0.0.1", "true", port=1)
    assert str(caught.value) == "ssh 127.0.0.1:1: no SSH logins configured"


# --- connection failures --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_closed_port_is_connection_refused(tmp_path: Path) -> None:
    # Bound for the whole test and never listening: nothing else can take the port meanwhile.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        client = _client(tmp_path / "known_hosts")
        with pytest.raises(SSHConnectionRefused) as caught:
            await client.run("127.0.0.1", "true", port=port)
    assert str(caught.value) == f"ssh 127.0.0.1:{port}: connection refused"


@pytest_twisted.ensureDeferred
async def test_silent_server_times_out_logging_in(listen: Callable[[type[Protocol]], int], tmp_path: Path) -> None:
    port = listen(_Silent)
    client = _client(tmp_path / "known_hosts", connect_timeout=0.5)
    with pytest.raises(SSHTimeout) as caught:
        await client.run("127.0.0.1", "true", port=port)
    assert str(caught.value) == f"ssh 127.0.0.1:{port}: not logged in within the connect timeout"


@pytest_twisted.ensureDeferred
async def test_server_hanging_up_is_an_ssh_error(listen: Callable[[type[Protocol]], int], tmp_path: Path) -> None:
    port = listen(_Hangup)
    client = _client(tmp_path / "known_hosts")
    with pytest.raises(SSHError) as caught:
        await client.run("127.0.0.1", "true", port=port)
    assert type(caught.value) is SSHError
    assert str(caught.value) == f"ssh 127.0.0.1:{port}: connection closed before authentication"


def test_connect_errors_are_mapped() -> None:
    def mapped(error: Exception) -> SSHError:
        return _connect_error("b-1.example", 22, Failure(error))

    refused = mapped(net_error.ConnectionRefusedError())
    assert type(refused) is SSHConnectionRefused
    lookup = mapped(net_error.DNSLookupError("b-1.example"))
    assert type(lookup) is SSHUnreachable and str(lookup) == "ssh b-1.example:22: host name does not resolve"
    route = mapped(net_error.NoRouteError())
    assert type(route) is SSHUnreachable and str(route) == "ssh b-1.example:22: host unreachable (NoRouteError)"
    down = mapped(net_error.ConnectError(osError=errno.EHOSTUNREACH))
    assert type(down) is SSHUnreachable and str(down) == "ssh b-1.example:22: host unreachable (EHOSTUNREACH)"
    timed_out = mapped(net_error.TimeoutError())
    assert type(timed_out) is SSHUnreachable


# --- host keys --------------------------------------------------------------------


async def _flushed(client: SSHClient) -> None:
    """Wait (bounded) until the client's host key files hold what it recorded."""
    await client.host_keys_flushed().addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_tofu_records_key_unverified_keeps_it_so_after_a_key_login_and_refuses_a_changed_one(
    new_sshd: Callable[..., Deferred[_Sshd]], client_keys: _ClientKeys, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "state" / "known_hosts"
    unverified = Path(f"{known_hosts}.unverified")
    passwords_only = _client(known_hosts, host_keys="tofu")
    assert known_hosts.read_text() == ""  # created when missing
    server = await new_sshd("key-a")
    line = f"[127.0.0.1]:{server.port} {server.public_key()}\n"
    first_key = server.fingerprint()
    # First use: the key is recorded beside known_hosts, not verified, and no password goes to the host.
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await passwords_only.run("127.0.0.1", "true", port=server.port)
    assert str(caught.value).startswith(
        f"ssh 127.0.0.1:{server.port}: host key not verified (ssh-ed25519 {first_key} is not in {known_hosts};"
        " a key recorded on first use only ever gets key logins: a server can accept any key without our"
        " signature being checked, so a key login proves nothing about the server), so no password was offered; "
    )
    assert str(caught.value).endswith(ENROL_HINT)
    assert server.count(f"password for {USER}") == 0
    await _flushed(passwords_only)
    assert known_hosts.read_text() == ""
    assert unverified.read_text() == line
    # A login by one of our keys works, and verifies nothing: the key stays where it was.
    keyed = _client(known_hosts, host_keys="tofu", keys={USER: (client_keys.good,)})
    assert (await keyed.run("127.0.0.1", "echo first", port=server.port)).stdout == "first\n"
    assert server.count(f"Accepted publickey for {USER}") == 1
    await _flushed(keyed)
    assert known_hosts.read_text() == ""
    assert unverified.read_text() == line
    # Still no password for the host; the key is not recorded again.
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await passwords_only.run("127.0.0.1", "echo known", port=server.port)
    assert str(caught.value).startswith(f"ssh 127.0.0.1:{server.port}: host key not verified (")
    assert server.count(f"password for {USER}") == 0
    await _flushed(passwords_only)
    assert unverified.read_text() == line

    # The same sshd, on the same port, now serves another key.
    await server.swap_host_key(_host_key(tmp_path / "key-b"))
    logins_before = server.count(f" for {USER} from ")
    with pytest.raises(SSHHostKeyMismatch) as mismatch:
        await passwords_only.run("127.0.0.1", "true", port=server.port)
    assert not isinstance(mismatch.value, SSHHostKeyNotVerified)
    assert str(mismatch.value) == (
        f"ssh 127.0.0.1:{server.port}: host key changed (ssh-ed25519 {server.fingerprint()}"
        f" does not match the key recorded in {unverified})"
    )
    # A new client reading the same files refuses it too, even with a key to log in with.
    with pytest.raises(SSHHostKeyMismatch) as caught_again:
        await _client(known_hosts, host_keys="tofu", keys={USER: (client_keys.good,)}).run(
            "127.0.0.1", "true", port=server.port
        )
    assert not isinstance(caught_again.value, SSHHostKeyNotVerified)
    assert server.count(f" for {USER} from ") == logins_before  # stopped at the key exchange
    assert known_hosts.read_text() == ""
    assert unverified.read_text() == line


@pytest_twisted.ensureDeferred
async def test_keys_are_recorded_under_the_name_connected_to(
    sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    client = _client(known_hosts, {}, host_keys="tofu", keys={USER: (client_keys.good,)})
    # A name goes through the (non-blocking) resolver: /etc/hosts maps localhost to loopback.
    result = await client.run("localhost", "echo by name", port=sshd.port)
    assert result == CommandResult(0, "by name\n", "")
    await _flushed(client)
    key = Key.fromFile(str(sshd.host_key) + ".pub")
    # Recorded on first use (read here by conch's own parser), and not verified by the key login.
    recorded = KnownHostsFile.fromPath(FilePath(f"{known_hosts}.unverified"))
    # OpenSSH's convention off port 22: "[host]:port".
    assert recorded.hasHostKey(f"[localhost]:{sshd.port}".encode(), key) is True
    assert recorded.hasHostKey(f"[127.0.0.1]:{sshd.port}".encode(), key) is False
    assert known_hosts.read_text() == ""
    # Enrolled under the name, passwords go to that name, and only there.
    _enrol(known_hosts, sshd, "localhost")
    assert (await _client(known_hosts).run("localhost", "echo pw", port=sshd.port)).stdout == "pw\n"
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await _client(known_hosts).run("127.0.0.1", "true", port=sshd.port)
    assert str(caught.value).startswith(f"ssh 127.0.0.1:{sshd.port}: host key not verified (")


@pytest_twisted.ensureDeferred
async def test_strict_accepts_only_verified_keys(sshd: _Sshd, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    unverified = Path(f"{known_hosts}.unverified")
    strict = _client(known_hosts)  # strict is the default; nothing enrolled
    logins_before = sshd.count(f" for {USER} from ")
    accepted_before = sshd.count(f"Accepted password for {USER} from ")
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await strict.run("127.0.0.1", "true", port=sshd.port)
    assert str(caught.value) == (
        f"ssh 127.0.0.1:{sshd.port}: host key not verified (ssh-ed25519 {sshd.fingerprint()} is not in"
        f" {known_hosts} and host_keys is strict); check its fingerprint and {ENROL_HINT}"
    )
    assert isinstance(caught.value, SSHHostKeyMismatch)
    assert known_hosts.read_text() == ""
    assert not unverified.exists()
    assert sshd.count(f" for {USER} from ") == logins_before  # stopped at the key exchange
    # A key recorded on first use under tofu is not verified: strict still refuses it.
    tofu = _client(known_hosts, host_keys="tofu")
    with pytest.raises(SSHHostKeyNotVerified):
        await tofu.run("127.0.0.1", "true", port=sshd.port)
    await _flushed(tofu)
    assert unverified.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.public_key()}\n"
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await strict.run("127.0.0.1", "true", port=sshd.port)
    assert str(caught.value).startswith(f"ssh 127.0.0.1:{sshd.port}: host key not verified (")
    assert sshd.count(f" for {USER} from ") == logins_before
    # Enrolled in known_hosts, it is accepted, passwords and all.
    _enrol(known_hosts, sshd)
    assert (await strict.run("127.0.0.1", "echo ok", port=sshd.port)).stdout == "ok\n"
    assert sshd.count(f"Accepted password for {USER} from ") == accepted_before + 1


@pytest_twisted.ensureDeferred
async def test_off_accepts_any_key_and_records_nothing(
    new_sshd: Callable[..., Deferred[_Sshd]], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    server = await new_sshd("key-a")
    strict = _client(known_hosts, enrol=server)
    assert (await strict.run("127.0.0.1", "echo enrolled", port=server.port)).stdout == "enrolled\n"
    recorded = known_hosts.read_text()
    await server.swap_host_key(_host_key(tmp_path / "key-b"))
    with pytest.raises(SSHHostKeyMismatch) as caught:
        await strict.run("127.0.0.1", "true", port=server.port)
    assert str(caught.value).startswith(f"ssh 127.0.0.1:{server.port}: host key changed (")
    off = _client(known_hosts, host_keys="off")
    assert (await off.run("127.0.0.1", "echo off", port=server.port)).stdout == "off\n"
    assert server.count(f"Accepted password for {USER}") == 2
    assert known_hosts.read_text() == recorded
    assert not Path(f"{known_hosts}.unverified").exists()


@pytest_twisted.ensureDeferred
async def test_concurrent_first_use_records_every_host(
    sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    unverified = Path(f"{known_hosts}.unverified")
    lines = sorted(f"[{address}]:{sshd.port} {sshd.public_key()}" for address in ADDRESSES)
    # Passwords only: every host's key is recorded on first use, unverified, and no password goes out.
    passwords_only = _client(known_hosts, host_keys="tofu")
    runs = [Deferred.fromCoroutine(passwords_only.run(address, "true", port=sshd.port)) for address in ADDRESSES]
    results = await DeferredList(runs, consumeErrors=True)
    for (succeeded, outcome), address in zip(results, ADDRESSES, strict=True):
        failure = cast(Failure, outcome)
        assert not succeeded and failure.check(SSHHostKeyNotVerified)
        assert str(failure.value).startswith(f"ssh {address}:{sshd.port}: host key not verified (")
    await _flushed(passwords_only)
    assert sorted(unverified.read_text().splitlines()) == lines
    assert known_hosts.read_text() == ""
    # Logins by key, at once, all work, and verify none of them.
    keyed = _client(known_hosts, {}, host_keys="tofu", keys={USER: (client_keys.good,)})
    runs = [Deferred.fromCoroutine(keyed.run(address, "echo $SSH_CONNECTION", port=sshd.port)) for address in ADDRESSES]
    results = await DeferredList(runs, fireOnOneErrback=True, consumeErrors=True)
    for (succeeded, result), address in zip(results, ADDRESSES, strict=True):
        assert succeeded and result.exit_code == 0
        assert result.stdout.endswith(f" {address} {sshd.port}\n")
    await _flushed(keyed)
    assert known_hosts.read_text() == ""
    assert sorted(unverified.read_text().splitlines()) == lines
    strict = _client(known_hosts)
    for address in ADDRESSES:
        with pytest.raises(SSHHostKeyNotVerified):
            await strict.run(address, "echo ok", port=sshd.port)


# --- private keys -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_key_only_logins_ed25519_and_rsa(sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path) -> None:
    accepted = f"Accepted publickey for {USER} from 127.0.0.1"
    before = sshd.count(accepted)
    passwords_before = sshd.count(f"password for {USER}")
    client = _client(tmp_path / "known_hosts", {}, keys={USER: (client_keys.good,)}, enrol=sshd)
    async with await client.session("127.0.0.1", port=sshd.port) as session:
        assert session.user == USER
        assert await session.run("id -un") == CommandResult(0, f"{USER}\n", "")
    assert sshd.count(accepted) == before + 1
    assert sshd.count(f"{accepted} port") == before + 1
    # RSA keys sign with rsa-sha2-*: OpenSSH 8.8+ refuses ssh-rsa (SHA-1) signatures.
    rsa = _client(tmp_path / "known_hosts", {}, keys={USER: (client_keys.rsa,)}, enrol=sshd)
    assert await rsa.run("127.0.0.1", "id -un", port=sshd.port) == CommandResult(0, f"{USER}\n", "")
    assert sshd.count(accepted) == before + 2
    assert "ssh2: RSA SHA256:" in sshd.log_text().split(accepted)[-1].splitlines()[0]
    assert sshd.count(f"password for {USER}") == passwords_before


@pytest_twisted.ensureDeferred
async def test_wrong_key_then_right_password_and_the_password_is_remembered(
    sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path
) -> None:
    client = _client(
        tmp_path / "known_hosts", {USER: (PASSWORD,)}, keys={USER: (client_keys.wrong,)}, enrol=sshd
    )
    accepted = f"Accepted password for {USER}"
    before = sshd.count(accepted)
    assert await client.run("127.0.0.1", "echo in", port=sshd.port) == CommandResult(0, "in\n", "")
    assert sshd.count(accepted) == before + 1
    # The password that worked goes first next time: the wrong key is not offered again.
    log_before = len(sshd.log_text())
    assert await client.run("127.0.0.1", "echo again", port=sshd.port) == CommandResult(0, "again\n", "")
    assert sshd.count(accepted) == before + 2
    assert "publickey" not in sshd.log_text()[log_before:]


@pytest_twisted.ensureDeferred
async def test_right_key_after_a_wrong_one_is_remembered(
    sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path
) -> None:
    client = _client(
        tmp_path / "known_hosts", {USER: (WRONG[0],)}, keys={USER: (client_keys.wrong, client_keys.good)}, enrol=sshd
    )
    accepted = f"Accepted publickey for {USER}"
    before = sshd.count(accepted)
    assert (await client.run("127.0.0.1", "echo one", port=sshd.port)).stdout == "one\n"
    log_before = len(sshd.log_text())
    assert (await client.run("127.0.0.1", "echo two", port=sshd.port)).stdout == "two\n"
    assert sshd.count(accepted) == before + 2
    later = sshd.log_text()[log_before:]
    assert later.count(accepted) == 1
    assert "Failed" not in later


@pytest_twisted.ensureDeferred
async def test_a_key_of_another_user_does_not_let_you_in(
    sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path
) -> None:
    # OTHER exists and has a password, but authorizes no key; the key is USER's.
    client = _client(
        tmp_path / "known_hosts", {}, keys={OTHER: (client_keys.good, client_keys.rsa)}, enrol=sshd
    )
    with pytest.raises(SSHAuthenticationFailed) as caught:
        await client.run("127.0.0.1", "true", port=sshd.port)
    assert (
        str(caught.value) == f"ssh 127.0.0.1:{sshd.port}: every login was rejected (1 user, 2 keys, 0 passwords tried)"
    )
    assert sshd.count(f"Accepted publickey for {OTHER}") == 0
    # Its password is fine, after its keys were refused.
    both = _client(
        tmp_path / "known_hosts", {OTHER: (PASSWORD,)}, keys={OTHER: (client_keys.good,)}, enrol=sshd
    )
    assert await both.run("127.0.0.1", "id -un", port=sshd.port) == CommandResult(0, f"{OTHER}\n", "")


@pytest_twisted.ensureDeferred
async def test_keys_are_skipped_when_the_server_takes_no_public_keys(
    new_sshd: Callable[..., Deferred[_Sshd]], client_keys: _ClientKeys, tmp_path: Path
) -> None:
    server = await new_sshd("key-a", pubkey=False)
    keys_only = _client(tmp_path / "known_hosts", {}, keys={USER: (client_keys.good,)}, enrol=server)
    with pytest.raises(SSHAuthenticationFailed) as caught:
        await keys_only.run("127.0.0.1", "true", port=server.port)
    assert str(caught.value) == f"ssh 127.0.0.1:{server.port}: the server does not accept publickey authentication"
    both = _client(
        tmp_path / "known_hosts", {USER: (PASSWORD,)}, keys={USER: (client_keys.good,)}, enrol=server
    )
    assert (await both.run("127.0.0.1", "echo pw", port=server.port)).stdout == "pw\n"
    assert server.count(f"Accepted password for {USER}") == 1


@pytest_twisted.ensureDeferred
async def test_key_material_never_shows_in_errors_or_logs(
    sshd: _Sshd, client_keys: _ClientKeys, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        client = _client(
            tmp_path / "known_hosts",
            {USER: WRONG[:1]},
            enrol=sshd,
            keys={USER: (client_keys.wrong,), OTHER: (client_keys.good, client_keys.rsa)},
        )
        with pytest.raises(SSHAuthenticationFailed) as caught:
            await client.run("127.0.0.1", "true", port=sshd.port)
    finally:
        globalLogPublisher.removeObserver(observer)
    message = str(caught.value)
    assert message == f"ssh 127.0.0.1:{sshd.port}: every login was rejected (2 users, 3 keys, 1 password tried)"
    logged = "\n".join(formatEvent(event) + repr(event) for event in events)
    assert events and str(client_keys.wrong) in logged  # keys are named by their file
    material = []
    for path in (client_keys.wrong, client_keys.good, client_keys.rsa):
        private = path.read_text().splitlines()[1:-1]  # the base64 body of the private key
        public = Path(f"{path}.pub").read_text().split()[1]
        key = Key.fromFile(str(path))
        material += [line for line in private if len(line) > 16] + [public, repr(key), str(key)]
    assert material
    for text in (message, repr(caught.value), logged, repr(client.__dict__)):
        assert [piece for piece in material if piece in text] == []
    assert WRONG[0] not in message and WRONG[0] not in logged


def test_unusable_key_file_stops_the_client(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage_key"
    garbage.write_text("not a key, secret-looking content 1234\n")
    with pytest.raises(ConfigError) as caught:
        _client(tmp_path / "known_hosts", {}, keys={USER: (garbage,)})
    assert str(caught.value) == f"{garbage}: not an SSH private key in OpenSSH or PEM format (BadKeyError)"
