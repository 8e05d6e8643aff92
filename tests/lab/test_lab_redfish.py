"""
The lab's Redfish BMCs (slaveapi.lab.redfish) against SlaveAPI's own Redfish
client, on the real reactor: HTTPS verified against the lab's CA, sessions.

The machines' boots are delayed calls on a L{Clock} the tests move on, not on
the reactor: a boot racing the HTTPS requests of a test (ten of them take
longer than a short boot on a busy machine) would make what a test sees
depend on the machine's speed.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from slaveapi.clients import BootOverride
from slaveapi.clients.redfish import (
    RedfishAuthError,
    RedfishClient,
    RedfishUnavailable,
    make_redfish_http,
)
from slaveapi.config import RedfishConfig, Secret, load_config
from slaveapi.lab import Lab
from slaveapi.lab._ca import LabCA
from slaveapi.lab._lab import _redfish_bmcs
from slaveapi.lab.fleet import build_fleet
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl
from slaveapi.lab.redfish import RESET_TYPES, SESSION_TIMEOUT, LabRedfish

DOMAIN = "build.scl3.slaveapi.test"
PASSWORD = "lab-redfish-pw"
#: Seconds of the boots' L{Clock}: they pass only when a test calls L{_Running.boot}.
BOOT_TIME = 30.0


class _Watcher:
    """Fires a Deferred when a machine goes down or comes up."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._waiting: dict[tuple[str, str], Deferred[None]] = {}

    def expect(self, name: str, event: str) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self._waiting[(name, event)] = waiting
        return waiting

    def _happened(self, machine: LabMachine, event: str) -> None:
        self.events.append((machine.name, event))
        waiting = self._waiting.pop((machine.name, event), None)
        if waiting is not None:
            waiting.callback(None)

    def machine_down(self, machine: LabMachine) -> None:
        self._happened(machine, "down")

    def machine_up(self, machine: LabMachine) -> None:
        self._happened(machine, "up")


@dataclass
class _Running:
    machine: LabMachine
    service: LabRedfish
    client: RedfishClient
    watcher: _Watcher
    config: RedfishConfig
    #: The session clock's reading, which the tests move on.
    now: list[float]
    #: What the machines' boots are scheduled on: nothing boots until a test says so.
    boots: Clock
    power: PowerControl

    def boot(self) -> None:
        """Let every machine that is on its way up finish booting, now."""
        self.boots.advance(self.power.boot_time)

    def url(self, path: str) -> str:
        return f"https://{self.machine.mgmt_ip}:{self.service.port}{path}"


def _bounded(waiting: Deferred[None], seconds: float = 10.0) -> Deferred[None]:
    from twisted.internet import reactor

    return waiting.addTimeout(seconds, reactor)


def _https(port: int, ca_bundle: Path) -> RedfishConfig:
    return RedfishConfig(scheme="https", port=port, ca_bundle=str(ca_bundle), timeout=5.0, retries=0)


@pytest_twisted.async_yield_fixture
async def running(tmp_path: Path) -> AsyncIterator[_Running]:
    from twisted.internet import reactor

    fleet = build_fleet(12, DOMAIN, time.time())
    _redfish_bmcs(fleet, 0.25)
    machines = [m for m in fleet.machines if m.redfish]
    boots = Clock()
    power = PowerControl(boots, time.time, BOOT_TIME)
    watcher = _Watcher()
    power.add_observer(watcher)
    ca = LabCA()
    now = [1000.0]
    service = LabRedfish.start(reactor, machines, power, "ADMIN", PASSWORD, ca=ca, clock=lambda: now[0])
    config = _https(service.port, Path(ca.write_certificate(str(tmp_path / "lab-ca.pem"))))
    client = RedfishClient(config, "ADMIN", Secret(PASSWORD), reactor)
    try:
        yield _Running(machines[0], service, client, watcher, config, now, boots, power)
    finally:
        power.stop()
        await client.close()
        await service.stop()


