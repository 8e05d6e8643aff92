"""Tests for slaveapi.clients.inventory: PDUOutlet parsing and the inventory client."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.logger import capturedLogs

from slaveapi.clients.http import RemoteError
from slaveapi.clients.inventory import InventoryClient, InventorySystem, PDUOutlet
from slaveapi.config import Secret

from .fakeapi import HANG, FakeJSONAPI, SeenRequest, make_json_client

API = "http://inventory.test/en-US/tasty/v3"
PASSWORD = "pässw0rd-Inventory"
FQDN = "bld-linux64-ix-001.build.lab.example"

SYSTEM = {
    "hostname": FQDN,
    "asset_tag": "X1234",
    "key_value": [
        {"key": "system.pdu.0", "value": "pdu1.lab.example:AB12"},
        {"key": "system.imaging_server.0", "value": "mobile-imaging-001.lab.example"},
        {"key": "nic.0.mac_address.0", "value": "00:11:22:33:44:55"},
    ],
}


class FakeInventory(FakeJSONAPI):
    """The inventory wire format: GET /system/?format=json&hostname=<fqdn>, basic auth."""

    def __init__(self, systems: list[dict[str, Any]], user: str = "slaveapi", password: str = PASSWORD) -> None:
        super().__init__()
        self.systems = systems
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.expected_auth = f"Basic {token}"
        self.require_auth = True
        self.hang = False

    def answer(self, seen: SeenRequest) -> Any:
        assert (seen.method, seen.path) == ("GET", "/en-US/tasty/v3/system/")
        if self.hang:
            return HANG
        if self.require_auth and seen.headers.get("authorization") != self.expected_auth:
            return 401, {"detail": "Authentication credentials were not provided."}
        assert seen.args["format"] == ["json"]
        (hostname,) = seen.args["hostname"]
        found = [s for s in self.systems if s["hostname"] == hostname]
        return 200, {"meta": {"total_count": len(found)}, "objects": found}


def _client(fake: FakeInventory, username: str | None = "slaveapi", password: str | None = PASSWORD):
    json_client, _stub, clock = make_json_client("inventory", fake, timeout=10)
    secret = Secret(password) if password is not None else None
    return InventoryClient(API, username, secret, json_client), clock


# --- PDUOutlet ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "outlet", "tower", "infeed", "number"),
    [
        ("pdu1.lab.example:AA12", "pdu1.lab.example", "AA12", 1, 1, 12),
        ("pdu2.lab.example:BC3", "pdu2.lab.example", "BC3", 2, 3, 3),
        ("pdu-3:ca1", "pdu-3", "CA1", 3, 1, 1),
        ("10.0.0.1:AB24", "10.0.0.1", "AB24", 1, 2, 24),
    ],
)
def test_pdu_parse(value: str, host: str, outlet: str, tower: int, infeed: int, number: int) -> None:
    pdu = PDUOutlet.parse(value)
    assert pdu == PDUOutlet(host, outlet)
    assert (pdu.tower, pdu.infeed, pdu.number) == (tower, infeed, number)
    assert str(pdu) == f"{host}:{outlet}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("pdu1.lab.example", "PDU value 'pdu1.lab.example' is not <pdu host>:<outlet>, e.g. pdu1.example:AA12"),
        (":AA12", "PDU value ':AA12' is not <pdu host>:<outlet>, e.g. pdu1.example:AA12"),
        ("pdu1:", "PDU outlet '' is not <tower letter><infeed letter><outlet number>, e.g. AA12"),
        ("pdu1:A12", "PDU outlet 'A12' is not <tower letter><infeed letter><outlet number>, e.g. AA12"),
        ("pdu1:AA", "PDU outlet 'AA' is not <tower letter><infeed letter><outlet number>, e.g. AA12"),
        ("pdu1:AA0", "PDU outlet 'AA0' is not <tower letter><infeed letter><outlet number>, e.g. AA12"),
        ("pdu1:12AA", "PDU outlet '12AA' is not <tower letter><infeed letter><outlet number>, e.g. AA12"),
        ("pdu 1:AA1", "PDU host 'pdu 1' is not a host name"),
        ("pdu1;rm -rf /:AA1", "PDU host 'pdu1;rm -rf /' is not a host name"),
    ],
)
def test_pdu_parse_malformed(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PDUOutlet.parse(value)
    assert str(caught.value) == message


# --- InventoryClient ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_system_with_basic_auth() -> None:
    fake = FakeInventory([SYSTEM])
    client, _ = _client(fake)
    system = await client.get_system(FQDN)
    assert system == InventorySystem(
        hostname=FQDN,
        pdu=PDUOutlet("pdu1.lab.example", "AB12"),
        imaging_server="mobile-imaging-001.lab.example",
        key_values={
            "system.pdu.0": "pdu1.lab.example:AB12",
            "system.imaging_server.0": "mobile-imaging-001.lab.example",
            "nic.0.mac_address.0": "00:11:22:33:44:55",
        },
    )
    assert fake.requests[0].headers["authorization"] == fake.expected_auth
    assert fake.requests[0].args == {"format": ["json"], "hostname": [FQDN]}


@pytest_twisted.ensureDeferred
async def test_unknown_host_is_none() -> None:
    client, _ = _client(FakeInventory([SYSTEM]))
    assert await client.get_system("nobody.lab.example") is None


@pytest_twisted.ensureDeferred
async def test_no_auth_without_username_or_password() -> None:
    fake = FakeInventory([SYSTEM])
    fake.require_auth = False
    client, _ = _client(fake, username=None)
    assert (await client.get_system(FQDN)) is not None
    client, _ = _client(fake, password=None)
    assert (await client.get_system(FQDN)) is not None
    assert [r.headers.get("authorization") for r in fake.requests] == [None, None]


@pytest_twisted.ensureDeferred
async def test_system_without_pdu_or_imaging_server() -> None:
    bare = {"hostname": FQDN, "key_value": []}
    client, _ = _client(FakeInventory([bare]))
    assert await client.get_system(FQDN) == InventorySystem(FQDN, None, None, {})


@pytest_twisted.ensureDeferred
async def test_malformed_pdu_is_logged_and_ignored() -> None:
    system = {**SYSTEM, "key_value": [{"key": "system.pdu.0", "value": "pdu1.lab.example"}]}
    client, _ = _client(FakeInventory([system]))
    with capturedLogs() as events:
        found = await client.get_system(FQDN)
    assert found is not None and found.pdu is None
    assert found.key_values == {"system.pdu.0": "pdu1.lab.example"}
    warnings = [e for e in events if e.get("key") == "system.pdu.0"]
    assert len(warnings) == 1
    assert warnings[0]["fqdn"] == FQDN
    assert "is not <pdu host>:<outlet>" in warnings[0]["reason"]


@pytest_twisted.ensureDeferred
async def test_bad_credentials_error_does_not_show_password() -> None:
    fake = FakeInventory([SYSTEM], password="the-right-one")
    client, _ = _client(fake)
    with pytest.raises(RemoteError) as caught:
        await client.get_system(FQDN)
    error = caught.value
    assert str(error) == (
        "inventory: GET http://inventory.test/en-US/tasty/v3/system/?format=json&"
        "hostname=bld-linux64-ix-001.build.lab.example failed: HTTP 401 Unauthorized"
    )
    _assert_no_secret(error)


def test_timeout_error_does_not_show_password() -> None:
    fake = FakeInventory([SYSTEM])
    fake.hang = True
    client, clock = _client(fake)
    d = ensureDeferred(client.get_system(FQDN))
    clock.advance(10)
    errors: list[BaseException] = []
    d.addErrback(lambda f: errors.append(f.value))
    (error,) = errors
    assert isinstance(error, RemoteError)
    assert str(error).endswith("failed: timed out after 10s")
    _assert_no_secret(error)


@pytest_twisted.ensureDeferred
async def test_malformed_answer() -> None:
    fake = FakeInventory([])
    fake.answer = lambda seen: (200, [{"hostname": FQDN}])  # type: ignore[method-assign]  # scripts the fake
    client, _ = _client(fake)
    with pytest.raises(RemoteError) as caught:
        await client.get_system(FQDN)
    assert str(caught.value).endswith("failed: malformed answer: expected an object with an objects list")


def _assert_no_secret(error: BaseException) -> None:
    """Neither the password nor its base64 form appear anywhere in the error."""
    token = base64.b64encode(f"slaveapi:{PASSWORD}".encode()).decode()
    texts = [str(error), repr(error), repr(error.args), repr(vars(error))]
    for text in texts:
        assert PASSWORD not in text
        assert token not in text
