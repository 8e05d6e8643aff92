"""
Passwords go only to hosts whose key is verified (in known_hosts: no login
ever verifies a key); at most C{per_host} sessions to one host; known_hosts
is rewritten atomically, mode 0600.

The SSH servers are conch servers of the test's own (L{ConchPeer}) on
loopback: they record every authentication request and count the sessions
open at once. Under C{tofu} a key recorded on first use is written in the
background: a test awaits L{SSHClient.host_keys_flushed} before reading the
files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from slaveapi.clients.ssh import (
    CommandResult,
    HostKeyStore,
    KnownHostsFile,
    SSHAuthenticationFailed,
    SSHBusy,
    SSHClient,
    SSHHostKeyMismatch,
    SSHHostKeyNotVerified,
    openssh_fingerprint,
)
from slaveapi.config import Secret, SSHConfig
from tests.clients_ssh_dns.conch_peer import ConchPeer, new_key

reactor: Any = _reactor

# Seconds any one wait in these tests may take before it counts as hung.
BOUND = 10.0

USER = "cltbld"
PASSWORD = "trust-test-pw-5501"
OTHER_PASSWORD = "trust-test-pw-other"
HOST = "127.0.0.1"


def _client(
    known_hosts: Path,
    *,
    host_keys: str,
    passwords: tuple[str, ...] = (PASSWORD,),
    key_file: Path | None = None,
    per_host: int = 2,
    connect_timeout: float = 10.0,
) -> SSHClient:
    config = SSHConfig(
        connect_timeout=connect_timeout, command_timeout=10.0, host_keys=host_keys, per_host=per_host
    )
    keys = {USER: (str(key_file),)} if key_file is not None else {}
    return SSHClient(reactor, config, {USER: tuple(Secret(p) for p in passwords)}, str(known_hosts), keys)


def _key_file(tmp_path: Path, key: Any) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_bytes(key.toString("openssh"))
    path.chmod(0o600)
    return path


@pytest.fixture
def peers() -> Any:
    started: list[ConchPeer] = []

    def start(**options: Any) -> tuple[ConchPeer, int]:
        peer = ConchPeer(reactor, **options)
        started.append(peer)
        return peer, peer.listen()

    yield start
    for peer in started:
        peer.stop()


# --- a rogue server never sees a password -----------------------------------------


@pytest.mark.parametrize("policy", ["strict", "tofu"])
@pytest_twisted.ensureDeferred
async def test_a_rogue_server_with_an_unknown_key_is_offered_no_password(
    peers: Any, tmp_path: Path, policy: str
) -> None:
    # It would take any password; it takes no key.
    rogue, port = peers(password=PASSWORD)
    client = _client(
        tmp_path / "known_hosts",
        host_keys=policy,
        passwords=(OTHER_PASSWORD, PASSWORD),
        key_file=_key_file(tmp_path, new_key()),
    )
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await client.run(HOST, "true", port=port)
    assert "password" not in rogue.state.methods()
    fingerprint = openssh_fingerprint(rogue.host_key)
    message = str(caught.value)
    assert message.startswith(f"ssh {HOST}:{port}: host key not verified (ssh-ed25519 {fingerprint} is not in ")
    assert "python -m slaveapi.hostkeys scan --config <slaveapi.ini> --write" in message
    if policy == "strict":
        assert rogue.state.attempts == []  # the login stopped at the key exchange
    else:
        assert rogue.state.methods() == {"publickey"}
        assert "no password was offered" in message
    assert PASSWORD not in message and OTHER_PASSWORD not in message
    # Asked again (another action), still no password.
    with pytest.raises(SSHHostKeyNotVerified):
        await client.run(HOST, "true", port=port)
    assert "password" not in rogue.state.methods()


@pytest_twisted.ensureDeferred
async def test_tofu_without_keys_does_not_even_start_a_login(peers: Any, tmp_path: Path) -> None:
    rogue, port = peers(password=PASSWORD)
    client = _client(tmp_path / "known_hosts", host_keys="tofu")
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await client.run(HOST, "true", port=port)
    assert rogue.state.attempts == []
    assert "no password was offered; give the user a key in the credentials' ssh_keys" in str(caught.value)


async def _flushed(client: SSHClient) -> None:
    """Wait (bounded) until the client's host key files hold what it recorded."""
    await client.host_keys_flushed().addTimeout(BOUND, reactor)


