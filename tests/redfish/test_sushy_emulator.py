"""
The Redfish client against a real sushy-emulator (fake driver), over plain
HTTP with basic auth and over HTTPS with a certificate from a throwaway CA.

Skipped when sushy-tools is not installed (it is in setup.cfg's test extra).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.logger import capturedLogs, formatEvent

from slaveapi.clients import BootOverride
from slaveapi.clients._bounded import poll_until
from slaveapi.clients.redfish import RedfishClient, RedfishError, RedfishUnavailable
from slaveapi.config import RedfishConfig, Secret

from . import sushy

reactor: Any = _reactor

HOST = "127.0.0.1"
#: sushy-emulator applies a pending power-on 1 to 11 s after a restart.
POWER_BOUND = 30.0


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sushy.Emulator]:
    emulator = sushy.start(tmp_path_factory.mktemp("sushy-http"))
    yield emulator
    emulator.stop()
    assert emulator.process.returncode is not None


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sushy.Emulator, Path, Path]]:
    directory = tmp_path_factory.mktemp("sushy-https")
    authority = sushy.make_authority(directory, "bmc-ca")
    other = sushy.make_authority(directory, "other-ca")
    emulator = sushy.start(directory, tls=sushy.make_server_cert(directory, authority))
    yield emulator, authority.cert_path, other.cert_path
    emulator.stop()
    assert emulator.process.returncode is not None


def _client(emulator: sushy.Emulator, password: str = sushy.PASSWORD, **settings: Any) -> RedfishClient:
    config = RedfishConfig(scheme=emulator.scheme, port=emulator.port, timeout=10.0, **settings)
    return RedfishClient(config, sushy.USER, Secret(password), reactor)


def _boot(emulator: sushy.Emulator) -> dict[str, Any]:
    """The system's Boot object, read directly (the emulator runs in its own process)."""
    request = urllib.request.Request(f"http://{HOST}:{emulator.port}/redfish/v1/Systems/{sushy.SYSTEM_ID}")
    login = base64.b64encode(f"{sushy.USER}:{sushy.PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {login}")
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  # our own http URL
        boot: dict[str, Any] = json.load(answer)["Boot"]
    return boot


async def _wait_for(client: RedfishClient, state: str) -> str:
    async def check() -> str | None:
        now = await client.power_state(HOST)
        return now if now == state else None

    return await poll_until(reactor, check, 0.5, POWER_BOUND, f"power {state}")


@pytest_twisted.ensureDeferred
async def test_available_power_state_and_health(plain: sushy.Emulator) -> None:
    client = _client(plain)
    try:
        assert await client.available(HOST) is True
        assert await client.power_state(HOST) in ("on", "off")
        assert await client.health(HOST) == "OK"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_force_off_on_and_restart(plain: sushy.Emulator) -> None:
    client = _client(plain)
    try:
        await client.reset(HOST, "ForceOff")
        assert await _wait_for(client, "off") == "off"
        await client.reset(HOST, "On")
        assert await _wait_for(client, "on") == "on"
        await client.reset(HOST, "ForceRestart")
        assert await _wait_for(client, "on") == "on"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_powercycle_sees_the_power_off_then_on(plain: sushy.Emulator) -> None:
    client = _client(plain, poll_interval=0.5, power_timeout=POWER_BOUND)
    lines: list[str] = []
    try:
        await client.reset(HOST, "On")
        assert await _wait_for(client, "on") == "on"
        await client.powercycle(HOST, lines.append)
        assert lines == ["ForceOff requested", "powered off", "power on requested", "powered on"]
        assert await client.power_state(HOST) == "on"
        # From off, only On is sent.
        await client.reset(HOST, "ForceOff")
        assert await _wait_for(client, "off") == "off"
        lines.clear()
        await client.powercycle(HOST, lines.append)
        assert lines == ["already off; power on requested", "powered on"]
        assert await client.power_state(HOST) == "on"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_reset_type_the_emulator_does_not_offer_is_refused(plain: sushy.Emulator) -> None:
    client = _client(plain)
    try:
        with pytest.raises(RedfishError) as raised:
            await client.reset(HOST, "PowerCycle")
        assert str(raised.value) == (
            f"Redfish {HOST}: reset PowerCycle failed: not offered; the BMC allows "
            "On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, Nmi, ForceOn"
        )
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_boot_override_once(plain: sushy.Emulator) -> None:
    client = _client(plain)
    try:
        await client.set_boot_once(HOST, "Pxe")
        assert _boot(plain)["BootSourceOverrideTarget"] == "Pxe"
        # sushy-emulator keeps every override (libvirt's way), so it reports
        # Continuous rather than the Once asked for: the read-back says so.
        assert _boot(plain)["BootSourceOverrideEnabled"] == "Continuous"
        assert await client.boot_override(HOST) == BootOverride("Pxe", once=False)
        await client.set_boot_once(HOST, "Hdd")
        assert _boot(plain)["BootSourceOverrideTarget"] == "Hdd"
        assert await client.boot_override(HOST) == BootOverride("Hdd", once=False)
        # The emulator's allowed targets are Pxe, Cd, Hdd and UefiHttp: no BiosSetup.
        with pytest.raises(RedfishError, match=r"boot override BiosSetup failed: not offered; the BMC allows Pxe, Cd"):
            await client.set_boot_once(HOST, "BiosSetup")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused_and_never_shown(plain: sushy.Emulator) -> None:
    wrong = "not-the-Pa55word"
    client = _client(plain, password=wrong)
    try:
        with capturedLogs() as events, pytest.raises(RedfishError) as raised:
            await client.power_state(HOST)
        assert str(raised.value) == (
            f"Redfish {HOST}: reading the Systems collection failed: HTTP 401: credentials refused"
        )
        lines = [formatEvent(event) for event in events] + [repr(event) for event in events]
        assert not any(wrong in line for line in [*lines, str(raised.value), repr(raised.value)])
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_https_verified_against_the_ca_bundle(tls: tuple[sushy.Emulator, Path, Path]) -> None:
    emulator, ca, _ = tls
    client = _client(emulator, ca_bundle=str(ca))
    try:
        assert await client.power_state(HOST) in ("on", "off")
        assert await client.health(HOST) == "OK"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_https_with_the_wrong_ca_fails_clearly(tls: tuple[sushy.Emulator, Path, Path]) -> None:
    emulator, _, wrong_ca = tls
    client = _client(emulator, ca_bundle=str(wrong_ca))
    try:
        with pytest.raises(RedfishUnavailable) as raised:
            await client.power_state(HOST)
        assert str(raised.value).startswith(f"Redfish {HOST}: reading the service root failed: TLS handshake failed")
        assert "certificate verify failed" in str(raised.value)
        assert await client.available(HOST) is False
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_https_without_verification_works_and_warns(tls: tuple[sushy.Emulator, Path, Path]) -> None:
    emulator, _, _ = tls
    with capturedLogs() as events:
        client = _client(emulator, verify=False)
    try:
        warnings = [formatEvent(event) for event in events if event["log_level"].name == "warn"]
        assert warnings == ["Redfish: [redfish] verify = no: BMC certificates are not checked"]
        assert await client.power_state(HOST) in ("on", "off")
    finally:
        await client.close()
