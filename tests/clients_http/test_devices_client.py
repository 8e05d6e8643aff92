"""Tests for slaveapi.clients.devices against a minimal devices.json fake."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from slaveapi.clients.devices import Device, DevicesClient
from slaveapi.clients.http import RemoteError

from .fakeapi import FakeJSONAPI, SeenRequest, make_json_client

URL = "http://devices.test/tools/devices.json"

DEVICES = {
    "panda-0001": {"foopy": "foopy01", "pdu": "pdu1.lab.example", "pduid": ".AA1"},
    "panda-0002": {"pdu": "pdu1.lab.example", "pduid": ".AA2"},
}


class FakeDevices(FakeJSONAPI):
    """Serves one devices.json document."""

    def __init__(self, document: Any) -> None:
        super().__init__()
        self.document = document

    def answer(self, seen: SeenRequest) -> Any:
        assert (seen.method, seen.path) == ("GET", "/tools/devices.json")
        return 200, self.document


def _client(fake: FakeDevices, url: str | None = URL) -> DevicesClient:
    json_client, _, _ = make_json_client("devices", fake)
    return DevicesClient(url, json_client)


@pytest_twisted.ensureDeferred
async def test_get_device() -> None:
    client = _client(FakeDevices(DEVICES))
    assert await client.get_device("panda-0001") == Device("panda-0001", "foopy01", DEVICES["panda-0001"])
    assert await client.get_device("panda-0002") == Device("panda-0002", None, DEVICES["panda-0002"])


@pytest_twisted.ensureDeferred
async def test_list_devices() -> None:
    assert await _client(FakeDevices(DEVICES)).list_devices() == [
        Device("panda-0001", "foopy01", DEVICES["panda-0001"]),
        Device("panda-0002", None, DEVICES["panda-0002"]),
    ]
    fake = FakeDevices(DEVICES)
    assert await _client(fake, url=None).list_devices() == []
    assert fake.requests == []


@pytest_twisted.ensureDeferred
async def test_unknown_device_is_none() -> None:
    assert await _client(FakeDevices(DEVICES)).get_device("bld-linux64-ix-001") is None


@pytest_twisted.ensureDeferred
async def test_no_url_means_no_call() -> None:
    fake = FakeDevices(DEVICES)
    assert await _client(fake, url=None).get_device("panda-0001") is None
    assert fake.requests == []


@pytest_twisted.ensureDeferred
async def test_malformed_document() -> None:
    with pytest.raises(RemoteError) as caught:
        await _client(FakeDevices(["panda-0001"])).get_device("panda-0001")
    assert str(caught.value) == (
        "devices: GET http://devices.test/tools/devices.json failed: malformed answer: expected an object of devices"
    )
    with pytest.raises(RemoteError) as caught:
        await _client(FakeDevices({"panda-0001": "foopy01"})).get_device("panda-0001")
    assert str(caught.value).endswith("malformed answer: device panda-0001 is not an object")