@pytest_twisted.ensureDeferred
async def test_a_key_recorded_on_first_use_stays_unverified_across_restarts(peers: Any, tmp_path: Path) -> None:
    rogue, port = peers(password=PASSWORD)
    known_hosts = tmp_path / "known_hosts"
    first = _client(known_hosts, host_keys="tofu")
    with pytest.raises(SSHHostKeyNotVerified):
        await first.run(HOST, "true", port=port)
    await _flushed(first)
    unverified = Path(f"{known_hosts}.unverified")
    assert known_hosts.read_text() == ""
    assert unverified.read_text() == rogue.known_hosts_line(HOST, port)
    # A new client on the same files (a restart) still keeps its passwords home...
    with pytest.raises(SSHHostKeyNotVerified):
        await _client(known_hosts, host_keys="tofu").run(HOST, "true", port=port)
    assert rogue.state.attempts == []
    # ...and the key is pinned: another key at that address is refused outright.
    other, other_port = peers(password=PASSWORD)
    # (The rogue's key, as if recorded at the other server's address.)
    unverified.write_text(rogue.known_hosts_line(HOST, other_port))
    with pytest.raises(SSHHostKeyMismatch) as caught:
        await _client(known_hosts, host_keys="tofu").run(HOST, "true", port=other_port)
    assert not isinstance(caught.value, SSHHostKeyNotVerified)
    assert f"does not match the key recorded in {unverified}" in str(caught.value)
    assert other.state.attempts == []


@pytest_twisted.ensureDeferred
async def test_a_login_by_key_leaves_a_key_recorded_on_first_use_unverified(peers: Any, tmp_path: Path) -> None:
    key = new_key()
    server, port = peers(password=PASSWORD, authorized=key)
    known_hosts = tmp_path / "known_hosts"
    keyed = _client(known_hosts, host_keys="tofu", key_file=_key_file(tmp_path, key))
    assert await keyed.run(HOST, "first", port=port) == CommandResult(0, "ran first\n", "")
    assert (await keyed.run(HOST, "again", port=port)).ok
    assert server.state.methods() == {"publickey"}
    await _flushed(keyed)
    # Key-only it stays, however many key logins it takes: still unverified.
    assert known_hosts.read_text() == ""
    assert Path(f"{known_hosts}.unverified").read_text() == server.known_hosts_line(HOST, port)
    # A password-only client (a restart, or credentials without keys) is refused.
    passwords_only = _client(known_hosts, host_keys="tofu")
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await passwords_only.run(HOST, "second", port=port)
    assert str(caught.value).startswith(f"ssh {HOST}:{port}: host key not verified (")
    assert "a key login proves nothing about the server" in str(caught.value)
    assert "password" not in server.state.methods()
    strict = _client(known_hosts, host_keys="strict")
    with pytest.raises(SSHHostKeyNotVerified):
        await strict.run(HOST, "third", port=port)
    assert "password" not in server.state.methods()


@pytest_twisted.ensureDeferred
async def test_a_rogue_server_that_accepts_any_key_never_gets_a_password(peers: Any, tmp_path: Path) -> None:
    # The rogue answers "accepted" to the first key query, unsigned: it checks
    # nothing. Then, on the next connection, it refuses keys and asks for a password.
    rogue, port = peers(password=PASSWORD, accept_any_key_once=True)
    known_hosts = tmp_path / "known_hosts"
    client = _client(
        known_hosts, host_keys="tofu", passwords=(PASSWORD,), key_file=_key_file(tmp_path, new_key())
    )
    async with await client.session(HOST, port=port) as session:
        assert (await session.run("first")).ok  # "logged in"
    assert rogue.state.unsigned_accepted == 1
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await client.run(HOST, "second", port=port)
    assert "no password was offered" in str(caught.value)
    assert rogue.state.passwords == []
    assert "password" not in rogue.state.methods()
    await _flushed(client)
    assert known_hosts.read_text() == ""
    assert Path(f"{known_hosts}.unverified").read_text() == rogue.known_hosts_line(HOST, port)
    # Nor after a restart.
    with pytest.raises(SSHHostKeyNotVerified):
        await _client(known_hosts, host_keys="tofu", passwords=(PASSWORD,)).run(HOST, "third", port=port)
    assert rogue.state.passwords == []


@pytest_twisted.ensureDeferred
async def test_an_enrolled_key_lets_passwords_through(peers: Any, tmp_path: Path) -> None:
    server, port = peers(password=PASSWORD)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# enrolled by hand\n" + server.known_hosts_line(HOST, port))
    for policy in ("strict", "tofu"):
        client = _client(known_hosts, host_keys=policy, passwords=(OTHER_PASSWORD, PASSWORD))
        assert (await client.run(HOST, "in", port=port)).stdout == "ran in\n"
    assert server.state.methods() == {"password"}


