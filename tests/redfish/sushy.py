"""
A real sushy-emulator (PyPI C{sushy-tools}) for the Redfish client's
integration tests: its fake driver (no libvirt), HTTP basic auth from an
htpasswd file (bcrypt), and optionally TLS with a certificate made here by a
throwaway CA.

The emulator runs as a child process on a free loopback port; L{start}
waits (bounded) for it to say it is serving and for its service root to
answer, and L{Emulator.stop} ends it by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import bcrypt
from cryptography.hazmat.primitives import serialization

from tests.testca import CertificateAuthority

SYSTEM_ID = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
USER = "admin"
PASSWORD = "sushy-Pa55word"
#: How long the emulator may take to start serving.
START_BOUND = 60.0


def sushy_emulator() -> str | None:
    """The C{sushy-emulator} script next to this Python, or on the PATH."""
    beside = Path(sys.executable).with_name("sushy-emulator")
    return str(beside) if beside.exists() else shutil.which("sushy-emulator")


@dataclass(frozen=True)
class Authority:
    """A throwaway CA and the file its certificate is written to (the client's C{ca_bundle})."""

    cert_path: Path
    ca: CertificateAuthority


def make_authority(directory: Path, name: str) -> Authority:
    """A self-signed CA certificate, written to C{<directory>/<name>.pem}."""
    ca = CertificateAuthority.make(name)
    path = directory / f"{name}.pem"
    path.write_bytes(ca.pem())
    return Authority(path, ca)


def make_server_cert(directory: Path, authority: Authority) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 signed by C{authority}: (cert file, key file)."""
    key, cert = authority.ca.issue_certificate("localhost", "127.0.0.1")
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Emulator:
    """A running sushy-emulator: its port, scheme and process."""

    process: subprocess.Popen[bytes]
    port: int
    scheme: str
    drain: threading.Thread | None = None

    def stop(self) -> None:
        """End the emulator by PID: SIGTERM, then SIGKILL after 10 s."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.drain is not None:
            self.drain.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(directory: Path, tls: tuple[Path, Path] | None = None) -> Emulator:
    """
    Start an emulator with one fake system (powered on) and basic auth.

    @param tls: (certificate file, key file) to serve HTTPS with.
    @raise RuntimeError: it did not serve within L{START_BOUND} seconds (its
        output is in the message); it is stopped first.
    """
    script = sushy_emulator()
    assert script is not None, "sushy-emulator is not installed: make test installs sushy-tools (the test extra)"
    htpasswd = directory / "htpasswd"
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USER}:{digest}\n", encoding="utf-8")
    state = directory / "state"
    state.mkdir()
    lines = [
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{"
        f"'uuid': '{SYSTEM_ID}', 'name': 'fake', 'power_state': 'On', 'external_notifier': False, "
        "'nics': [{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}]}]",
        f"SUSHY_EMULATOR_STATE_DIR = {str(state)!r}",
        f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}",
    ]
    if tls is not None:
        lines += [f"SUSHY_EMULATOR_SSL_CERT = {str(tls[0])!r}", f"SUSHY_EMULATOR_SSL_KEY = {str(tls[1])!r}"]
    config = directory / "sushy.conf"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = _free_port()
    env = dict(os.environ, SUSHY_EMULATOR_CONFIG=str(config))
    process = subprocess.Popen(
        [script, "--interface", "127.0.0.1", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    emulator = Emulator(process, port, "https" if tls else "http")
    try:
        _wait_until_serving(emulator)
    except BaseException:
        emulator.stop()
        raise
    return emulator


def _wait_until_serving(emulator: Emulator) -> None:
    """Wait, bounded, for the emulator's "Running on" line, then for its service root to answer."""
    assert emulator.process.stdout is not None
    output = b""
    deadline = time.monotonic() + START_BOUND
    with selectors.DefaultSelector() as selector:
        selector.register(emulator.process.stdout, selectors.EVENT_READ)
        while b"Running on" not in output:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(timeout=left):
                raise RuntimeError(f"sushy-emulator did not start in {START_BOUND:g}s: {output[-2000:]!r}")
            chunk = os.read(emulator.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"sushy-emulator exited: {output[-2000:]!r}")
            output += chunk
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"{emulator.scheme}://127.0.0.1:{emulator.port}/redfish/v1"
    with urllib.request.urlopen(url, timeout=10, context=context) as answer:  # noqa: S310  # our own http(s) URL
        assert answer.status == 200
    # Keep reading its output (one line a request), so that a full pipe never blocks it.
    emulator.drain = threading.Thread(target=_discard, args=(emulator.process.stdout,), daemon=True)
    emulator.drain.start()


def _discard(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass
