"""
Through the HTTP API against the lab: a known machine whose host key is not
verified is never offered a password, the action says why and how to enrol
the key, and the enrolment command (a real process, against the running lab)
fixes it, for the foopies that devices' SSH goes to as well. Outside the
lab, C{host_keys = off} stops twistd with one line.

The lab's SSH servers are looked behind by wrapping their password check:
every password any machine is offered is recorded, with the machine's name.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.utils import getProcessOutputAndValue

from slaveapi.clients.ssh import SSHClient, openssh_fingerprint
from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json, twistd_command
from tests.e2e.inprocess import RunningService, start_in_process

reactor: Any = _reactor

ROOT = Path(__file__).resolve().parents[2]
WAIT = "60"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("hostkeys")), slaves=8, boot_time=1.0)
    offered: list[str] = []
    check_password = running.lab.ssh.check_password

    def recording(machine: Any, username: bytes, password: bytes) -> bool:
        offered.append(machine.name)
        return check_password(machine, username, password)

    running.lab.ssh.check_password = recording  # type: ignore[method-assign]  # records offers
    running.offered = offered  # type: ignore[attr-defined]  # noted on the fixture
    yield running
    await running.stop()


def _lab_dir(service: RunningService) -> Path:
    return Path(service.lab.workdir)


def _unenrol(service: RunningService, name: str) -> None:
    """Take the machine's line out of the lab's known_hosts."""
    known_hosts = _lab_dir(service) / "known_hosts"
    fqdn = service.lab.machine(name).fqdn
    kept = [line for line in known_hosts.read_text().splitlines(True) if f"[{fqdn}]:" not in line]
    known_hosts.write_text("".join(kept))


def _holder(service: RunningService) -> ContextHolder:
    return next(child for child in service.service if isinstance(child, ContextHolder))


async def _host_keys_written(service: RunningService) -> None:
    """Wait (bounded) until SlaveAPI's host key files hold what it recorded (they are written in the background)."""
    await cast(SSHClient, _holder(service).context().clients.ssh).host_keys_flushed().addTimeout(10, reactor)


def _set_policy(service: RunningService, policy: str) -> None:
    ini = _lab_dir(service) / "slaveapi.ini"
    ini.write_text(re.sub(r"(?m)^host_keys = \w+$", f"host_keys = {policy}", ini.read_text()))
    holder = _holder(service)
    assert holder.reload()
    assert holder.context().config.ssh.host_keys == policy


async def _uptime(service: RunningService, name: str) -> dict[str, Any]:
    code, result = await request_json(
        "POST", f"{service.url}/slaves/{name}/actions/buildslave_uptime", data={"waittime": WAIT}
    )
    assert code == 200, result
    return result


async def _scan(service: RunningService, *extra: str) -> tuple[str, str, int]:
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "slaveapi.hostkeys", "scan", "--config", str(_lab_dir(service) / "slaveapi.ini"), *extra],
        env=dict(os.environ),
        path=str(ROOT),
        reactor=reactor,
    )
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_strict_a_machine_whose_key_is_not_enrolled_gets_no_password(lab_service: RunningService) -> None:
    _set_policy(lab_service, "strict")
    _unenrol(lab_service, "bld-linux64-lab-001")
    result = await _uptime(lab_service, "bld-linux64-lab-001")
    assert result["state"] == 3, result
    assert "host key not verified" in result["text"]
    assert "and host_keys is strict" in result["text"]
    assert "python -m slaveapi.hostkeys scan --config <slaveapi.ini> --write" in result["text"]
    assert openssh_fingerprint(lab_service.lab.host_key) in result["text"]
    assert lab_service.lab.ssh_password not in result["text"]
    assert "bld-linux64-lab-001" not in lab_service.offered  # type: ignore[attr-defined]  # noted by the fixture
    # An enrolled machine is served as before (and the recorder does see passwords).
    control = await _uptime(lab_service, "tst-linux64-lab-002")
    assert control["state"] == 2 and isinstance(control["text"], int), control
    assert "tst-linux64-lab-002" in lab_service.offered  # type: ignore[attr-defined]  # noted by the fixture


@pytest_twisted.ensureDeferred
async def test_tofu_records_the_key_but_offers_no_password_until_verified(lab_service: RunningService) -> None:
    _set_policy(lab_service, "tofu")
    name = "t-yosemite-r7-lab-003"
    _unenrol(lab_service, name)
    for _attempt in range(2):
        result = await _uptime(lab_service, name)
        assert result["state"] == 3, result
        assert "host key not verified" in result["text"]
        assert "no password was offered" in result["text"]
    assert name not in lab_service.offered  # type: ignore[attr-defined]  # noted by the fixture
    # Recorded on first use, kept apart from the verified keys.
    await _host_keys_written(lab_service)
    machine = lab_service.lab.machine(name)
    unverified = (_lab_dir(lab_service) / "known_hosts.unverified").read_text()
    assert f"[{machine.ip}]:{lab_service.lab.ssh_port} ssh-ed25519 " in unverified
    assert machine.fqdn not in (_lab_dir(lab_service) / "known_hosts").read_text()


