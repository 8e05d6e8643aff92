"""
Start and stop a real C{twistd slaveapi} process for end-to-end tests.

The service listens on a free port chosen by the OS; the harness reads it
from the process's log, so tests never race for ports.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import treq

_SITE_PORT = re.compile(r"GatedSite starting on (\d+)")
STARTUP_LIMIT = 30.0


@dataclass
class ServiceProcess:
    """One running SlaveAPI process and where it answers."""

    process: subprocess.Popen[bytes]
    log_path: str
    data_dir: str
    port: int = 0
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """
        Stop the process by its PID and return its exit code (twistd ends
        itself with the signal it was stopped by, after a clean shutdown).
        """
        return stop_process(self.process, sig)


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 20) -> int:
    """Stop C{process} by its PID with C{sig}, killing it after C{grace} seconds; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)
    return process.returncode


def twistd_command(*args: str) -> list[str]:
    """The command line of C{twistd -n -r asyncio slaveapi ARGS} in this venv."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [twistd, "-n", "-r", "asyncio", "--pidfile=", "slaveapi", *args]


def start_service(data_dir: str, *args: str, log_name: str = "twistd.out") -> ServiceProcess:
    """
    Start SlaveAPI with C{args} (plus C{--data} and a free port) and wait,
    bounded, until it listens. Raises with the log's tail if it does not.
    """
    os.makedirs(data_dir, exist_ok=True)
    log_path = os.path.join(data_dir, log_name)
    command = twistd_command(*args, "--data", data_dir)
    if "--listen" not in args:
        command += ["--listen", "tcp:0:interface=127.0.0.1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    service = ServiceProcess(process, log_path, data_dir, args=list(args))
    deadline = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < deadline:
        match = _SITE_PORT.search(service.log_text())
        if match:
            service.port = int(match.group(1))
            return service
        if process.poll() is not None:
            break
        time.sleep(0.05)
    service.stop(signal.SIGKILL)
    raise RuntimeError(f"SlaveAPI did not start: {service.log_text()[-3000:]}")


async def request_json(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """Make an HTTP request and return the status and the decoded JSON body."""
    response = await treq.request(method, url, timeout=60, **kwargs)
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"], url
    return response.code, await response.json()
