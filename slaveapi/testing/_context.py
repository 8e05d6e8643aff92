"""
Every fake at once, sharing one set of machines and one C{Clock}, and the
L{Context} an action runs in on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.task import Clock

from slaveapi.config import (
    BuildapiConfig,
    Config,
    Credentials,
    InventoryConfig,
    ServerConfig,
    ServiceURL,
    SlavesConfig,
)
from slaveapi.context import Clients, Context
from slaveapi.testing._apis import (
    FakeBugzilla,
    FakeBuildapi,
    FakeDevices,
    FakeInventory,
    FakeMaster,
    FakeSlavealloc,
)
from slaveapi.testing._aws import FakeAWS
from slaveapi.testing._hosts import FakeHost, FakeHosts
from slaveapi.testing._network import FakeDNS, FakeProber
from slaveapi.testing._power import FakeIPMI, FakeMozpool, FakePDU, FakeRedfish
from slaveapi.testing._ssh import FakeSSH

#: Where the configured remote systems would be: nothing listens there, and the fakes stand in.
_NOWHERE = "http://127.0.0.1:1"


def fake_config(**overrides: Any) -> Config:
    """A configuration for the domain C{example.test} whose remote systems are never called."""
    config = Config(
        path="/nonexistent/slaveapi.ini",
        server=ServerConfig(),
        slavealloc=ServiceURL(f"{_NOWHERE}/slavealloc"),
        inventory=InventoryConfig(f"{_NOWHERE}/inventory"),
        bugzilla=ServiceURL(f"{_NOWHERE}/bugzilla"),
        buildapi=BuildapiConfig(f"{_NOWHERE}/buildapi"),
        slaves=SlavesConfig(default_domain="example.test"),
        credentials=Credentials(ssh={}),
    )
    return dataclasses.replace(config, **overrides)


@dataclass
class Fakes:
    """
    One fake per client, over the same machines (C{hosts}) and clock; a test
    may replace any of them before asking for L{context}.
    """

    clock: Any
    config: Config
    hosts: FakeHosts
    dns: FakeDNS
    ssh: FakeSSH
    slavealloc: FakeSlavealloc
    inventory: FakeInventory
    buildapi: FakeBuildapi
    bugzilla: FakeBugzilla
    devices: FakeDevices
    prober: FakeProber
    mozpool: FakeMozpool
    ipmi: FakeIPMI
    redfish: FakeRedfish
    pdu: FakePDU
    master: FakeMaster
    aws: FakeAWS

    def clients(self) -> Clients:
        """The fakes as the context's clients."""
        return Clients(
            dns=self.dns,
            ssh=self.ssh,
            slavealloc=self.slavealloc,
            inventory=self.inventory,
            buildapi=self.buildapi,
            bugzilla=self.bugzilla,
            devices=self.devices,
            prober=self.prober,
            mozpool=self.mozpool,
            ipmi=self.ipmi,
            redfish=self.redfish,
            pdu=self.pdu,
            master=self.master,
            aws=self.aws,
        )

    def context(self) -> Context:
        """A context on the fakes, with the clock as its reactor."""
        return Context(config=self.config, clients=self.clients(), reactor=self.clock)


def make_fakes(hosts: Iterable[FakeHost] = (), config: Config | None = None, clock: Any = None) -> Fakes:
    """
    Fakes over the machines C{hosts}, which slavealloc knows, DNS resolves
    and SSH, the probes and power control reach.

    @param config: by default L{fake_config}'s; its C{[probes]} drive the prober.
    @param clock: the reactor the fakes and the actions time with; a new
        C{Clock} by default.
    """
    clock = clock if clock is not None else Clock()
    config = config if config is not None else fake_config()
    machines = FakeHosts(clock, list(hosts))
    return Fakes(
        clock=clock,
        config=config,
        hosts=machines,
        dns=FakeDNS(machines, config.slaves.default_domain),
        ssh=FakeSSH(machines),
        slavealloc=FakeSlavealloc([host.name for host in machines]),
        inventory=FakeInventory(machines),
        buildapi=FakeBuildapi(),
        bugzilla=FakeBugzilla(),
        devices=FakeDevices(),
        prober=FakeProber(clock, machines, config.probes),
        mozpool=FakeMozpool(clock, machines),
        ipmi=FakeIPMI(clock, machines),
        redfish=FakeRedfish(clock, machines),
        pdu=FakePDU(clock, machines),
        master=FakeMaster(),
        aws=FakeAWS(clock),
    )


def fake_context(hosts: Iterable[FakeHost] = (), config: Config | None = None, clock: Any = None) -> Context:
    """A context on fresh fakes (see L{make_fakes})."""
    return make_fakes(hosts, config, clock).context()
