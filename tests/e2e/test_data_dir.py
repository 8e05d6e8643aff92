"""
The --data directory end to end, with real twistd processes: one instance per
directory, a corrupt database, private files, and a disk that fills up.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq

from tests.e2e.harness import request_json, start_service, twistd_command

_UPTIME = "/slaves/bld-linux64-lab-001/actions/buildslave_uptime"


def _run_twistd(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twistd_command(*args), capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest_twisted.ensureDeferred
async def test_a_second_instance_on_the_same_data_is_refused_in_one_line(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    first = start_service(data, "--lab", "3")
    try:
        code, done = await request_json("POST", first.url + _UPTIME, data={"waittime": "30"})
        assert (code, done["state"]) == (200, 2)
        code, before = await request_json("GET", f"{first.url}/results")

        second = _run_twistd("--lab", "3", "--data", data, "--listen", "tcp:0:interface=127.0.0.1", cwd=str(tmp_path))
        assert second.returncode != 0
        assert second.stderr.strip().splitlines() == [
            f"slaveapi: --data {data} is in use by another SlaveAPI (pid {first.process.pid}): "
            "stop that one first, or give this one another --data directory"
        ]
        assert "Traceback" not in second.stdout + second.stderr

        # The first goes on as if nothing happened: its results intact, new requests served.
        code, after = await request_json("GET", f"{first.url}/results")
        assert (code, after) == (200, before)
        assert after["bld-linux64-lab-001"]["buildslave_uptime"][str(done["requestid"])]["state"] == 2
        code, again = await request_json("POST", first.url + _UPTIME, data={"waittime": "30"})
        assert (code, again["state"]) == (200, 2)
        assert again["requestid"] == done["requestid"] + 1
    finally:
        first.stop()


def test_a_corrupt_database_stops_start_up_in_one_line_naming_it(tmp_path: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = data / "slaveapi-results.sqlite"
    database.write_bytes(b"\x00garbage, not a database\xff" * 400)
    done = _run_twistd("--lab", "3", "--data", str(data), cwd=str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"slaveapi: {database}: not a readable SlaveAPI results database (file is not a database); "
        "move it aside to start with an empty store, or restore it from a backup"
    ]
    assert "Traceback" not in done.stdout + done.stderr
    # Nothing was started, and the file is left for the operator to look at.
    assert not (data / "lab").exists()
    assert database.read_bytes().startswith(b"\x00garbage")


@pytest_twisted.ensureDeferred
async def test_the_files_slaveapi_keeps_are_private(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    service = start_service(data, "--lab", "3", log_name=str(tmp_path / "twistd.out"))
    try:
        code, _ = await request_json("POST", service.url + _UPTIME, data={"waittime": "30"})
        assert code == 200
        for name in (
            "slaveapi-results.sqlite",
            "slaveapi-results.sqlite-wal",
            "slaveapi-results.sqlite-shm",
            "slaveapi.lock",
        ):
            mode = stat.S_IMODE(os.stat(os.path.join(data, name)).st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
        with open(os.path.join(data, "slaveapi.lock"), encoding="ascii") as handle:
            assert handle.read().strip() == str(service.process.pid)
    finally:
        service.stop()


@pytest.fixture
def small_disk(tmp_path: Any) -> Iterator[str]:
    """A 24 MB tmpfs mounted for the test (root only), unmounted after it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    # make test runs as root (its real peers need a local user): a full disk is staged for real.
    assert os.geteuid() == 0 and shutil.which("mount"), "mounting a small tmpfs needs root and mount(8)"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)


def _fill(directory: str) -> str:
    """Fill the file system of C{directory} to the last byte; the path of the filler file."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    handle.write(b"\0" * size)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    return filler


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_a_503_without_ghosts_and_service_resumes_when_there_is_room(
    tmp_path: Any, small_disk: str
) -> None:
    data = os.path.join(small_disk, "data")
    service = start_service(data, "--lab", "3", log_name=str(tmp_path / "twistd.out"))
    try:
        code, first = await request_json("POST", service.url + _UPTIME, data={"waittime": "30"})
        assert (code, first["state"]) == (200, 2)
        code, before = await request_json("GET", f"{service.url}/results")

        filler = _fill(small_disk)
        response = await treq.post(service.url + _UPTIME, data={"waittime": "30"}, timeout=60)
        assert response.code == 503
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert response.headers.getRawHeaders(b"retry-after") == [b"30"]
        error = await response.json()
        assert set(error) == {"error", "msg"}
        assert error["error"] == "store_unavailable"
        assert "disk is full" in error["msg"]
        assert "Traceback" not in error["msg"]

        # No ghost: nothing was recorded, and the service goes on answering.
        code, during = await request_json("GET", f"{service.url}/results")
        assert (code, during) == (200, before)
        code, slaves = await request_json("GET", f"{service.url}/slaves")
        assert code == 200 and slaves["slaves"]
        assert "Could not write the new request" in service.log_text()

        os.remove(filler)
        code, again = await request_json("POST", service.url + _UPTIME, data={"waittime": "30"})
        assert (code, again["state"]) == (200, 2)
        code, after = await request_json("GET", f"{service.url}/results")
        assert set(after["bld-linux64-lab-001"]["buildslave_uptime"]) == {
            str(first["requestid"]),
            str(again["requestid"]),
        }
    finally:
        service.stop()