@pytest_twisted.ensureDeferred
async def test_the_enrolment_command_lists_new_keys_and_writes_them(lab_service: RunningService) -> None:
    _set_policy(lab_service, "strict")
    name = "t-w864-lab-004"
    _unenrol(lab_service, name)
    known_hosts = _lab_dir(lab_service) / "known_hosts"
    before = known_hosts.read_text()
    assert (await _uptime(lab_service, name))["state"] == 3

    out, err, code = await _scan(lab_service)
    lines = {line.split()[1]: line.split() for line in out.splitlines() if len(line.split()) > 2}
    # The lab keeps a machine or two down: they are listed as failed, and make the exit status 1.
    down = {name for name, line in lines.items() if line[0] == "failed"}
    assert down and all(not lab_service.lab.machine(each).up for each in down), out
    assert all("connection refused" in " ".join(lines[each]) for each in down), out
    assert code == 1, out + err
    fingerprint = openssh_fingerprint(lab_service.lab.host_key)
    machine = lab_service.lab.machine(name)
    port = lab_service.lab.ssh_port
    assert lines[name] == ["new", name, f"[{machine.fqdn}]:{port},[{machine.ip}]:{port}", "ssh-ed25519", fingerprint]
    assert lines["tst-linux64-lab-002"][0] == "known"
    assert "not written: add --write" in out
    assert known_hosts.read_text() == before

    out, err, code = await _scan(lab_service, "--write")
    assert code == 1, out + err
    assert f"written to {known_hosts}" in out
    assert os.stat(known_hosts).st_mode & 0o777 == 0o600
    result = await _uptime(lab_service, name)
    assert result["state"] == 2 and isinstance(result["text"], int), result["text"]
    assert name in lab_service.offered  # type: ignore[attr-defined]  # noted by the fixture

    out, _, _ = await _scan(lab_service)
    assert f"known    {name} " in out and "\nnew " not in out and not out.startswith("new ")


def _host_lines(out: str) -> list[list[str]]:
    """The scan's lines for hosts, split in words (the summary line left out)."""
    words = [line.split() for line in out.splitlines()]
    return [line for line in words if line[:1] and line[0] in ("new", "known", "changed", "failed")]


def _scanned(out: str) -> dict[str, list[str]]:
    """The scan's lines by host name."""
    return {line[1]: line for line in _host_lines(out)}


@pytest_twisted.ensureDeferred
async def test_the_enrolment_command_covers_the_foopies_devices_are_reached_through(
    lab_service: RunningService,
) -> None:
    _set_policy(lab_service, "strict")
    lab = lab_service.lab
    device = next(machine for machine in lab.fleet.machines if machine.foopy is not None)
    foopy = lab.machine(device.foopy)
    port = lab.ssh_port
    _unenrol(lab_service, foopy.name)
    known_hosts = _lab_dir(lab_service) / "known_hosts"
    # The device's uptime is read on its foopy: without the foopy's key, no login at all.
    result = await _uptime(lab_service, device.name)
    assert result["state"] == 3, result
    assert f"ssh {foopy.ip}:{port}: host key not verified (" in result["text"]
    assert foopy.name not in lab_service.offered  # type: ignore[attr-defined]  # noted by the fixture

    out, err, _code = await _scan(lab_service)
    lines = _scanned(out)
    fingerprint = openssh_fingerprint(lab.host_key)
    assert lines[foopy.name] == [
        "new",
        foopy.name,
        f"[{foopy.fqdn}]:{port},[{foopy.ip}]:{port}",
        "ssh-ed25519",
        fingerprint,
    ]
    # Every host once: slavealloc's machines (the devices among them) and the foopy.
    listed = [line[1] for line in _host_lines(out)]
    assert sorted(listed) == sorted([machine.name for machine in lab.fleet.machines] + [foopy.name]), out + err

    out, err, _code = await _scan(lab_service, "--write")
    assert f"written to {known_hosts}" in out, out + err
    assert f"[{foopy.fqdn}]:{port},[{foopy.ip}]:{port} ssh-ed25519 " in known_hosts.read_text()
    result = await _uptime(lab_service, device.name)
    assert result["state"] == 2 and isinstance(result["text"], int), result
    assert foopy.name in lab_service.offered  # type: ignore[attr-defined]  # noted by the fixture
    assert _scanned((await _scan(lab_service))[0])[foopy.name][0] == "known"


@pytest_twisted.ensureDeferred
async def test_one_new_machine_is_enrolled_on_its_own_by_name(lab_service: RunningService) -> None:
    # As for an AWS loaner just created: --host scans only the machines named.
    _set_policy(lab_service, "strict")
    name = "bld-linux64-lab-001"
    _unenrol(lab_service, name)
    machine = lab_service.lab.machine(name)
    port = lab_service.lab.ssh_port
    out, err, code = await _scan(lab_service, "--host", name, "--write")
    assert code == 0, out + err
    assert list(_scanned(out)) == [name]
    assert _scanned(out)[name][:3] == ["new", name, f"[{machine.fqdn}]:{port},[{machine.ip}]:{port}"]
    assert out.splitlines()[-1].startswith("0 known, 1 new written to ")


@pytest_twisted.ensureDeferred
async def test_host_keys_off_stops_twistd_outside_the_lab(lab_service: RunningService, tmp_path: Path) -> None:
    # The lab's own configuration, with host key checks off, run without --lab.
    for name in ("slaveapi.ini", "credentials.json"):
        text = (_lab_dir(lab_service) / name).read_text()
        (tmp_path / name).write_text(re.sub(r"(?m)^host_keys = \w+$", "host_keys = off", text))
    command = twistd_command("--config", str(tmp_path / "slaveapi.ini"), "--data", str(tmp_path / "data"))
    out, err, code = await getProcessOutputAndValue(
        command[0], command[1:], env=dict(os.environ), path=str(tmp_path), reactor=reactor
    )
    assert code == 1
    assert (out + err).decode().strip().splitlines()[-1] == (
        f"slaveapi: {tmp_path / 'slaveapi.ini'}: [ssh] host_keys: off is accepted only with --lab"
        " (it offers passwords to any host); use strict or tofu"
    )
    assert b"Traceback" not in out + err
