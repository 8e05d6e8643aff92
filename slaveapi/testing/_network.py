"""
In-memory DNS and liveness probes over the L{FakeHosts} machines.

The prober's waits poll on the reactor it is given, like the real one: with
a C{Clock}, a test moves them on by advancing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import deferLater
from zope.interface import implementer

from slaveapi.clients.dns import HostInfo
from slaveapi.clients.probe import RebootWait
from slaveapi.config import ProbeConfig
from slaveapi.interfaces import IDNS, IProber
from slaveapi.testing._hosts import FakeHosts


def host_info(asked: str, fqdn: str, ip: str) -> HostInfo:
    """What DNS says of C{fqdn} at C{ip}, asked as C{asked}."""
    labels = fqdn.split(".")
    return HostInfo(
        name=asked.split(".", 1)[0],
        fqdn=fqdn,
        domain=".".join(labels[1:]),
        ip=ip,
        colo=labels[-3] if len(labels) >= 3 else None,
    )


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
class FakeProber:
    """
    A machine answers when it is up. With C{error} set, L{alive} raises it
    (a probe that cannot run). C{asked} lists every host probed.
    """

    def __init__(self, reactor: Any, hosts: FakeHosts | None = None, config: ProbeConfig | None = None) -> None:
        self._reactor = reactor
        self._hosts = hosts
        self._config = config or ProbeConfig()
        self.asked: list[str] = []
        self.error: Exception | None = None

    async def alive(self, host: str) -> bool:
        self.asked.append(host)
        if self.error is not None:
            raise self.error
        machine = self._hosts.find(host) if self._hosts is not None else None
        return machine is not None and machine.up

    async def wait_for(self, host: str, up: bool, limit: float) -> bool:
        started = self._reactor.seconds()
        while True:
            if await self.alive(host) == up:
                return True
            if self._reactor.seconds() - started >= limit:
                return False
            await deferLater(self._reactor, self._config.interval, lambda: None)

    async def wait_for_reboot(self, host: str, progress: Callable[[str], None] | None = None) -> RebootWait:
        started = self._reactor.seconds()
        went_down = await self.wait_for(host, up=False, limit=self._config.down_timeout)
        if not went_down:
            return RebootWait(False, False, self._reactor.seconds() - started)
        if progress:
            progress("down")
        came_back = await self.wait_for(host, up=True, limit=self._config.up_timeout)
        return RebootWait(True, came_back, self._reactor.seconds() - started)
