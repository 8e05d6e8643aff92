"""
In-memory slavealloc and devices.json for tests of the web layer and the
known-machine check: they know exactly the names they are given and count
every question, so a test can tell that nothing was asked.
"""

from __future__ import annotations

from types import SimpleNamespace

from slaveapi.clients.devices import Device
from slaveapi.clients.slavealloc import SlaveRecord

#: The machines the core tests' slavealloc knows unless told otherwise.
DEFAULT_NAMES = tuple(f"bld-{n}" for n in range(1, 10))


def slave_record(name: str, slaveid: int = 1) -> SlaveRecord:
    """A plain enabled slavealloc record for C{name}."""
    return SlaveRecord(
        slaveid=slaveid, name=name, purpose="build", environment="prod", pool="build-lab", datacenter="lab",
        distro="centos6", trustlevel="core", basedir="/builds/slave", enabled=True, current_masterid=None,
        current_master=None, notes="",
    )


class FakeSlavealloc:
    """Knows the slaves named (in any case, like slavealloc's database); C{asked} lists every name looked up."""

    def __init__(self, names: tuple[str, ...] = DEFAULT_NAMES) -> None:
        self.records = {name.lower(): slave_record(name, index + 1) for index, name in enumerate(names)}
        self.asked: list[str] = []

    async def get_slave(self, name: str) -> SlaveRecord | None:
        self.asked.append(name)
        return self.records.get(name.lower())

    async def get_master(self, masterid: int) -> None:
        return None


class FakeDevices:
    """Knows the devices named (each driven by C{foopy-1}); C{asked} lists every lookup."""

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self.names = set(names)
        self.asked: list[str] = []

    async def get_device(self, name: str) -> Device | None:
        self.asked.append(name)
        return Device(name=name, foopy="foopy-1") if name in self.names else None


def fake_clients(names: tuple[str, ...] = DEFAULT_NAMES, devices: tuple[str, ...] = ()) -> SimpleNamespace:
    """Clients with only slavealloc and devices.json: what identifying a machine may ask."""
    return SimpleNamespace(slavealloc=FakeSlavealloc(names), devices=FakeDevices(devices))
