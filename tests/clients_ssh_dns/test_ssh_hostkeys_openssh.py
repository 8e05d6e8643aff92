"""
Host key enrolment and verification against a real OpenSSH sshd on loopback.

The sshd has ed25519, ECDSA and RSA host keys, like a stock install: the
key the enrolment command fetches must be the one SlaveAPI's client then
negotiates, and its fingerprint the one C{ssh-keygen -l} prints. The sshd
runs in the foreground with its own config on a free port and is stopped by
its PID; the tests run as root and create (or reset) a local test account.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from slaveapi.clients.ssh import (
    CommandResult,
    HostKeyStore,
    SSHClient,
    SSHHostKeyNotVerified,
    known_hosts_name,
    openssh_fingerprint,
)
from slaveapi.config import Secret, SSHConfig
from slaveapi.hostkeys import fetch_host_key
from tests.clients_ssh_dns.sshd_wait import wait_listening

reactor: Any = _reactor

SSHD = "/usr/sbin/sshd"
USER = "slaveapihk"
PASSWORD = "slaveapi-Hostkey-pw-9031"
HOST = "127.0.0.1"

def _keygen(path: Path, *kind: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", *kind, "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def account() -> str:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
    return USER


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _keygen(tmp_path_factory.mktemp("client") / "id_ed25519", "-t", "ed25519")


@pytest.fixture(scope="module")
def keys_dir(client_key: Path) -> Iterator[Path]:
    """USER's authorized_keys, in a world-readable directory (sshd reads it as the user)."""
    directory = Path(tempfile.mkdtemp(prefix="slaveapi-test-hostkeys-"))
    try:
        directory.chmod(0o755)
        authorized = directory / f"authorized_keys.{USER}"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        authorized.chmod(0o644)
        yield directory
    finally:
        shutil.rmtree(directory)


class _Sshd:
    def __init__(self, directory: Path, keys_dir: Path) -> None:
        self.port = _free_port()
        self.log = directory / "sshd.log"
        self.host_keys = {
            "ed25519": _keygen(directory / "host_ed25519", "-t", "ed25519"),
            "ecdsa": _keygen(directory / "host_ecdsa", "-t", "ecdsa"),
            "rsa": _keygen(directory / "host_rsa", "-t", "rsa", "-b", "2048"),
        }
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {HOST}\n"
            + "".join(f"HostKey {path}\n" for path in self.host_keys.values())
            + f"PidFile {directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {keys_dir}/authorized_keys.%u\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin no\nLogLevel VERBOSE\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_listening(self) -> None:
        await wait_listening(reactor, self.process, HOST, self.port, self.log_text)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def fingerprint(self, kind: str) -> str:
        """What C{ssh-keygen -l -E sha256} prints for one of the host keys."""
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_keys[kind]}.pub"],
            capture_output=True,
            text=True,
            check=True,
        )
        return listed.stdout.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)


@pytest_twisted.async_yield_fixture
async def sshd(account: str, keys_dir: Path, tmp_path: Path) -> AsyncIterator[_Sshd]:
    directory = tmp_path / "sshd"
    directory.mkdir()
    server = _Sshd(directory, keys_dir)
    try:
        await server.wait_listening()
        yield server
    finally:
        server.stop()


def _client(known_hosts: Path, policy: str, key: Path | None = None) -> SSHClient:
    config = SSHConfig(connect_timeout=10.0, command_timeout=10.0, host_keys=policy)
    keys = {USER: (str(key),)} if key is not None else {}
    return SSHClient(reactor, config, {USER: (Secret(PASSWORD),)}, str(known_hosts), keys)


@pytest_twisted.ensureDeferred
async def test_the_enrolled_key_is_the_one_the_client_negotiates(sshd: _Sshd, tmp_path: Path) -> None:
    key = await fetch_host_key(reactor, HOST, sshd.port, 10.0)
    # conch prefers ECDSA among sshd's three host keys; so does the client.
    assert key.sshType() == b"ecdsa-sha2-nistp256"
    assert openssh_fingerprint(key) == sshd.fingerprint("ecdsa")
    known_hosts = tmp_path / "known_hosts"
    strict = _client(known_hosts, "strict")
    with pytest.raises(SSHHostKeyNotVerified):
        await strict.run(HOST, "true", port=sshd.port)
    assert "password for" not in sshd.log_text()

    HostKeyStore(str(known_hosts)).verified.add([known_hosts_name(HOST, sshd.port)], key)
    assert await strict.run(HOST, "id -un", port=sshd.port) == CommandResult(0, f"{USER}\n", "")
    assert f"Accepted password for {USER}" in sshd.log_text()


@pytest_twisted.ensureDeferred
async def test_tofu_offers_no_password_even_after_a_key_login(sshd: _Sshd, client_key: Path, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    with pytest.raises(SSHHostKeyNotVerified):
        await _client(known_hosts, "tofu").run(HOST, "true", port=sshd.port)
    assert "password for" not in sshd.log_text()
    assert known_hosts.read_text() == ""

    keyed = _client(known_hosts, "tofu", key=client_key)
    assert await keyed.run(HOST, "id -un", port=sshd.port) == CommandResult(0, f"{USER}\n", "")
    assert f"Accepted publickey for {USER}" in sshd.log_text()
    await keyed.host_keys_flushed().addTimeout(10, reactor)
    # A key login proves nothing about the server: the key is still only recorded on first use.
    assert known_hosts.read_text() == ""
    assert len(Path(f"{known_hosts}.unverified").read_text().splitlines()) == 1

    # After a restart too, no password goes to it.
    with pytest.raises(SSHHostKeyNotVerified) as caught:
        await _client(known_hosts, "tofu").run(HOST, "echo pw", port=sshd.port)
    assert "a key login proves nothing about the server" in str(caught.value)
    assert "password for" not in sshd.log_text()
