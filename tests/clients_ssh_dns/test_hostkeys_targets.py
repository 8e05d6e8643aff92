"""
Which hosts the enrolment command scans: every host SlaveAPI logs in to,
once, named as SlaveAPI resolves it (see also the lab run in
C{tests/e2e/test_host_key_enrolment.py}).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest_twisted

from slaveapi.clients.devices import Device
from slaveapi.hostkeys import _Target, _targets


class _Slavealloc:
    def __init__(self, *names: str) -> None:
        self._names = names

    async def list_slaves(self) -> list[Any]:
        return [SimpleNamespace(name=name) for name in self._names]


class _Devices:
    def __init__(self, *devices: Device) -> None:
        self._devices = list(devices)

    async def list_devices(self) -> list[Device]:
        return self._devices


class _DNS:
    """Qualifies like L{slaveapi.clients.dns.DNSClient.qualify}."""

    def qualify(self, name: str) -> str:
        return name if "." in name else f"{name}.build.example.com"


_CONFIG: Any = SimpleNamespace(
    slaves=SimpleNamespace(default_domain="build.example.com"),
    aws=SimpleNamespace(
        build_loaner_names=("dev-linux64-ec2-*",),
        test_loaner_names=(),
        build_domain="loaners.example.com",
        test_domain=None,
    ),
)


@pytest_twisted.ensureDeferred
async def test_slavealloc_devices_and_their_foopies_each_once() -> None:
    slavealloc = _Slavealloc("bld-linux64-ix-001", "panda-0001", "foopy02", "dev-linux64-ec2-jdoe")
    devices = _Devices(
        Device("panda-0001", "foopy01"),  # slavealloc lists the device too
        Device("panda-0002", "foopy01"),  # the same foopy again
        Device("panda-0003", "foopy01.build.example.com"),  # and by its FQDN
        Device("panda-0004", "FOOPY02"),  # a foopy slavealloc lists
        Device("panda-0005", None),  # no foopy: SlaveAPI logs in to the device itself
    )
    targets = await _targets(_CONFIG, _DNS(), slavealloc, devices)  # type: ignore[arg-type]  # partial fakes
    assert targets == [
        _Target("bld-linux64-ix-001", "bld-linux64-ix-001.build.example.com"),
        _Target("panda-0001", "panda-0001.build.example.com"),
        _Target("foopy02", "foopy02.build.example.com"),
        # A loaner name resolves in its loaner domain, as SlaveAPI names it.
        _Target("dev-linux64-ec2-jdoe", "dev-linux64-ec2-jdoe.loaners.example.com"),
        _Target("panda-0002", "panda-0002.build.example.com"),
        _Target("panda-0003", "panda-0003.build.example.com"),
        _Target("panda-0004", "panda-0004.build.example.com"),
        _Target("panda-0005", "panda-0005.build.example.com"),
        _Target("foopy01", "foopy01.build.example.com"),
    ]


@pytest_twisted.ensureDeferred
async def test_without_devices_json_only_slavealloc_is_scanned() -> None:
    targets = await _targets(_CONFIG, _DNS(), _Slavealloc("bld-linux64-ix-001"), _Devices())  # type: ignore[arg-type]  # partial fakes
    assert targets == [_Target("bld-linux64-ix-001", "bld-linux64-ix-001.build.example.com")]
