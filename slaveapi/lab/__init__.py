"""
The simulated fleet ("the lab"): fake services speaking the real protocols.

SlaveAPI's clients talk to the lab exactly as to production: a DNS server
for the lab zone, one SSH server per machine on its own loopback address,
and HTTP fakes of slavealloc, inventory, buildapi, Bugzilla and devices.json.
Reboots really take machines away for a while. See docs/lab.rst for the
fleet and how to run it, and docs/remote-apis.rst for the wire contract.

The lab imports nothing from SlaveAPI's actions, web or clients: it is a
stand-in for the outside world.

The names below are imported on first use, so that importing this package
(as C{python -m slaveapi.lab} does) installs no reactor: conch imports
C{twisted.internet.reactor}, and the asyncio reactor must come first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # "X as X" marks an explicit re-export for type checkers.
    from slaveapi.lab._lab import (
        DEFAULT_DOMAIN as DEFAULT_DOMAIN,
        Lab as Lab,
        LabService as LabService,
    )
    from slaveapi.lab.bugzilla import (
        BugzillaFake as BugzillaFake,
        LabBug as LabBug,
        LabComment as LabComment,
    )
    from slaveapi.lab.dns import (
        LabDNS as LabDNS,
    )
    from slaveapi.lab.fleet import Fleet as Fleet, build_fleet as build_fleet
    from slaveapi.lab.http import (
        LabHTTP as LabHTTP,
    )
    from slaveapi.lab.machines import (
        LINUX as LINUX,
        MACOS as MACOS,
        SSH_NONE as SSH_NONE,
        SSH_OK as SSH_OK,
        SSH_REFUSE_LOGIN as SSH_REFUSE_LOGIN,
        SSH_USER as SSH_USER,
        WINDOWS as WINDOWS,
        LabHost as LabHost,
        LabJob as LabJob,
        LabMachine as LabMachine,
        LabMaster as LabMaster,
    )
    from slaveapi.lab.power import (
        PowerControl as PowerControl,
    )
    from slaveapi.lab.ssh import (
        LabSSHServer as LabSSHServer,
    )

_HOMES = {
    "slaveapi.lab._lab": ("DEFAULT_DOMAIN", "Lab", "LabService"),
    "slaveapi.lab.bugzilla": ("BugzillaFake", "LabBug", "LabComment"),
    "slaveapi.lab.dns": ("LabDNS",),
    "slaveapi.lab.fleet": ("Fleet", "build_fleet"),
    "slaveapi.lab.machines": (
        "LINUX",
        "MACOS",
        "SSH_NONE",
        "SSH_OK",
        "SSH_REFUSE_LOGIN",
        "SSH_USER",
        "WINDOWS",
        "LabHost",
        "LabJob",
        "LabMachine",
        "LabMaster",
    ),
    "slaveapi.lab.http": ("LabHTTP",),
    "slaveapi.lab.power": ("PowerControl",),
    "slaveapi.lab.ssh": ("LabSSHServer",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'slaveapi.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
