"""
The lab's DNS server: authoritative for the lab zone and for 127.in-addr.arpa.

Every machine's fqdn has an A record for its own loopback address, machines
with a BMC have C{<name>-mgmt}, masters, PDUs, foopies and the imaging
server have theirs, one CNAME gives a machine a second name, and every
address has a PTR. Unknown names in the zone are NXDOMAIN. Records can be
added and removed while the server runs (AWS instances come and go).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.names import authority, dns, server

from slaveapi.lab.fleet import Fleet

_TTL = 60
_NEGATIVE_TTL = 5
_LISTEN_ATTEMPTS = 5
_REVERSE_ZONE = "127.in-addr.arpa"


def reverse_name(ip: str) -> str:
    """C{127.0.1.2} -> C{2.1.0.127.in-addr.arpa}."""
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


class _Zone(authority.FileAuthority):
    """One zone held in memory (FileAuthority's lookup rules, no file)."""

    soa: tuple[bytes, dns.Record_SOA]  # type: ignore[assignment]  # the base declares it None until loaded
    records: dict[bytes, list[Any]]  # type: ignore[assignment]  # the base declares it None until loaded

    def __init__(self, origin: str) -> None:
        self._origin = origin
        super().__init__(origin)

    def loadFile(self, filename: Any) -> None:
        origin = self._origin.encode("ascii")
        self.soa = (
            origin,
            dns.Record_SOA(
                mname=b"ns1." + origin if not self._origin.endswith("arpa") else b"localhost",
                rname=b"hostmaster." + origin,
                serial=1,
                refresh=_TTL,
                retry=_TTL,
                expire=_TTL,
                minimum=_NEGATIVE_TTL,
                ttl=_TTL,
            ),
        )
        self.records = {origin.lower(): [self.soa[1]]}

    def add(self, name: str, record: Any) -> None:
        key = name.lower().encode("ascii")
        if record not in self.records.setdefault(key, []):
            self.records[key].append(record)

    def remove(self, name: str, record: Any) -> None:
        key = name.lower().encode("ascii")
        records = self.records.get(key, [])
        if record in records:
            records.remove(record)
        if not records:
            self.records.pop(key, None)


class LabDNS:
    """
    The DNS server of the lab (UDP and TCP on one port of 127.0.0.1).

    @ivar port: the port it listens on, once started.
    """

    _log = Logger()

    def __init__(self, reactor: Any, fleet: Fleet) -> None:
        self._reactor = reactor
        self.domain = fleet.domain
        self._forward = _Zone(fleet.domain)
        self._reverse = _Zone(_REVERSE_ZONE)
        self._ports: list[IListeningPort] = []
        self.port = 0
        self._forward.add(fleet.domain, dns.Record_NS(b"ns1." + fleet.domain.encode("ascii"), ttl=_TTL))
        for host in fleet.hosts:
            self.add_address(host.fqdn, host.ip)
        for machine in fleet.all_hosts():
            self.add_address(machine.fqdn, machine.ip)
            if machine.mgmt_fqdn and machine.mgmt_ip:
                self.add_address(machine.mgmt_fqdn, machine.mgmt_ip)
        for master in fleet.masters:
            self.add_address(master.fqdn, "127.0.0.1")
        if fleet.alias is not None:
            alias, target = fleet.alias
            self._forward.add(alias, dns.Record_CNAME(target.encode("ascii"), ttl=_TTL))

    def add_address(self, fqdn: str, ip: str) -> None:
        """
        Give C{fqdn} an A record for C{ip}, and C{ip} a PTR to C{fqdn}.

        The first name given an address keeps its PTR.
        """
        fqdn = fqdn.rstrip(".")
        self._forward.add(fqdn, dns.Record_A(ip, ttl=_TTL))
        ptr = reverse_name(ip)
        if not self._reverse.records.get(ptr.encode("ascii")):
            self._reverse.add(ptr, dns.Record_PTR(fqdn.encode("ascii"), ttl=_TTL))

    def remove_address(self, fqdn: str, ip: str) -> None:
        """Take away C{fqdn}'s A record for C{ip} and C{ip}'s PTR to it."""
        fqdn = fqdn.rstrip(".")
        self._forward.remove(fqdn, dns.Record_A(ip, ttl=_TTL))
        self._reverse.remove(reverse_name(ip), dns.Record_PTR(fqdn.encode("ascii"), ttl=_TTL))

    def start(self) -> int:
        """Listen on UDP and TCP, on a free port of 127.0.0.1; returns the port."""
        factory = server.DNSServerFactory(authorities=[self._forward, self._reverse])
        factory.noisy = False
        for attempt in range(_LISTEN_ATTEMPTS):
            protocol = dns.DNSDatagramProtocol(controller=factory)
            protocol.noisy = False
            udp = self._reactor.listenUDP(0, protocol, interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = self._reactor.listenTCP(port, factory, interface="127.0.0.1")
            except CannotListenError:  # the TCP side of that port is taken: try another
                udp.stopListening()
                if attempt == _LISTEN_ATTEMPTS - 1:
                    raise
                continue
            self._ports = [udp, tcp]
            self.port = port
            break
        return self.port

    def stop(self) -> defer.Deferred[Any]:
        """Stop listening."""
        stops = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        self._ports = []
        return defer.gatherResults(stops, consumeErrors=True)
