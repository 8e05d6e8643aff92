"""The Lab as a whole: its config for SlaveAPI, start-up cost, the service wrapper and C{python -m slaveapi.lab}."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionRefusedError

from slaveapi.config import ApiToken, Secret, load_config
from slaveapi.lab import Lab, LabService, build_fleet

from .conftest import NOW


def _reactor():
    from twisted.internet import reactor

    return reactor


def test_write_config_loads_and_points_at_the_lab(lab: Lab, tmp_path) -> None:
    tokens = {"dashboard": "d" * 32}
    ini = lab.write_config(str(tmp_path / "etc"), listen="tcp:0:interface=127.0.0.1", api_tokens=tokens)
    assert ini == str(tmp_path / "etc" / "slaveapi.ini")
    config = load_config(ini)
    url = f"http://127.0.0.1:{lab.http_port}"
    assert config.server.listen == "tcp:0:interface=127.0.0.1"
    assert config.slavealloc.api_url == f"{url}/slavealloc/api"
    assert (config.inventory.api_url, config.inventory.username) == (f"{url}/inventory/api", lab.inventory_user)
    assert config.bugzilla.api_url == f"{url}/bugzilla/rest"
    assert config.buildapi.api_url == f"{url}/buildapi"
    assert config.devices_url == f"{url}/devices.json"
    assert (config.slaves.default_domain, config.slaves.ipmi_username) == ("build.scl3.slaveapi.test", "ADMIN")
    assert config.dns.servers == (("127.0.0.1", lab.dns_port),)
    assert (config.ssh.port, config.ssh.host_keys) == (lab.ssh_port, "strict")
    assert config.ssh.known_hosts == os.path.join(lab.workdir, "known_hosts")
    credentials = config.credentials
    assert credentials.ssh == {"cltbld": (Secret("wrong-first"), Secret(lab.ssh_password))}
    assert credentials.inventory == Secret(lab.inventory_password)
    assert credentials.bugzilla == Secret(lab.bugzilla_api_key)
    assert credentials.ipmi == Secret(lab.ipmi_password)
    assert credentials.snmp_community == Secret(lab.snmp_community)
    assert credentials.api_tokens == {"dashboard": ApiToken(Secret("d" * 32))}
    mode = os.stat(tmp_path / "etc" / "credentials.json").st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert "api_tokens" in json.loads((tmp_path / "etc" / "credentials.json").read_text())


def test_write_config_defaults_and_short_tokens(lab: Lab, tmp_path) -> None:
    config = load_config(lab.write_config(str(tmp_path)))
    assert config.server.listen == "tcp:9999:interface=127.0.0.1"
    assert config.credentials.api_tokens == {}
    with pytest.raises(ValueError):
        lab.write_config(str(tmp_path), api_tokens={"short": "abc"})


def test_secrets_differ_between_labs_and_stay_out_of_reprs(lab: Lab, tmp_path) -> None:
    # A second lab, built but never started (nothing listens), makes secrets of its own.
    other = Lab(_reactor(), build_fleet(12, lab.domain, NOW), str(tmp_path), 0.3, lambda: NOW)
    secrets = ("ssh_password", "inventory_password", "bugzilla_api_key", "ipmi_password", "snmp_community")
    assert [name for name in secrets if getattr(other, name) == getattr(lab, name)] == []
    assert lab.ssh_password not in repr(lab.fleet) and lab.ssh_password not in repr(lab)
    assert lab.bugzilla_api_key not in repr(lab.bugzilla.bugs)


@pytest_twisted.ensureDeferred
async def test_a_200_machine_lab_starts_and_stops_clean(tmp_path) -> None:
    lab = Lab.start(_reactor(), slaves=200, workdir=str(tmp_path), clock=lambda: NOW)
    try:
        assert len(lab.fleet) == 200
        assert (
            sum(1 for m in lab.fleet.all_hosts() if lab.ssh.listening(m)) == 199
        )  # dead and hung: none; the panda answers (refusing logins); foopy: one
        assert len((tmp_path / "known_hosts").read_text().splitlines()) == 201
    finally:
        await lab.stop()
    assert not any(lab.ssh.listening(m) for m in lab.fleet.all_hosts())


@pytest_twisted.ensureDeferred
async def test_lab_service_stops_the_lab(tmp_path) -> None:
    lab = Lab.start(_reactor(), slaves=3, workdir=str(tmp_path))
    service = LabService(lab)
    service.startService()
    assert service.running and service.name == "lab"
    response = await treq.get(lab.http_url + "/devices.json", timeout=5)
    await response.content()
    await service.stopService()
    assert not service.running
    with pytest.raises(ConnectionRefusedError):
        await treq.get(lab.http_url + "/devices.json", timeout=2)


class _Output(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.stdout = b""
        self.printed: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        if b"[devices]" in self.stdout and not self.printed.called:
            self.printed.callback(None)

    def processEnded(self, reason) -> None:
        if not self.printed.called:
            self.printed.errback(reason)
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_python_m_slaveapi_lab(tmp_path) -> None:
    reactor = _reactor()
    output = _Output()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    transport = reactor.spawnProcess(
        output, sys.executable,
        [sys.executable, "-m", "slaveapi.lab", "--slaves", "3", "--workdir", str(tmp_path), "--boot-time", "1"],
        env=env,
    )
    timeout = reactor.callLater(20, transport.signalProcess, "KILL")
    try:
        await output.printed
        lines = output.stdout.decode().splitlines()
        assert lines[0] == str(tmp_path / "slaveapi.ini")
        config = load_config(lines[0])
        response = await treq.get(config.slavealloc.api_url + "/slaves", timeout=5)
        assert [slave["name"] for slave in json.loads(await response.content())] == [
            "bld-linux64-lab-001", "tst-linux64-lab-002", "t-yosemite-r7-lab-003"]
        transport.signalProcess(signal.SIGTERM)
        assert await output.ended == 0
    finally:
        if timeout.active():
            timeout.cancel()
