"""
The simulated machines the fakes share: whether each is up, since when, and
what takes it down and brings it back, on the reactor's clock.

A reboot (over SSH) or a power cycle (IPMI, a PDU, Mozpool) takes the
machine down at once; it is up again C{boot_seconds} later, unless it is a
machine that never comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.base import DelayedCall


@dataclass
class FakeHost:
    """
    One machine.

    @ivar name: its short name, e.g. C{bld-1}.
    @ivar ip: the address DNS gives for it.
    @ivar bmc_ip: its BMC's address (C{<name>-mgmt} in DNS), if it has one.
    @ivar redfish: its BMC speaks Redfish (L{FakeRedfish}) rather than only IPMI.
    @ivar outlet: the PDU outlet powering it, as inventory writes it
        (C{pdu1.example.test:AA1}), if any.
    @ivar imaging_server: its Mozpool server, if any.
    @ivar comes_back: False for a machine that stays down once it went down.
    @ivar booted_at: when it last booted, in reactor seconds.
    """

    name: str
    ip: str
    domain: str = "example.test"
    bmc_ip: str | None = None
    redfish: bool = False
    outlet: str | None = None
    imaging_server: str | None = None
    up: bool = True
    comes_back: bool = True
    boot_seconds: float = 60.0
    booted_at: float = -86400.0
    reboots: int = 0
    _boot: DelayedCall | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fqdn(self) -> str:
        """Its fully qualified name."""
        return f"{self.name}.{self.domain}"

    @property
    def mgmt_fqdn(self) -> str:
        """Its BMC's name."""
        return f"{self.name}-mgmt.{self.domain}"


class FakeHosts:
    """The machines, by name, FQDN, address, BMC address and outlet; C{reactor} keeps the time."""

    def __init__(self, reactor: Any, hosts: list[FakeHost] | None = None) -> None:
        self.reactor = reactor
        self._hosts: dict[str, FakeHost] = {}
        for host in hosts or []:
            self.add(host)

    def add(self, host: FakeHost) -> FakeHost:
        """Add C{host}; returns it."""
        self._hosts[host.name.lower()] = host
        return host

    def __iter__(self) -> Iterator[FakeHost]:
        return iter(list(self._hosts.values()))

    def find(self, name_or_address: str) -> FakeHost | None:
        """The machine with this short name, FQDN or address, if any."""
        wanted = name_or_address.lower().rstrip(".")
        for host in self._hosts.values():
            if wanted in (host.name.lower(), host.fqdn.lower(), host.ip):
                return host
        return None

    def by_bmc(self, address: str) -> FakeHost | None:
        """The machine whose BMC has this address or name."""
        return next((h for h in self._hosts.values() if address in (h.bmc_ip, h.mgmt_fqdn)), None)

    def by_outlet(self, outlet: str) -> FakeHost | None:
        """The machine powered by this outlet (C{host:outlet})."""
        return next((h for h in self._hosts.values() if h.outlet is not None and h.outlet.upper() == outlet.upper()),
                    None)

    def uptime(self, host: FakeHost) -> float:
        """Seconds since C{host} booted."""
        return float(self.reactor.seconds()) - host.booted_at

    def go_down(self, host: FakeHost) -> None:
        """Take C{host} down now; it boots again C{boot_seconds} later if it C{comes_back}."""
        host.up = False
        host.reboots += 1
        if host._boot is not None and host._boot.active():
            host._boot.cancel()
        host._boot = self.reactor.callLater(host.boot_seconds, self._booted, host) if host.comes_back else None

    def power_off(self, host: FakeHost) -> None:
        """Cut C{host}'s power: it goes down now and stays down until L{power_on}."""
        if host._boot is not None and host._boot.active():
            host._boot.cancel()
        host._boot = None
        host.up = False

    def power_on(self, host: FakeHost) -> None:
        """Power C{host} on: it boots C{boot_seconds} later if it is off and C{comes_back}."""
        if host.up or (host._boot is not None and host._boot.active()):
            return
        host.reboots += 1
        host._boot = self.reactor.callLater(host.boot_seconds, self._booted, host) if host.comes_back else None

    def powered(self, host: FakeHost) -> bool:
        """Whether C{host} has power: up, or booting."""
        return host.up or (host._boot is not None and host._boot.active())

    def _booted(self, host: FakeHost) -> None:
        host.up = True
        host.booted_at = float(self.reactor.seconds())
        host._boot = None
