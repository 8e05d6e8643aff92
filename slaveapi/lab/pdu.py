"""
The lab's PDUs: SNMP agents that switch the power of simulated machines.

Every PDU host the fleet's machines name (C{LabMachine.pdu}, e.g.
C{pdu1.<domain>:AA12}) gets an agent listening on UDP at the PDU's own
loopback address (its C{LabHost} entry, 127.2.0.N), all on one port. An
agent speaks SNMPv1 and v2c (GET, GETNEXT, GETBULK, SET), decoded and
encoded with pysnmp's message layer and pyasn1 on the reactor (no threads,
nothing blocking). It plays one of two PDU kinds, with the same OIDs and
values as the real ones (see docs/remote-apis.rst and L{slaveapi.clients.pdu}):

- C{sentry}, ServerTech Sentry3-MIB, rows indexed C{<tower>.<infeed>.<outlet>}
  (C{AA12} is 1.1.12): C{outletID} (.2), C{outletName} (.3),
  C{outletStatus} (.5: 0 off, 1 on) and C{outletControlAction} (.11:
  write 1 on, 2 off, 3 reboot, 0 none; reads 0) under
  C{1.3.6.1.4.1.1718.3.2.3.1};
- C{apc}, APC PowerNet-MIB, rows indexed by the outlet number (C{AA12} is
  12): C{rPDUOutletControlOutletName} and C{rPDUOutletControlOutletCommand}
  (C{1.3.6.1.4.1.318.1.1.12.3.3.1.1.2/.4}: write 1 immediateOn,
  2 immediateOff, 3 immediateReboot; reads 1 on, 2 off),
  C{rPDUOutletStatusOutletName} and C{rPDUOutletStatusOutletState}
  (C{...12.3.5.1.1.2/.4}: 1 on, 2 off). Delayed commands (4-7) are not
  simulated and answer C{wrongValue}.

Both also answer sysDescr.0, sysObjectID.0 and sysName.0. A request with
the wrong community gets no answer at all, like net-snmp. An unknown row is
C{noSuchInstance} (v2c) or C{noSuchName} (v1); a bad control value
C{wrongValue}, a non-integer C{wrongType}, a write to anything but a control
object C{notWritable} (C{noCreation} for a missing control row); v1 gets the
RFC 2576 equivalents. A SET is all or nothing: every binding is checked
before any outlet switches. Switching goes through L{PowerControl}: off is
C{power_off}, on C{power_on}, reboot C{reboot}; the state read back is the
machine's C{powered} flag.
"""

from __future__ import annotations

import errno
import hmac
import re
import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pyasn1.type import univ
from pysnmp.proto import api, rfc1905
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from slaveapi.lab.fleet import Fleet
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl

SENTRY = "sentry"
APC = "apc"

_OUTLET = re.compile(r"^([A-Za-z])([A-Za-z])([0-9]{1,4})$")

_SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1)
_SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2)
_SYS_NAME = (1, 3, 6, 1, 2, 1, 1, 5)

_SENTRY_ENTRY = (1, 3, 6, 1, 4, 1, 1718, 3, 2, 3, 1)
_SENTRY_ID, _SENTRY_NAME, _SENTRY_STATUS, _SENTRY_CONTROL = (_SENTRY_ENTRY + (c,) for c in (2, 3, 5, 11))
_APC_CONTROL_ENTRY = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 3, 1, 1)
_APC_STATUS_ENTRY = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1)
_APC_CONTROL_NAME, _APC_COMMAND = (_APC_CONTROL_ENTRY + (c,) for c in (2, 4))
_APC_STATUS_NAME, _APC_STATE = (_APC_STATUS_ENTRY + (c,) for c in (2, 4))

_SYSTEM = {
    SENTRY: ("Sentry Switched CDU (slaveapi lab)", (1, 3, 6, 1, 4, 1, 1718, 3)),
    APC: ("APC Switched Rack PDU (slaveapi lab)", (1, 3, 6, 1, 4, 1, 318, 1, 3, 4, 5)),
}

