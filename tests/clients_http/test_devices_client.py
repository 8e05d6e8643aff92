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


@pytest_twisted.ensureDeferred
async def test_a_fetched_copy_serves_lookups_for_a_minute_then_is_fetched_again() -> None:
    from twisted.internet.task import Clock

    from slaveapi.clients.devices import MAX_AGE

    clock = Clock()
    fake = FakeDevices(DEVICES)
    json_client, _, _ = make_json_client("devices", fake)
    client = DevicesClient(URL, json_client, clock)
    for _ in range(3):
        assert (await client.get_device("panda-0001")) is not None
    assert len(fake.requests) == 1
    clock.advance(MAX_AGE - 1)
    assert await client.get_device("panda-0002") is not None
    assert len(fake.requests) == 1
    fake.document = {}
    clock.advance(1)
    assert await client.get_device("panda-0002") is None
    assert len(fake.requests) == 2


@pytest_twisted.ensureDeferred
async def test_lookups_made_during_a_fetch_share_it_and_its_failure() -> None:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    class Held:
        """A JSON client whose answers the test gives."""

        def __init__(self) -> None:
            self.asked: list[Deferred[Any]] = []

        def get_json(self, url: str) -> Deferred[Any]:
            answer: Deferred[Any] = Deferred()
            self.asked.append(answer)
            return answer

    held = Held()
    client = DevicesClient(URL, held, Clock())  # type: ignore[arg-type]  # only get_json is used
    lookups = [Deferred.fromCoroutine(client.get_device(name)) for name in ("panda-0001", "panda-0002", "x")]
    assert len(held.asked) == 1
    held.asked[0].callback(DEVICES)
    found = [await lookup for lookup in lookups]
    assert [device.foopy if device is not None else None for device in found] == ["foopy01", None, None]

    failing = DevicesClient(URL, held, Clock())  # type: ignore[arg-type]
    lookups = [Deferred.fromCoroutine(failing.get_device("panda-0001")) for _ in range(2)]
    held.asked[1].errback(RemoteError("devices", "GET", URL, "HTTP 500"))
    for lookup in lookups:
        with pytest.raises(RemoteError):
            await lookup
    # A failure is not kept: the next lookup fetches again.
    again = Deferred.fromCoroutine(failing.get_device("panda-0001"))
    assert len(held.asked) == 3
    held.asked[2].callback(DEVICES)
    assert (await again) is not None
