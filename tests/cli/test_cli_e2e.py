"""
C{slaveapi-cli} end to end: a real twistd process serving the lab, and the
CLI run as a separate process (it is synchronous; in this process it would
block the reactor serving it), read through a pipe or a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import ServiceProcess, start_service

HEALTHY, DEAD = "bld-linux64-lab-001", "t-linux64-lab-007"
#: Seconds any one CLI run may take (reboots in the lab take about 1 s).
RUN_LIMIT = 120.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: Any) -> Iterator[ServiceProcess]:
    running = start_service(str(tmp_path_factory.mktemp("cli")), "--lab", "12", "--lab-boot-time", "1")
    yield running
    running.stop()


def _environment(service: ServiceProcess) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("SLAVEAPI_") and name != "COLUMNS"
    }
    environment |= {"SLAVEAPI_URL": service.url, "SLAVEAPI_CLI_CONFIG": os.devnull + ".absent"}
    return environment


def cli(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run C{python -m slaveapi.cli ARGS} against the service, output through pipes."""
    return subprocess.run(
        [sys.executable, "-m", "slaveapi.cli", *args],
        capture_output=True, text=True, timeout=RUN_LIMIT, env=_environment(service), check=False,
    )


def cli_in_terminal(service: ServiceProcess, *args: str) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal; its exit code and all it wrote there."""
    controller, terminal = pty.openpty()
    environment = _environment(service) | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    process = subprocess.Popen(
        [sys.executable, "-m", "slaveapi.cli", *args],
        stdin=terminal, stdout=terminal, stderr=terminal, env=environment, close_fds=True,
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + RUN_LIMIT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(controller)
    return code, output.decode("utf-8", errors="replace")


def test_a_successful_action_exits_0(service: ServiceProcess) -> None:
    done = cli(service, "run", "buildslave_uptime", HEALTHY)
    assert done.returncode == 0, done.stderr
    uptime, summary = done.stdout.splitlines()[-2:]
    assert int(uptime) > 0
    assert summary.startswith(f"SUCCESS buildslave_uptime {HEALTHY} (request ")


def test_a_failing_action_exits_1_saying_why(service: ServiceProcess) -> None:
    done = cli(service, "run", "buildslave_uptime", DEAD)
    assert done.returncode == 1, done.stderr
    assert f"{DEAD} - Slave is offline, cannot get uptime!" in done.stdout
    assert f"FAILURE buildslave_uptime {DEAD}" in done.stdout


def test_a_refused_request_exits_2_with_the_servers_msg(service: ServiceProcess) -> None:
    done = cli(service, "run", "disable", HEALTHY, "--field", "force=maybe")
    assert done.returncode == 2
    assert "force: expected one of 1, y, yes, true, on, 0, n, no, false, off (any case), got 'maybe'" in " ".join(
        done.stderr.split()
    )
    undeclared = cli(service, "run", "disable", HEALTHY, "--field", "reasons=typo")
    assert undeclared.returncode == 2
    assert "--field: disable takes no field 'reasons'; expected one of force, reason, waittime" in undeclared.stderr
    unknown = cli(service, "show", "nosuch-host-001")
    assert unknown.returncode == 2
    assert "no machine named nosuch-host-001" in unknown.stderr


def test_listing_showing_and_reading_results(service: ServiceProcess) -> None:
    listed = cli(service, "--json", "slaves", "--purpose", "build", "--enabled")
    assert listed.returncode == 0, listed.stderr
    names = {machine["name"] for machine in json.loads(listed.stdout)["slaves"]}
    assert HEALTHY in names and "dev-linux64-ec2-lab5" not in names  # a disabled build machine
    table = cli(service, "slaves", "--pool", "build-scl3")
    assert table.returncode == 0 and HEALTHY in table.stdout and "\x1b" not in table.stdout
    shown = cli(service, "show", HEALTHY)
    assert shown.returncode == 0 and f"{HEALTHY}.build.scl3.slaveapi.test" in shown.stdout
    assert cli(service, "run", "buildslave_uptime", HEALTHY).returncode == 0
    page = cli(service, "--json", "results", "--slave", HEALTHY, "--action", "buildslave_uptime", "--limit", "1")
    assert page.returncode == 0, page.stderr
    first = json.loads(page.stdout)["results"]
    assert [(entry["slave"], entry["action"]) for entry in first] == [(HEALTHY, "buildslave_uptime")]


def test_health_lists_the_machines_down(service: ServiceProcess) -> None:
    # The lab's service runs the health loop (--lab-health-interval defaults to 20 s).
    done = cli(service, "--json", "health")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) >= {"checked_at", "machines", "verdicts", "down"}


def test_a_reboot_shows_its_steps_live_in_a_terminal(service: ServiceProcess) -> None:
    code, output = cli_in_terminal(service, "run", "reboot", "bld-linux64-lab-010")
    assert code == 0, output
    # The step in progress is drawn (it lasts the lab's boot time), then its outcome.
    waiting = output.find("Attempting SSH reboot...initiated, waiting for it to come back...")
    assert 0 <= waiting < output.find("Attempting SSH reboot...Success!"), output
    assert "SUCCESS" in output and "\x1b[" in output  # drawn with colours and cursor movement


def _events_status(service: ServiceProcess) -> int:
    """What C{GET /events} answers: 200 when this service streams events."""
    try:
        with urllib.request.urlopen(f"{service.url}/events", timeout=10) as response:  # noqa: S310  # loopback http
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_reboot_is_followed_by_events(service: ServiceProcess) -> None:
    # This service streams events: the CLI must follow them, not poll (polling is tested apart).
    assert _events_status(service) == 200
    done = cli(service, "run", "reboot", "bld-linux64-lab-001", "--verbose")
    assert done.returncode == 0, done.stderr
    # The finish comes at least the lab's boot time after the POST: well after the stream opened.
    assert re.search(r"followed by events \(([1-9]\d*) received\)", done.stderr), done.stderr
    lines = done.stdout.splitlines()
    waiting = "Attempting SSH reboot...initiated, waiting for it to come back..."
    assert lines.index(waiting) < lines.index("Attempting SSH reboot...Success!"), done.stdout


def test_a_reboot_is_followed_by_polling_when_told(service: ServiceProcess) -> None:
    done = cli(service, "run", "reboot", "bld-linux64-lab-001", "--verbose", "--no-events")
    assert done.returncode == 0, done.stderr
    assert "followed by polling" in done.stderr
    assert done.stdout.splitlines()[-2:-1] == ["Attempting SSH reboot...Success!"]