# --- at most per_host sessions to one host ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_five_commands_to_one_host_never_open_more_than_two_sessions(peers: Any, tmp_path: Path) -> None:
    server, port = peers(password=PASSWORD)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line(HOST, port))
    client = _client(known_hosts, host_keys="strict", per_host=2)
    runs = [Deferred.fromCoroutine(client.run(HOST, f"job-{n}", port=port)) for n in range(5)]
    results = await DeferredList(runs, consumeErrors=True)
    assert [(ok, result) for ok, result in results] == [
        (True, CommandResult(0, f"ran job-{n}\n", "")) for n in range(5)
    ]
    assert server.state.started == 5
    assert server.state.max_sessions == 2
    assert server.state.max_commands <= 2


@pytest_twisted.ensureDeferred
async def test_a_third_session_waits_for_a_free_one_and_gives_up_at_the_bound(peers: Any, tmp_path: Path) -> None:
    # The server holds every command: the two first sessions stay open, so
    # the three others can only wait, and give up after connect_timeout.
    server, port = peers(password=PASSWORD, hold=True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line(HOST, port))
    client = _client(known_hosts, host_keys="strict", per_host=2, connect_timeout=3.0)
    runs = [Deferred.fromCoroutine(client.run(HOST, f"job-{n}", port=port)) for n in range(5)]
    await server.state.commands_started(2)
    waiting = await DeferredList(runs[2:], consumeErrors=True)
    for ok, outcome in waiting:
        failure = cast(Failure, outcome)
        assert not ok and failure.check(SSHBusy)
        assert str(failure.value) == (
            f"ssh {HOST}:{port}: no SSH session came free within 3s"
            " (2 already open to this host, the [ssh] per_host limit)"
        )
    assert server.state.started == 2 and server.state.max_sessions == 2
    server.state.release_all()
    held = await DeferredList(runs[:2], consumeErrors=True)
    assert [result for _, result in held] == [CommandResult(0, f"ran job-{n}\n", "") for n in range(2)]
    # Every place was given back: a new command gets a session at once.
    server.hold = False
    assert (await client.run(HOST, "after", port=port)).ok


@pytest_twisted.ensureDeferred
async def test_a_failed_login_gives_its_place_back(peers: Any, tmp_path: Path) -> None:
    server, port = peers(password=PASSWORD)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line(HOST, port))
    wrong = _client(known_hosts, host_keys="strict", passwords=(OTHER_PASSWORD,), per_host=1, connect_timeout=3.0)
    for _attempt in range(3):
        with pytest.raises(SSHAuthenticationFailed):
            await wrong.run(HOST, "true", port=port)
    right = _client(known_hosts, host_keys="strict", per_host=1)
    async with await right.session(HOST, port=port) as session:
        assert (await session.run("one")).ok
    # The place comes back when the session closes, however it closes.
    assert (await right.run(HOST, "two", port=port)).ok


# --- known_hosts on disk -----------------------------------------------------------


def test_known_hosts_is_created_0600_and_rewritten_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "known_hosts"
    _client(path, host_keys="strict")
    assert path.read_text() == ""
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    path.chmod(0o644)
    store = HostKeyStore(str(path))
    store.verified.add([b"[10.1.2.3]:2222"], new_key())
    assert os.stat(path).st_mode & 0o777 == 0o600
    store.record_unverified(b"10.1.2.4", new_key())
    assert os.stat(f"{path}.unverified").st_mode & 0o777 == 0o600


def test_a_rewrite_only_ever_renames_a_complete_file_over_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "known_hosts"
    first, second = new_key(), new_key()
    known = KnownHostsFile(str(path))
    known.add([b"10.1.2.3"], first)
    before = path.read_bytes()
    seen: list[tuple[bytes, bytes]] = []
    real_replace = os.replace

    def replace(source: Any, target: Any) -> None:
        # At the one moment the file changes, the old one is whole and the new one complete.
        seen.append((Path(target).read_bytes(), Path(source).read_bytes()))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    known.add([b"10.1.2.4"], second)
    assert seen == [(before, path.read_bytes())]
    assert path.read_bytes().startswith(before) and b"10.1.2.4 ssh-ed25519 " in path.read_bytes()
    assert os.listdir(tmp_path) == ["known_hosts"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_crash_while_writing_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "known_hosts"
    store = HostKeyStore(str(path))
    store.verified.add([b"10.1.2.3"], new_key())
    before = path.read_bytes()

    def crash(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(OSError):
        store.verified.add([b"10.1.2.4"], new_key())
    dropped, written = store.forget(b"10.1.2.3")
    failed: list[Failure] = []
    written.addErrback(failed.append)
    assert dropped and len(failed) == 1 and failed[0].check(OSError)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["known_hosts"]  # no temporary file left behind