async def _request(running: _Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """One HTTPS request to the machine's BMC, verified as the client does: status, headers, JSON (or None)."""
    from twisted.internet import reactor

    http, pool = make_redfish_http(reactor, running.config)
    try:
        response = await http.request(method, running.url(path), **kwargs).addTimeout(10, reactor)
        body = await response.content()
    finally:
        await pool.closeCachedConnections()
    return response.code, response.headers, json.loads(body) if body else None


async def _open_session(running: _Running, password: str = PASSWORD) -> tuple[int, Any, Any]:
    body = json.dumps({"UserName": "ADMIN", "Password": password}).encode()
    return await _request(running, "POST", "/redfish/v1/SessionService/Sessions", data=body)


def test_a_quarter_of_the_twelve_machine_labs_bmcs_speak_redfish() -> None:
    fleet = build_fleet(12, DOMAIN, time.time())
    _redfish_bmcs(fleet, 0.25)
    assert [m.name for m in fleet.machines if m.redfish] == ["bld-linux64-lab-010"]
    _redfish_bmcs(fleet := build_fleet(12, DOMAIN, time.time()), 0.0)
    assert not any(m.redfish for m in fleet.machines)


@pytest_twisted.ensureDeferred
async def test_the_client_reads_the_lab_bmc_over_verified_https_in_sessions(running: _Running) -> None:
    host = running.machine.mgmt_ip
    assert host is not None
    assert running.config.scheme == "https" and running.config.verify
    assert await running.client.available(host) is True
    assert await running.client.power_state(host) == "on"
    assert await running.client.health(host) == "OK"
    assert await running.client.reset_types(host) == RESET_TYPES
    bmc = running.service.bmcs[running.machine.name]
    # One session per call (not basic authentication), each closed again.
    assert bmc.sessions_opened == 3
    assert bmc.sessions == {}


def test_each_bmc_certificate_names_its_mgmt_host_and_address(running: _Running) -> None:
    machine = running.machine
    certificate = x509.load_pem_x509_certificate(running.service.certificates[machine.name].certificate_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["bld-linux64-lab-010-mgmt." + DOMAIN]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(machine.mgmt_ip or "")]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest_twisted.ensureDeferred
async def test_a_client_trusting_another_ca_is_refused_and_nothing_happens(
    running: _Running, tmp_path: Path
) -> None:
    from twisted.internet import reactor

    host = running.machine.mgmt_ip
    assert host is not None
    other = Path(LabCA().write_certificate(str(tmp_path / "other-ca.pem")))
    stranger = RedfishClient(_https(running.service.port, other), "ADMIN", Secret(PASSWORD), reactor)
    try:
        with pytest.raises(RedfishUnavailable, match="TLS"):
            await stranger.reset(host, "ForceOff")
        assert await stranger.available(host) is False
    finally:
        await stranger.close()
    assert running.machine.powered and running.service.resets == []
    assert running.service.bmcs[running.machine.name].sessions_opened == 0


@pytest_twisted.ensureDeferred
async def test_a_session_is_opened_used_and_deleted(running: _Running) -> None:
    code, headers, session = await _open_session(running)
    assert code == 201
    token = headers.getRawHeaders(b"x-auth-token")[0]
    location = headers.getRawHeaders(b"location")[0].decode()
    assert location == session["@odata.id"] == "/redfish/v1/SessionService/Sessions/1"
    assert session["UserName"] == "ADMIN"
    code, _, system = await _request(running, "GET", "/redfish/v1/Systems/1", headers={"X-Auth-Token": token})
    assert code == 200 and system["PowerState"] == "On"
    code, _, sessions = await _request(
        running, "GET", "/redfish/v1/SessionService/Sessions", headers={"X-Auth-Token": token}
    )
    assert code == 200 and sessions["Members"] == [{"@odata.id": location}]
    code, _, _ = await _request(running, "DELETE", location, headers={"X-Auth-Token": token})
    assert code == 204
    code, _, _ = await _request(running, "GET", "/redfish/v1/Systems/1", headers={"X-Auth-Token": token})
    assert code == 401
    assert running.service.bmcs[running.machine.name].sessions == {}


@pytest_twisted.ensureDeferred
async def test_a_bad_password_opens_no_session(running: _Running) -> None:
    code, headers, answer = await _open_session(running, "wrong")
    assert code == 401
    assert headers.getRawHeaders(b"x-auth-token") is None
    assert answer["error"]["message"] == "credentials refused"
    assert running.service.bmcs[running.machine.name].sessions == {}


@pytest_twisted.ensureDeferred
async def test_a_session_unused_for_its_timeout_expires(running: _Running) -> None:
    _, headers, _ = await _open_session(running)
    token = headers.getRawHeaders(b"x-auth-token")[0]
    running.now[0] += SESSION_TIMEOUT - 1
    code, _, _ = await _request(running, "GET", "/redfish/v1/Systems", headers={"X-Auth-Token": token})
    assert code == 200
    # That use kept it alive for another timeout; one without use ends it.
    running.now[0] += SESSION_TIMEOUT - 1
    code, _, _ = await _request(running, "GET", "/redfish/v1/Systems", headers={"X-Auth-Token": token})
    assert code == 200
    running.now[0] += SESSION_TIMEOUT + 1
    code, _, _ = await _request(running, "GET", "/redfish/v1/Systems", headers={"X-Auth-Token": token})
    assert code == 401
    assert running.service.bmcs[running.machine.name].sessions == {}


@pytest_twisted.ensureDeferred
async def test_basic_authentication_is_still_accepted(running: _Running) -> None:
    code, _, system = await _request(running, "GET", "/redfish/v1/Systems/1", auth=("ADMIN", PASSWORD))
    assert code == 200 and system["Name"] == running.machine.name
    code, _, _ = await _request(running, "GET", "/redfish/v1/Systems/1", auth=("ADMIN", "wrong"))
    assert code == 401
    assert running.service.bmcs[running.machine.name].sessions_opened == 0


@pytest_twisted.ensureDeferred
async def test_the_service_root_links_the_sessions_without_credentials(running: _Running) -> None:
    code, _, root = await _request(running, "GET", "/redfish/v1")
    assert code == 200
    assert root["Links"]["Sessions"] == {"@odata.id": "/redfish/v1/SessionService/Sessions"}
    assert root["SessionService"] == {"@odata.id": "/redfish/v1/SessionService"}
    code, _, _ = await _request(running, "GET", "/redfish/v1/SessionService")
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_a_force_restart_takes_the_machine_down_and_it_boots(running: _Running) -> None:
    machine, host = running.machine, running.machine.mgmt_ip
    assert host is not None and machine.up
    booted_before = machine.booted_at
    up = running.watcher.expect(machine.name, "up")
    await running.client.reset(host, "ForceRestart")
    assert not machine.up and running.power.booting(machine)
    running.boot()
    await _bounded(up)
    assert running.watcher.events == [(machine.name, "down"), (machine.name, "up")]
    assert machine.up and machine.booted_at >= booted_before
    assert running.service.resets == [(machine.name, "ForceRestart")]


@pytest_twisted.ensureDeferred
async def test_force_off_cuts_the_power_and_on_brings_it_back(running: _Running) -> None:
    machine, host = running.machine, running.machine.mgmt_ip
    assert host is not None
    await running.client.reset(host, "ForceOff")
    assert not machine.powered and not machine.up
    assert await running.client.power_state(host) == "off"
    up = running.watcher.expect(machine.name, "up")
    await running.client.reset(host, "On")
    assert machine.powered and not machine.up
    assert await running.client.power_state(host) == "on"
    running.boot()
    await _bounded(up)
    assert machine.powered and machine.up


@pytest_twisted.ensureDeferred
async def test_a_boot_override_lasts_until_the_next_boot(running: _Running) -> None:
    machine, host = running.machine, running.machine.mgmt_ip
    assert host is not None
    await running.client.set_boot_once(host, "Pxe")
    assert await running.client.boot_override(host) == BootOverride("Pxe", once=True)
    up = running.watcher.expect(machine.name, "up")
    await running.client.reset(host, "ForceRestart")
    # Down, not booted yet: the override waits for the boot.
    assert not machine.up and running.power.booting(machine)
    assert await running.client.boot_override(host) == BootOverride("Pxe", once=True)
    running.boot()
    await _bounded(up)
    assert machine.up
    assert await running.client.boot_override(host) is None


async def _patch_boot(running: _Running, boot: dict[str, str]) -> int:
    body = json.dumps({"Boot": boot}).encode()
    code, _, _ = await _request(running, "PATCH", "/redfish/v1/Systems/1", data=body, auth=("ADMIN", PASSWORD))
    return code


@pytest_twisted.ensureDeferred
async def test_a_continuous_boot_override_is_kept_for_every_boot_until_disabled(running: _Running) -> None:
    machine, host = running.machine, running.machine.mgmt_ip
    assert host is not None
    continuous = {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"}
    assert await _patch_boot(running, continuous) == 204
    assert await running.client.boot_override(host) == BootOverride("Hdd", once=False)
    up = running.watcher.expect(machine.name, "up")
    await running.client.reset(host, "ForceRestart")
    running.boot()
    await _bounded(up)
    assert machine.up
    # Still there after the boot, unlike a one-time override.
    assert await running.client.boot_override(host) == BootOverride("Hdd", once=False)
    # A target alone keeps it continuous; Enabled alone switches it to once, then off.
    assert await _patch_boot(running, {"BootSourceOverrideTarget": "Pxe"}) == 204
    assert await running.client.boot_override(host) == BootOverride("Pxe", once=False)
    assert await _patch_boot(running, {"BootSourceOverrideEnabled": "Once"}) == 204
    assert await running.client.boot_override(host) == BootOverride("Pxe", once=True)
    assert await _patch_boot(running, {"BootSourceOverrideEnabled": "Disabled"}) == 204
    assert await running.client.boot_override(host) is None


@pytest_twisted.ensureDeferred
async def test_an_unknown_boot_override_kind_is_refused(running: _Running) -> None:
    host = running.machine.mgmt_ip
    assert host is not None
    assert await _patch_boot(running, {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Always"}) == 400
    assert await _patch_boot(running, {}) == 400
    assert await running.client.boot_override(host) is None


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_refused_and_nothing_happens(running: _Running) -> None:
    from twisted.internet import reactor

    host = running.machine.mgmt_ip
    assert host is not None
    intruder = RedfishClient(running.config, "ADMIN", Secret("wrong"), reactor)
    try:
        with pytest.raises(RedfishAuthError):
            await intruder.reset(host, "ForceOff")
    finally:
        await intruder.close()
    assert running.machine.powered and running.service.resets == []


@pytest_twisted.ensureDeferred
async def test_a_machine_without_a_redfish_bmc_does_not_answer(running: _Running) -> None:
    # bld-linux64-lab-001's BMC (127.1.1.1) speaks IPMI: nothing listens there for Redfish.
    assert await running.client.available("127.1.1.1") is False


@pytest_twisted.ensureDeferred
async def test_the_labs_ini_trusts_its_ca_and_reaches_its_redfish_bmc(lab: Lab, tmp_path: Path) -> None:
    from twisted.internet import reactor

    ini = lab.write_config(str(tmp_path / "etc"))
    config = load_config(ini)
    bundle = tmp_path / "etc" / "lab-ca.pem"
    assert lab.redfish is not None
    assert (config.redfish.scheme, config.redfish.port) == ("https", lab.redfish.port)
    assert (config.redfish.verify, config.redfish.ca_bundle) == (True, str(bundle))
    # The CA's certificate only: its key stays in the lab's process.
    assert bundle.read_bytes() == lab.ca.certificate_pem and b"PRIVATE KEY" not in bundle.read_bytes()
    machine = lab.machine("bld-linux64-lab-010")
    assert machine.redfish and machine.mgmt_ip
    client = RedfishClient(config.redfish, "ADMIN", config.credentials.ipmi, reactor)
    try:
        assert await client.power_state(machine.mgmt_ip) == "on"
    finally:
        await client.close()
    assert lab.redfish.bmcs[machine.name].sessions_opened == 1