# RFC 3416 error-status values, and their SNMPv1 equivalents (RFC 2576, 4.3).
_NO_SUCH_NAME, _BAD_VALUE = 2, 3
_WRONG_TYPE, _WRONG_VALUE, _NO_CREATION, _NOT_WRITABLE = 7, 10, 11, 17
_V1_ERROR = {
    _WRONG_TYPE: _BAD_VALUE,
    _WRONG_VALUE: _BAD_VALUE,
    _NO_CREATION: _NO_SUCH_NAME,
    _NOT_WRITABLE: _NO_SUCH_NAME,
}

#: Most variable bindings one GETBULK answer carries.
_MAX_BULK = 64

OID = tuple[int, ...]
# What a readable object holds: an integer, a string, or an object identifier.
_Value = Any


@dataclass(frozen=True)
class LabOutlet:
    """One outlet of a lab PDU and the machine it powers."""

    pdu: str
    outlet: str  # as inventory writes it, e.g. AA12
    tower: int
    infeed: int
    number: int
    machine: LabMachine


def parse_outlet(value: str) -> tuple[str, str, int, int, int]:
    """
    C{<pdu host>:<tower letter><infeed letter><number>} as (host, outlet, tower, infeed, number).

    @raise ValueError: the value does not have that form.
    """
    host, _, outlet = value.strip().rpartition(":")
    match = _OUTLET.match(outlet)
    if not host or not match or int(match.group(3)) < 1:
        raise ValueError(f"PDU value {value!r} is not <pdu host>:<tower><infeed><outlet>, e.g. pdu1.example:AA12")
    tower = ord(match.group(1).upper()) - ord("A") + 1
    infeed = ord(match.group(2).upper()) - ord("A") + 1
    return host.lower(), outlet.upper(), tower, infeed, int(match.group(3))


def _outlets_by_pdu(fleet: Fleet) -> dict[str, list[LabOutlet]]:
    """The fleet's outlets grouped by PDU host (lower case), in fleet order."""
    found: dict[str, list[LabOutlet]] = {}
    for machine in fleet.all_hosts():
        if not machine.pdu:
            continue
        host, outlet, tower, infeed, number = parse_outlet(machine.pdu)
        found.setdefault(host, []).append(LabOutlet(host, outlet, tower, infeed, number, machine))
    return found


def _pdu_addresses(fleet: Fleet) -> dict[str, str]:
    return {host.fqdn.lower(): host.ip for host in fleet.hosts}


def default_apc_hosts(fleet: Fleet) -> set[str]:
    """
    Which of the fleet's PDU hosts play APC PDUs by default: the second,
    fourth, ... PDU host (in the fleet's host order) whose outlets all have
    different numbers (an APC outlet is known by its number alone).
    """
    outlets = _outlets_by_pdu(fleet)
    ordered = [host.fqdn.lower() for host in fleet.hosts if host.fqdn.lower() in outlets]
    chosen = set()
    for position, host in enumerate(ordered):
        numbers = [outlet.number for outlet in outlets[host]]
        if position % 2 == 1 and len(numbers) == len(set(numbers)):
            chosen.add(host)
    return chosen


def free_udp_port(ips: Iterable[str], attempts: int = 20) -> int:
    """A UDP port that is free on every one of C{ips} right now."""
    addresses = list(ips) or ["127.0.0.1"]
    for _ in range(attempts):
        sockets: list[socket.socket] = []
        try:
            first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(first)
            first.bind((addresses[0], 0))
            port = int(first.getsockname()[1])
            for address in addresses[1:]:
                other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(other)
                other.bind((address, port))
            return port
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
        finally:
            for bound in sockets:
                bound.close()
    raise OSError(errno.EADDRINUSE, f"no UDP port free on all of {len(addresses)} addresses")


