"""
The host key files under C{tofu} cost the reactor next to nothing: keys are
looked up in an in-memory index that our own writes keep up to date (the
file is read again only when someone else changed it), and every write,
with its wait for another writer's lock and its fsyncs, runs in a worker
thread.

Another process holding the directory lock is stood in for by an C{flock}
on a descriptor of the test's own: locks on different open files exclude
each other as they would across processes.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred

from slaveapi.clients.ssh import HostKeyStore, SSHHostKeyMismatch, _knownhosts as ssh_hostkeys
from slaveapi.clients.ssh._hostkeys import HostKeyPolicy as _HostKeys

reactor: Any = _reactor

# Seconds any one wait in these tests may take before it counts as hung.
BOUND = 10.0


def _new_key() -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate()).public()


def _line(name: str, key: Key) -> str:
    return f"{name} {key.toString('openssh').decode()}\n"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every line parsed into a key, in order (a spy on the module's one parser)."""
    seen: list[bytes] = []
    real = ssh_hostkeys._parse

    def spy(line: bytes) -> Any:
        seen.append(line)
        return real(line)

    monkeypatch.setattr(ssh_hostkeys, "_parse", spy)
    yield seen


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The size of every file content indexed (read whole into memory), in order."""
    seen: list[int] = []
    real = ssh_hostkeys._Index.of.__func__  # type: ignore[attr-defined]  # classmethod internals

    def spy(cls: type, data: bytes) -> Any:
        seen.append(len(data))
        return real(cls, data)

    monkeypatch.setattr(ssh_hostkeys._Index, "of", classmethod(spy))
    yield seen


async def _flushed(keys: _HostKeys) -> None:
    await keys.store.flushed().addTimeout(BOUND, reactor)


@pytest_twisted.ensureDeferred
async def test_new_hosts_learned_in_a_row_parse_the_file_at_most_once(
    tmp_path: Path, parses: list[bytes], reads: list[int]
) -> None:
    known_hosts = tmp_path / "known_hosts"
    unverified = Path(f"{known_hosts}.unverified")
    earlier = {f"10.0.{n // 250}.{n % 250 + 1}": _new_key() for n in range(300)}
    unverified.write_text("".join(_line(name, key) for name, key in earlier.items()))
    unverified.chmod(0o600)
    keys = _HostKeys("tofu", str(known_hosts), reactor)

    learned = {f"10.9.0.{n + 1}": _new_key() for n in range(40)}
    for name, key in learned.items():
        assert keys.check(name, 22, key) is False
        await _flushed(keys)  # written: each check after a write of ours
    # An earlier host's key is pinned (its line parsed when looked at), and so are the new ones.
    assert keys.check("10.0.0.1", 22, earlier["10.0.0.1"]) is False
    with pytest.raises(SSHHostKeyMismatch):
        keys.check("10.9.0.7", 22, _new_key())
    # The file was read once (the verified one too, empty), and not one
    # line parsed to learn 40 hosts: only the earlier line looked at.
    assert sorted(reads) == [0, len(unverified.read_bytes()) - sum(len(_line(n, k)) for n, k in learned.items())]
    assert parses == [_line("10.0.0.1", earlier["10.0.0.1"]).encode()]
    assert unverified.read_text().splitlines(True)[300:] == [_line(name, key) for name, key in learned.items()]
    assert os.stat(unverified).st_mode & 0o777 == 0o600

    # Someone else changes the file: it is read again, and what they wrote counts.
    enrolled = _new_key()
    unverified.write_bytes(unverified.read_bytes() + _line("10.8.0.1", enrolled).encode())
    with pytest.raises(SSHHostKeyMismatch):
        keys.check("10.8.0.1", 22, _new_key())
    # Read again, once, yet nothing parsed but the line looked at.
    assert len(reads) == 3 and reads[-1] == len(unverified.read_bytes())
    assert parses[1:] == [_line("10.8.0.1", enrolled).encode()]
    # And a fresh reader (a restart) agrees with the file.
    again = _HostKeys("tofu", str(known_hosts), reactor)
    for name, key in learned.items():
        assert again.check(name, 22, key) is False
    with pytest.raises(SSHHostKeyMismatch):
        again.check("10.9.0.1", 22, earlier["10.0.0.1"])


@pytest_twisted.ensureDeferred
async def test_a_write_while_another_process_holds_the_lock_neither_blocks_the_reactor_nor_loses_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known_hosts = tmp_path / "known_hosts"
    keys = _HostKeys("tofu", str(known_hosts), reactor)
    reactor_thread = threading.get_ident()
    sleepers: list[int] = []
    waiting_for_the_lock: Deferred[None] = Deferred()
    real_sleep = time.sleep

    def spy(seconds: float) -> None:
        sleepers.append(threading.get_ident())
        if len(sleepers) == 1:
            reactor.callFromThread(waiting_for_the_lock.callback, None)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", spy)
    lock = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        key = _new_key()
        # The check returns at once, the key pinned in memory...
        assert keys.check("10.1.2.3", 22, key) is False
        with pytest.raises(SSHHostKeyMismatch):
            keys.check("10.1.2.3", 22, _new_key())
        flushed = keys.store.flushed()
        # ...while a worker thread waits for the lock, and the reactor runs on (it delivers this).
        await waiting_for_the_lock.addTimeout(BOUND, reactor)
        assert not flushed.called
        assert not Path(f"{known_hosts}.unverified").exists()
        assert keys.check("10.1.2.4", 22, _new_key()) is False  # queued behind the first write
    finally:
        os.close(lock)  # the other process is done
    await flushed.addTimeout(BOUND, reactor)
    await _flushed(keys)
    assert sleepers and reactor_thread not in sleepers
    lines = Path(f"{known_hosts}.unverified").read_text().splitlines(True)
    assert lines[0] == _line("10.1.2.3", key) and lines[1].startswith("10.1.2.4 ssh-ed25519 ")
    assert len(lines) == 2
    # On disk for good: a restart pins it.
    with pytest.raises(SSHHostKeyMismatch):
        _HostKeys("tofu", str(known_hosts), reactor).check("10.1.2.3", 22, _new_key())


def test_a_failed_write_is_reported_and_the_key_recorded_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HostKeyStore(str(tmp_path / "known_hosts"))  # no reactor: writes at once
    key = _new_key()

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    failures: list[Any] = []
    store.record_unverified(b"10.1.2.3", key).addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(OSError)
    monkeypatch.undo()
    # Not on disk, so not pinned from memory either: the next connection records it again.
    assert store.judge(b"10.1.2.3", _new_key(), first_use=True).status == ssh_hostkeys.UNKNOWN
    assert os.listdir(tmp_path) == []
