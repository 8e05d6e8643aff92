"""
In-memory DNS and liveness probes over the L{FakeHosts} machines.

The prober's waits poll on the reactor it is given, like the real one: with
a C{Clock}, a test moves them on by advancing it.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from slaveapi.clients.dns import HostInfo, host_info
from slaveapi.clients.probe import Prober
from slaveapi.config import ProbeConfig
from slaveapi.interfaces import IDNS, IProber
from slaveapi.testing._hosts import FakeHosts


@implementer(IDNS)
class FakeDNS:
    """
    The machines' names and their BMCs' C{-mgmt} names, plus C{names}
    (qualified name to address). With C{error} set, every lookup raises it.
    """

    def __init__(self, hosts: FakeHosts | None = None, default_domain: str = "example.test") -> None:
        self._hosts = hosts
        self._domain = default_domain.strip(".")
        self.names: dict[str, str] = {}
        self.asked: list[str] = []
        self.error: Exception | None = None

    def qualify(self, name: str) -> str:
        return name if "." in name else f"{name}.{self._domain}"

    async def lookup_host(self, name: str) -> HostInfo | None:
        self.asked.append(name)
        if self.error is not None:
            raise self.error
        fqdn = self.qualify(name).rstrip(".").lower()
        if fqdn in self.names:
            return host_info(name, fqdn, self.names[fqdn])
        if self._hosts is None:
            return None
        host = self._hosts.find(fqdn)
        if host is not None:
            return host_info(name, host.fqdn, host.ip)
        host = self._hosts.by_bmc(fqdn)
        if host is not None and host.bmc_ip is not None:
            return host_info(name, host.mgmt_fqdn, host.bmc_ip)
        return None

    async def reverse(self, ip: str) -> str | None:
        if self.error is not None:
            raise self.error
        for name, address in self.names.items():
            if address == ip:
                return name
        host = self._hosts.find(ip) if self._hosts is not None else None
        return host.fqdn if host is not None else None

    async def ipmi_name(self, name: str) -> str | None:
        host = self._hosts.find(self.qualify(name)) if self._hosts is not None else None
        return host.mgmt_fqdn if host is not None and host.bmc_ip is not None else None


@implementer(IProber)
class FakeProber(Prober):
    """
    The real prober's waits over simulated machines: a machine answers when
    it is up. With C{error} set, L{alive} raises it (a probe that cannot
    run). C{asked} lists every host probed.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None, config: ProbeConfig | None = None) -> None:
        super().__init__(reactor, config or ProbeConfig(), ssh_port=22)
        self._hosts = hosts
        self.asked: list[str] = []
        self.error: Exception | None = None

    async def alive(self, host: str) -> bool:
        self.asked.append(host)
        if self.error is not None:
            raise self.error
        machine = self._hosts.find(host) if self._hosts is not None else None
        return machine is not None and machine.up