class _Agent(DatagramProtocol):
    """The SNMP agent of one PDU: its objects, and the request handling."""

    _log = Logger()
    noisy = False  # no "Starting protocol" line per PDU

    def __init__(self, pdu: str, kind: str, outlets: list[LabOutlet], power: PowerControl, community: bytes) -> None:
        self.pdu = pdu
        self.kind = kind
        self._power = power
        self._community = community
        self._reads: dict[OID, Callable[[], _Value]] = {}
        self._controls: dict[OID, LabOutlet] = {}
        descr, object_id = _SYSTEM[kind]
        self._reads[_SYS_DESCR + (0,)] = lambda: descr.encode()
        self._reads[_SYS_OBJECT_ID + (0,)] = lambda: object_id
        self._reads[_SYS_NAME + (0,)] = lambda: pdu.encode()
        self._objects: tuple[OID, ...] = (_SYS_DESCR, _SYS_OBJECT_ID, _SYS_NAME)
        seen: dict[OID, LabOutlet] = {}
        for outlet in outlets:
            index = (outlet.tower, outlet.infeed, outlet.number) if kind == SENTRY else (outlet.number,)
            if index in seen:
                raise ValueError(
                    f"lab PDU {pdu} ({kind}): outlets {seen[index].outlet} ({seen[index].machine.name}) and "
                    f"{outlet.outlet} ({outlet.machine.name}) are the same outlet"
                )
            seen[index] = outlet
            self._add_row(index, outlet)
        if kind == SENTRY:
            self._objects += (_SENTRY_ID, _SENTRY_NAME, _SENTRY_STATUS, _SENTRY_CONTROL)
        else:
            self._objects += (_APC_CONTROL_NAME, _APC_COMMAND, _APC_STATUS_NAME, _APC_STATE)
        self._control_column = _SENTRY_CONTROL if kind == SENTRY else _APC_COMMAND
        self._order = sorted(self._reads)

    def _add_row(self, index: OID, outlet: LabOutlet) -> None:
        machine = outlet.machine
        name = machine.name.encode()
        if self.kind == SENTRY:
            self._reads[_SENTRY_ID + index] = lambda: outlet.outlet.encode()
            self._reads[_SENTRY_NAME + index] = lambda: name
            self._reads[_SENTRY_STATUS + index] = lambda: 1 if machine.powered else 0
            self._reads[_SENTRY_CONTROL + index] = lambda: 0
            self._controls[_SENTRY_CONTROL + index] = outlet
        else:
            self._reads[_APC_CONTROL_NAME + index] = lambda: name
            self._reads[_APC_COMMAND + index] = lambda: 1 if machine.powered else 2
            self._reads[_APC_STATUS_NAME + index] = lambda: name
            self._reads[_APC_STATE + index] = lambda: 1 if machine.powered else 2
            self._controls[_APC_COMMAND + index] = outlet

    # --- the wire -------------------------------------------------------------

    def datagramReceived(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            answer = self._answer(data)
        except Exception:
            self._log.failure("lab: PDU {pdu}: cannot answer a request from {peer}", pdu=self.pdu, peer=address[0])
            return
        if answer is not None and self.transport is not None:
            self.transport.write(answer, address)

    def _answer(self, data: bytes) -> bytes | None:
        """The encoded response to one datagram, or None to stay silent."""
        try:
            version = int(api.decodeMessageVersion(data))
            module = api.PROTOCOL_MODULES[version]
            request_message, _ = decoder.decode(data, asn1Spec=module.Message())
        except Exception:
            return None  # not SNMPv1/v2c: v3 and garbage get no answer
        community = bytes(module.apiMessage.get_community(request_message))
        if not hmac.compare_digest(community, self._community):
            self._log.debug("lab: PDU {pdu}: wrong community, no answer", pdu=self.pdu)
            return None
        request = module.apiMessage.get_pdu(request_message)
        response_message = module.apiMessage.get_response(request_message)
        response = module.apiMessage.get_pdu(response_message)
        names = [tuple(oid) for oid, _ in module.apiPDU.get_varbinds(request)]
        tag = request.tagSet
        v1 = module is api.v1
        if tag == module.GetRequestPDU.tagSet:
            bindings, error = self._get(module, names)
        elif tag == module.GetNextRequestPDU.tagSet:
            bindings, error = self._get_next(module, names)
        elif tag == module.SetRequestPDU.tagSet:
            bindings, error = self._set(module, module.apiPDU.get_varbinds(request))
        elif not v1 and tag == api.v2c.GetBulkRequestPDU.tagSet:
            bindings, error = self._get_bulk(module, request, names)
        else:
            return None
        if error is not None:
            status, index = error
            module.apiPDU.set_error_status(response, _V1_ERROR.get(status, status) if v1 else status)
            module.apiPDU.set_error_index(response, index)
            bindings = list(module.apiPDU.get_varbinds(request))
        module.apiPDU.set_varbinds(response, bindings)
        module.apiMessage.set_pdu(response_message, response)
        return bytes(encoder.encode(response_message))

    # --- requests -------------------------------------------------------------

    def _value(self, module: Any, value: _Value) -> Any:
        if isinstance(value, bytes):
            return module.OctetString(value)
        if isinstance(value, tuple):
            return module.ObjectIdentifier(value)
        return module.Integer(value)

    def _get(self, module: Any, names: list[OID]) -> tuple[list[Any], tuple[int, int] | None]:
        bindings = []
        for position, name in enumerate(names, 1):
            read = self._reads.get(name)
            if read is not None:
                bindings.append((name, self._value(module, read())))
            elif module is api.v1:
                return [], (_NO_SUCH_NAME, position)
            elif any(name[: len(known)] == known for known in self._objects):
                bindings.append((name, rfc1905.noSuchInstance))
            else:
                bindings.append((name, rfc1905.noSuchObject))
        return bindings, None

    def _next(self, name: OID) -> OID | None:
        for candidate in self._order:  # a few dozen objects: a scan is plenty
            if candidate > name:
                return candidate
        return None

    def _get_next(self, module: Any, names: list[OID]) -> tuple[list[Any], tuple[int, int] | None]:
        bindings = []
        for position, name in enumerate(names, 1):
            following = self._next(name)
            if following is not None:
                bindings.append((following, self._value(module, self._reads[following]())))
            elif module is api.v1:
                return [], (_NO_SUCH_NAME, position)
            else:
                bindings.append((name, rfc1905.endOfMibView))
        return bindings, None

    def _get_bulk(self, module: Any, request: Any, names: list[OID]) -> tuple[list[Any], tuple[int, int] | None]:
        non_repeaters = max(0, min(int(api.v2c.apiBulkPDU.get_non_repeaters(request)), len(names)))
        repetitions = max(0, int(api.v2c.apiBulkPDU.get_max_repetitions(request)))
        bindings, _ = self._get_next(module, names[:non_repeaters])
        cursors = names[non_repeaters:]
        for _ in range(repetitions):
            if not cursors or len(bindings) + len(cursors) > _MAX_BULK:
                break
            row, _ = self._get_next(module, cursors)
            bindings.extend(row)
            cursors = [name for name, _ in row]
            if all(value is rfc1905.endOfMibView for _, value in row):
                break
        return bindings, None

    def _set(self, module: Any, requested: list[tuple[Any, Any]]) -> tuple[list[Any], tuple[int, int] | None]:
        commands: list[tuple[LabOutlet, int]] = []
        for position, (oid, value) in enumerate(requested, 1):
            name = tuple(oid)
            outlet = self._controls.get(name)
            if outlet is None:
                creatable = name[: len(self._control_column)] == self._control_column
                return [], (_NO_CREATION if creatable else _NOT_WRITABLE, position)
            if value.tagSet != univ.Integer.tagSet:
                return [], (_WRONG_TYPE, position)
            command = int(value)
            if command not in (0, 1, 2, 3) or (self.kind == APC and command == 0):
                return [], (_WRONG_VALUE, position)
            commands.append((outlet, command))
        for outlet, command in commands:
            self._switch(outlet, command)
        return list(requested), None

    def _switch(self, outlet: LabOutlet, command: int) -> None:
        machine = outlet.machine
        if command == 0:
            return
        action = {1: "on", 2: "off", 3: "reboot"}[command]
        self._log.info(
            "lab: PDU {pdu} outlet {outlet} ({machine}): {action}",
            pdu=self.pdu, outlet=outlet.outlet, machine=machine.name, action=action,
        )
        if command == 1:
            self._power.power_on(machine)
        elif command == 2:
            self._power.power_off(machine)
        else:
            self._power.reboot(machine)


class LabPDUs:
    """
    The running SNMP agents of the lab's PDUs.

    @ivar port: the UDP port every agent listens on.
    @ivar types: PDU host (lower case) to C{sentry} or C{apc}, for the
        C{[pdus]} section of the ini.
    @ivar addresses: PDU host to the loopback address its agent listens on.
    @ivar outlets: PDU host to its outlets.
    """

    _log = Logger()

    def __init__(
        self,
        fleet: Fleet,
        power: PowerControl,
        community: str,
        apc_hosts: Collection[str] | None = None,
    ) -> None:
        """Build the agents without listening yet; L{start} is the usual way in."""
        self.outlets = _outlets_by_pdu(fleet)
        known = _pdu_addresses(fleet)
        missing = sorted(host for host in self.outlets if host not in known)
        if missing:
            raise ValueError(f"lab PDUs without an address in the fleet's hosts: {', '.join(missing)}")
        apc = default_apc_hosts(fleet) if apc_hosts is None else {host.lower() for host in apc_hosts}
        self.types = {host: APC if host in apc else SENTRY for host in self.outlets}
        self.addresses = {host: known[host] for host in self.outlets}
        secret = community.encode()
        self._agents = {
            host: _Agent(host, self.types[host], outlets, power, secret) for host, outlets in self.outlets.items()
        }
        self.port = 0
        self._ports: list[Any] = []

    @classmethod
    def start(
        cls,
        reactor: Any,
        fleet: Fleet,
        power: PowerControl,
        port: int,
        community: str,
        apc_hosts: Collection[str] | None = None,
    ) -> LabPDUs:
        """
        Start one agent per PDU host of C{fleet}, each on its own address.

        @param port: the UDP port of every agent; 0 picks one free on all
            the PDU addresses (see L{port}).
        @param community: the only community the agents answer.
        @param apc_hosts: PDU hosts that play APC PDUs; None means
            L{default_apc_hosts}. The others play ServerTech Sentry.
        @raise ValueError: a PDU host has no address, or two machines share an outlet.
        """
        pdus = cls(fleet, power, community, apc_hosts)
        if port == 0 and pdus._agents:
            port = free_udp_port(pdus.addresses.values())
        pdus.port = port
        try:
            for host, agent in pdus._agents.items():
                pdus._ports.append(reactor.listenUDP(port, agent, interface=pdus.addresses[host]))
        except BaseException:
            pdus.stop()
            raise
        pdus._log.info(
            "lab: {count} PDUs on UDP port {port} ({apc} APC)",
            count=len(pdus._agents), port=port, apc=sum(1 for kind in pdus.types.values() if kind == APC),
        )
        return pdus

    def stop(self) -> defer.Deferred[None]:
        """Stop every agent listening."""
        ports, self._ports = self._ports, []
        stops = [defer.maybeDeferred(listening.stopListening) for listening in ports]
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)
