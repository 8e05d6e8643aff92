"""
The clients the core tests of the web layer and the known-machine check
use: the shipped fakes, with a slavealloc and a devices.json that know
exactly the names they are given and count every question, so a test can
tell that nothing was asked.
"""

from __future__ import annotations

from typing import Any

from slaveapi.context import Clients
from slaveapi.testing import FakeDevices, FakeSlavealloc, make_fakes, slave_record

__all__ = ["DEFAULT_NAMES", "FakeDevices", "FakeSlavealloc", "fake_clients", "slave_record"]

#: The machines the core tests' slavealloc knows unless told otherwise.
DEFAULT_NAMES = tuple(f"bld-{n}" for n in range(1, 10))


def fake_clients(
    names: tuple[str, ...] = DEFAULT_NAMES, devices: tuple[str, ...] = (), clock: Any = None
) -> Clients:
    """
    Fakes of every client, whose slavealloc knows C{names} and whose
    devices.json knows C{devices} (each driven by C{foopy-1}).

    @param clock: what the fakes time their waits with (a new C{Clock} by default).
    """
    fakes = make_fakes(clock=clock)
    fakes.slavealloc = FakeSlavealloc(names)
    fakes.devices = FakeDevices(devices)
    return fakes.clients()
