"""
In-memory fakes of every client SlaveAPI uses, for tests (like C{treq.testing}).

Each fake provides the zope interface of its kind (L{slaveapi.interfaces})
and fits the spec L{slaveapi.context.Clients} types that field with. They
share simulated machines (L{FakeHost}) whose power follows what is done to
them: a reboot over SSH or a power cycle takes a machine down at once and
brings it back C{boot_seconds} later, on the clock the fakes were given. With
a C{twisted.internet.task.Clock}, a test walks through hours of waiting by
advancing it::

    fakes = make_fakes([FakeHost("bld-1", "10.0.0.1", bmc_ip="10.0.1.1", outlet="pdu1:AA1")])
    fakes.ipmi.outcomes["10.0.1.1"] = Outcome(IPMITimeout("..."), after=30.0)
    run = ActionRun(fakes.context(), "bld-1", ...)   # the context's reactor is fakes.clock
    text = run_on_clock(fakes.clock, reboot(run))     # IPMI times out, the PDU works

Outcomes a fake cannot work out from the machines are scripted on it: SSH
logins and command answers (L{FakeSSH.script_logins}, L{FakeSSH.answer}),
power calls (L{Outcome}; a BMC speaks Redfish to L{FakeRedfish} when its
machine has C{redfish=True}), a probe or a lookup that fails (C{error}).

The PostgreSQL results store is not faked: L{ThrowawayPostgres} runs a real,
throwaway server for its tests (the C{postgres_server} and C{postgres_url}
fixtures of C{tests/conftest.py}).
"""

from slaveapi.clients.dns import host_info
from slaveapi.testing._apis import (
    FakeBugzilla,
    FakeBuildapi,
    FakeDevices,
    FakeInventory,
    FakeMaster,
    FakeSlavealloc,
    slave_record,
)
from slaveapi.testing._aws import FakeAWS
from slaveapi.testing._clock import run_on_clock
from slaveapi.testing._context import Fakes, fake_config, fake_context, make_fakes
from slaveapi.testing._hosts import FakeHost, FakeHosts
from slaveapi.testing._network import FakeDNS, FakeProber
from slaveapi.testing._postgres import ThrowawayPostgres, find_postgres_bin
from slaveapi.testing._power import REDFISH_RESET_TYPES, FakeIPMI, FakeMozpool, FakePDU, FakeRedfish, Outcome
from slaveapi.testing._ssh import REBOOTING_COMMANDS, FakeSSH, FakeSSHSession

__all__ = [
    "REBOOTING_COMMANDS",
    "REDFISH_RESET_TYPES",
    "FakeAWS",
    "FakeBugzilla",
    "FakeBuildapi",
    "FakeDNS",
    "FakeDevices",
    "FakeHost",
    "FakeHosts",
    "FakeIPMI",
    "FakeInventory",
    "FakeMaster",
    "FakeMozpool",
    "FakePDU",
    "FakeProber",
    "FakeRedfish",
    "FakeSSH",
    "FakeSSHSession",
    "FakeSlavealloc",
    "Fakes",
    "Outcome",
    "ThrowawayPostgres",
    "fake_config",
    "fake_context",
    "find_postgres_bin",
    "host_info",
    "make_fakes",
    "run_on_clock",
    "slave_record",
]
