"""
The service's life: command line, start-up errors, kill -9 and restart with
the same --data, configuration reload on SIGHUP, and the standalone lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted

from tests.e2e.harness import ServiceProcess, request_json, start_service, twistd_command

_LIMIT = 30.0


def run_twistd(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twistd_command(*args), capture_output=True, text=True, timeout=60, cwd=cwd)


def wait_for_log(service: ServiceProcess, text: str, after: int = 0) -> None:
    """Wait, bounded, until C{text} appears in the log past offset C{after}."""
    deadline = time.monotonic() + _LIMIT
    while time.monotonic() < deadline:
        if text in service.log_text()[after:]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log:\n{service.log_text()[-2000:]}")


def test_help_lists_the_options(tmp_path: Any) -> None:
    done = run_twistd("--help", cwd=str(tmp_path))
    assert done.returncode == 0
    for option in ("--config", "--listen", "--data", "--lab"):
        assert option in done.stdout


def test_a_reactor_other_than_asyncio_is_refused_in_one_line(tmp_path: Any) -> None:
    command = [part for part in twistd_command("--lab", "3") if part not in ("-r", "asyncio")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        "slaveapi: slaveapi needs the asyncio reactor, not EPollReactor: run it as 'twistd -r asyncio slaveapi ...'"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--lab", "3", "--config", "x.ini"), "--lab and --config exclude each other"),
        ((), "give --config PATH, or --lab N"),
        (("--config", "/nonexistent/slaveapi.ini"), "slaveapi: /nonexistent/slaveapi.ini: config file not found"),
        (("--lab", "3", "--listen", "bogus:1"), "slaveapi: --listen bogus:1: not a server endpoint string"),
    ],
)
def test_start_up_errors_are_one_clear_line(tmp_path: Any, args: tuple[str, ...], message: str) -> None:
    done = run_twistd(*args, cwd=str(tmp_path))
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_missing_a_key_names_file_section_and_key(tmp_path: Any) -> None:
    ini = tmp_path / "slaveapi.ini"
    ini.write_text(
        "[secrets]\ncredentials_file = c.json\n[slavealloc]\n[inventory]\n[bugzilla]\n[buildapi]\n[slaves]\n"
    )
    done = run_twistd("--config", str(ini), cwd=str(tmp_path))
    assert done.returncode != 0
    assert f"slaveapi: {ini}: [slavealloc] api_url: missing; expected an http:// or https:// URL" in done.stderr


@pytest_twisted.ensureDeferred
async def test_a_request_sent_the_moment_the_api_first_answers_finds_the_whole_lab_ready(tmp_path: Any) -> None:
    # As `make run` starts it: the EC2 server and the BMCs start in processes of
    # their own; the API must not answer before they do.
    service = start_service(str(tmp_path / "data"), "--lab", "12")
    try:
        code, slaves = await request_json("GET", f"{service.url}/slaves")
        assert code == 200
        assert "dev-linux64-ec2-lab5" in {slave["name"] for slave in slaves["slaves"]}
        code, result = await request_json(
            "POST", f"{service.url}/slaves/dev-linux64-ec2-lab5/actions/terminate", data={"waittime": "60"}
        )
        assert code == 200, result
        assert result["state"] == 2, result
        assert result["text"] == "Instance 'dev-linux64-ec2-lab5' has been terminated (state: terminated)"
    finally:
        service.stop()


@pytest_twisted.ensureDeferred
async def test_kill_9_and_restart_keep_every_finished_result(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    first = start_service(data, "--lab", "8")
    try:
        finished = {}
        for slave, action in [
            ("bld-linux64-lab-001", "buildslave_uptime"),
            ("tst-linux64-lab-002", "buildslave_last_activity"),
            ("t-linux64-lab-007", "buildslave_uptime"),
        ]:
            code, result = await request_json(
                "POST", f"{first.url}/slaves/{slave}/actions/{action}", data={"waittime": "30"}
            )
            assert code == 200
            finished[(slave, action)] = result
        code, before = await request_json("GET", f"{first.url}/results")
    finally:
        first.stop(signal.SIGKILL)

    second = start_service(data, "--lab", "8", log_name="second.out")
    try:
        for (slave, action), result in finished.items():
            requestid = result["requestid"]
            code, again = await request_json(
                "GET", f"{second.url}/slaves/{slave}/actions/{action}?requestid={requestid}"
            )
            assert code == 200
            assert again == {key: value for key, value in result.items() if key != "requestid"}
        code, after = await request_json("GET", f"{second.url}/results")
        assert after == before
        code, fresh = await request_json(
            "POST", f"{second.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime", data={"waittime": "30"}
        )
        assert fresh["requestid"] > max(result["requestid"] for result in finished.values())
    finally:
        second.stop()


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_credentials_and_refuses_a_bad_config(tmp_path: Any) -> None:
    service = start_service(str(tmp_path / "data"), "--lab", "8")
    lab_dir = os.path.join(service.data_dir, "lab")
    credentials_path = os.path.join(lab_dir, "credentials.json")
    ini_path = os.path.join(lab_dir, "slaveapi.ini")
    url = f"{service.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime"
    token = "reload-test-token-0123456789"
    try:
        code, _ = await request_json("POST", url, data={"waittime": "30"})
        assert code == 200

        with open(credentials_path, encoding="utf-8") as handle:
            credentials = json.load(handle)
        credentials["api_tokens"] = {"dashboard": token}
        with open(credentials_path, "w", encoding="utf-8") as handle:
            json.dump(credentials, handle)
        mark = len(service.log_text())
        service.process.send_signal(signal.SIGHUP)
        wait_for_log(service, "Configuration reloaded", after=mark)

        code, error = await request_json("POST", url, data={"waittime": "30"})
        assert (code, error["error"]) == (401, "unauthorized")
        code, result = await request_json(
            "POST", url, data={"waittime": "30"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert (code, result["state"]) == (200, 2)
        code, _ = await request_json("GET", f"{service.url}/results")
        assert code == 200

        with open(ini_path, "a", encoding="utf-8") as handle:
            handle.write("\n[http]\ntimeout = soon\n")
        mark = len(service.log_text())
        service.process.send_signal(signal.SIGHUP)
        wait_for_log(service, "Configuration reload refused", after=mark)
        assert "[http] timeout: expected a number >= 0.1, got 'soon'" in service.log_text()[mark:]
        code, result = await request_json(
            "POST", url, data={"waittime": "30"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert (code, result["state"]) == (200, 2)
        assert token not in service.log_text()
    finally:
        service.stop()


@pytest_twisted.ensureDeferred
async def test_the_standalone_lab_prints_a_config_a_separate_slaveapi_can_use(tmp_path: Any) -> None:
    workdir = tmp_path / "lab"
    lab = subprocess.Popen(
        [sys.executable, "-m", "slaveapi.lab", "--slaves", "8", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert lab.stdout is not None
        ini_path = lab.stdout.readline().strip()
        assert ini_path == str(workdir / "slaveapi.ini")
        service = start_service(str(tmp_path / "data"), "--config", ini_path)
        try:
            code, result = await request_json(
                "POST",
                f"{service.url}/slaves/tst-linux64-lab-002/actions/buildslave_last_activity",
                data={"waittime": "30"},
            )
            assert (code, result["state"]) == (200, 2)
            assert result["text"]["last_state"] == "running_command"
        finally:
            service.stop()
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(timeout=20)
