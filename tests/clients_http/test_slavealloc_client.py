"""Tests for slaveapi.clients.slavealloc against a minimal slavealloc fake."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import pytest_twisted

from slaveapi.clients.http import RemoteError
from slaveapi.clients.slavealloc import (
    MasterRecord,
    SlaveallocClient,
    SlaveRecord,
    convert_basedir,
    filter_slaves,
)

from .fakeapi import FakeJSONAPI, SeenRequest, make_json_client

API = "http://slavealloc.test/api"

LINUX = {
    "slaveid": 7, "name": "bld-linux64-ix-001", "distro": "centos6", "bitlength": "64",
    "purpose": "build", "datacenter": "scl3", "trustlevel": "core", "speed": "fast",
    "environment": "prod", "pool": "build-scl3", "basedir": "/builds/slave",
    "enabled": True, "current_masterid": 3, "current_master": "bm01", "locked_masterid": None,
    "notes": "",
}  # fmt: skip
WINDOWS = {
    "slaveid": 8, "name": "t-w864-ix-001", "distro": "win8", "bitlength": "64",
    "purpose": "tests", "datacenter": "scl3", "trustlevel": "try", "speed": "fast",
    "environment": "prod", "pool": "tests-scl3-windows", "basedir": "C:\\slave\\test-1",
    "enabled": False, "current_masterid": None, "current_master": None, "locked_masterid": None,
    "notes": "flaky disk",
}  # fmt: skip
MASTER = {
    "masterid": 3, "nickname": "bm01-build1", "fqdn": "bm01.lab.example", "http_port": 8001,
    "pb_port": 9001, "dcname": "scl3", "pool": "build-scl3", "enabled": True,
}  # fmt: skip


class FakeSlavealloc(FakeJSONAPI):
    """The slavealloc wire format of docs/remote-apis.rst, over in-memory records."""

    def __init__(self, slaves: list[dict[str, Any]], masters: list[dict[str, Any]]) -> None:
        super().__init__()
        self.slaves = copy.deepcopy(slaves)
        self.masters = copy.deepcopy(masters)
        self.fail_with: int | None = None
        self.listing: Any = None

    def answer(self, seen: SeenRequest) -> Any:
        if self.fail_with:
            return self.fail_with, {"error": "broken"}
        parts = seen.path.strip("/").split("/")
        assert parts[0] == "api"
        if seen.method == "GET" and parts[1:] == ["slaves"]:
            return 200, self.listing if self.listing is not None else self.slaves
        if seen.method == "GET" and parts[1] == "slaves" and len(parts) == 3:
            assert seen.args == {"byname": ["1"]}
            for slave in self.slaves:
                if slave.get("name") == parts[2]:
                    return 200, slave
            return 404, {"error": "not found"}
        if seen.method == "PUT" and parts[1] == "slaves" and len(parts) == 3:
            for slave in self.slaves:
                if str(slave["slaveid"]) == parts[2]:
                    slave.update(seen.json())
                    return 200, slave
            return 404, {"error": "not found"}
        if seen.method == "GET" and parts[1] == "masters" and len(parts) == 3:
            for master in self.masters:
                if str(master["masterid"]) == parts[2]:
                    return 200, master
            return 404, {"error": "not found"}
        raise AssertionError(f"unexpected {seen.method} {seen.path}")


def _client(fake: FakeSlavealloc) -> SlaveallocClient:
    json_client, _, _ = make_json_client("slavealloc", fake)
    return SlaveallocClient(API + "/", json_client)


@pytest_twisted.ensureDeferred
async def test_get_slave() -> None:
    fake = FakeSlavealloc([LINUX, WINDOWS], [MASTER])
    slave = await _client(fake).get_slave("bld-linux64-ix-001")
    assert slave == SlaveRecord(
        slaveid=7,
        name="bld-linux64-ix-001",
        purpose="build",
        environment="prod",
        pool="build-scl3",
        datacenter="scl3",
        distro="centos6",
        trustlevel="core",
        basedir="/builds/slave",
        enabled=True,
        current_masterid=3,
        current_master="bm01",
        notes="",
        fields=LINUX,
    )
    assert slave.to_json() == LINUX
    assert fake.requests[0].path == "/api/slaves/bld-linux64-ix-001"


@pytest_twisted.ensureDeferred
async def test_windows_basedir_converted() -> None:
    fake = FakeSlavealloc([LINUX, WINDOWS], [MASTER])
    slave = await _client(fake).get_slave("t-w864-ix-001")
    assert slave is not None
    assert slave.basedir == "/c/slave/test-1"
    assert slave.fields["basedir"] == "C:\\slave\\test-1"
    assert slave.to_json() == {**WINDOWS, "basedir": "/c/slave/test-1"}
    assert (slave.enabled, slave.current_masterid, slave.current_master, slave.notes) == (
        False,
        None,
        None,
        "flaky disk",
    )


@pytest.mark.parametrize(
    ("raw", "converted"),
    [
        ("C:\\slave\\test-1", "/c/slave/test-1"),
        ("D:\\builds\\moz2_slave", "/d/builds/moz2_slave"),
        ("e:/slave", "/e/slave"),
        ("C:\\", "/c/"),
        ("C:slave", "/c/slave"),
        ("/builds/slave", "/builds/slave"),
        ("/Users/cltbld/talos-slave", "/Users/cltbld/talos-slave"),
    ],
)
def test_convert_basedir(raw: str, converted: str) -> None:
    assert convert_basedir(raw) == converted


@pytest_twisted.ensureDeferred
async def test_unknown_slave_is_none() -> None:
    fake = FakeSlavealloc([LINUX], [MASTER])
    assert await _client(fake).get_slave("nobody") is None


@pytest_twisted.ensureDeferred
async def test_list_slaves() -> None:
    fake = FakeSlavealloc([LINUX, WINDOWS], [MASTER])
    slaves = await _client(fake).list_slaves()
    assert [s.name for s in slaves] == ["bld-linux64-ix-001", "t-w864-ix-001"]
    assert [s.basedir for s in slaves] == ["/builds/slave", "/c/slave/test-1"]
    assert fake.requests[0].path == "/api/slaves"
    assert fake.requests[0].args == {}


@pytest_twisted.ensureDeferred
async def test_get_master() -> None:
    fake = FakeSlavealloc([LINUX], [MASTER])
    master = await _client(fake).get_master(3)
    assert master == MasterRecord(
        masterid=3, nickname="bm01-build1", fqdn="bm01.lab.example", http_port=8001, pb_port=9001, enabled=True
    )
    assert await _client(fake).get_master(99) is None


@pytest_twisted.ensureDeferred
async def test_set_enabled_puts_and_later_reads_show_it() -> None:
    fake = FakeSlavealloc([LINUX], [MASTER])
    client = _client(fake)
    slave = await client.get_slave("bld-linux64-ix-001")
    assert slave is not None
    updated = await client.set_enabled(slave, False)
    assert updated.enabled is False
    assert updated.slaveid == 7
    put = fake.requests[-1]
    assert (put.method, put.path, put.json()) == ("PUT", "/api/slaves/7", {"enabled": False})
    again = await client.get_slave("bld-linux64-ix-001")
    assert again is not None and again.enabled is False
    assert (await client.set_enabled(again, True)).enabled is True


@pytest_twisted.ensureDeferred
async def test_server_error_names_service_url_and_status() -> None:
    fake = FakeSlavealloc([LINUX], [MASTER])
    fake.fail_with = 500
    with pytest.raises(RemoteError) as caught:
        await _client(fake).get_slave("bld-linux64-ix-001")
    assert str(caught.value) == (
        "slavealloc: GET http://slavealloc.test/api/slaves/bld-linux64-ix-001?byname=1 failed: "
        "HTTP 500 Internal Server Error"
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({k: v for k, v in LINUX.items() if k != "name"}, "slave has no name"),
        ({k: v for k, v in LINUX.items() if k != "slaveid"}, "slave has no slaveid"),
        ({**LINUX, "slaveid": "7"}, "slave.slaveid is a string, expected an integer"),
        ({**LINUX, "name": ""}, "slave.name is empty"),
        ({**LINUX, "enabled": "yes"}, "slave.enabled is a string, expected a boolean"),
        ({**LINUX, "basedir": 5}, "slave.basedir is a number, expected a string"),
        ({**LINUX, "current_masterid": True}, "slave.current_masterid is a boolean, expected an integer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_slave_is_a_remote_error(record: dict[str, Any], reason: str) -> None:
    fake = FakeSlavealloc([record], [MASTER])
    fake.listing = [record]
    name = record.get("name") or "bld-linux64-ix-001"
    with pytest.raises(RemoteError) as caught:
        await _client(fake).list_slaves()
    assert str(caught.value) == (
        f"slavealloc: GET http://slavealloc.test/api/slaves failed: malformed answer: "
        f"{reason.replace('slave', 'slaves[0]', 1)}"
    )
    if record.get("name"):
        with pytest.raises(RemoteError) as caught:
            await _client(fake).get_slave(name)
        assert str(caught.value).endswith(f"failed: malformed answer: {reason}")


@pytest_twisted.ensureDeferred
async def test_listing_that_is_not_a_list() -> None:
    fake = FakeSlavealloc([], [MASTER])
    fake.listing = {"slaves": []}
    with pytest.raises(RemoteError) as caught:
        await _client(fake).list_slaves()
    assert str(caught.value) == (
        "slavealloc: GET http://slavealloc.test/api/slaves failed: expected a list of slaves, got an object"
    )


@pytest_twisted.ensureDeferred
async def test_malformed_master() -> None:
    fake = FakeSlavealloc([LINUX], [{**MASTER, "fqdn": None}])
    with pytest.raises(RemoteError) as caught:
        await _client(fake).get_master(3)
    assert str(caught.value) == (
        "slavealloc: GET http://slavealloc.test/api/masters/3 failed: malformed answer: master has no fqdn"
    )


def _record(name: str, purpose: str, environment: str, pool: str, enabled: bool) -> SlaveRecord:
    return SlaveRecord(
        slaveid=ord(name[0]),
        name=name,
        purpose=purpose,
        environment=environment,
        pool=pool,
        datacenter="scl3",
        distro="centos6",
        trustlevel="core",
        basedir="/builds/slave",
        enabled=enabled,
        current_masterid=None,
        current_master=None,
        notes="",
    )


def test_filter_slaves() -> None:
    a = _record("a", "build", "prod", "build-scl3", True)
    b = _record("b", "tests", "prod", "tests-scl3", False)
    c = _record("c", "build", "dev", "build-aws", True)
    d = _record("d", "build", "prod", "build-aws", False)
    everyone = [a, b, c, d]
    assert filter_slaves(everyone) == everyone
    assert filter_slaves(everyone, purpose="build") == [a, c, d]
    assert filter_slaves(everyone, environment="prod") == [a, b, d]
    assert filter_slaves(everyone, pools=["build-aws", "tests-scl3"]) == [b, c, d]
    assert filter_slaves(everyone, enabled=False) == [b, d]
    assert filter_slaves(everyone, enabled=True, purpose="build", environment="prod") == [a]
    assert filter_slaves(everyone, purpose="build", pools=("build-aws",), enabled=False) == [d]
    assert filter_slaves(everyone, purpose="nothing") == []
