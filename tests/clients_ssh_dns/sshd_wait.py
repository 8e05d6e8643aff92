"""Waiting, bounded, for a real OpenSSH sshd started by a test to accept connections."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater


async def wait_listening(
    reactor: Any, process: subprocess.Popen[bytes], host: str, port: int, log_text: Callable[[], str]
) -> None:
    """Try a TCP connect until sshd accepts, for at most about 10 seconds; fail with its log if it exits."""
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=1)
    for _attempt in range(500):
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {log_text()}")
        try:
            probe = await connectProtocol(endpoint, Protocol())
        except net_error.ConnectError:
            await deferLater(reactor, 0.02, lambda: None)
            continue
        probe.transport.loseConnection()
        return
    raise RuntimeError(f"sshd not listening on port {port}: {log_text()}")
