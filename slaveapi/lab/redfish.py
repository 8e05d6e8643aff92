"""
The lab's Redfish BMCs: a small Redfish service per machine whose BMC speaks
Redfish instead of IPMI, relaying resets to the lab's L{PowerControl}.

Each listens on its machine's C{mgmt_ip} (127.1.X.Y) and one TCP port, the
same for all (the client is configured with one C{[redfish] port}), in this
process and on this reactor (unlike the IPMI BMCs, nothing here blocks).
They speak plain HTTP: the lab is on loopback only and its ini says
C{[redfish] scheme = http}, as it points the other clients at plain-HTTP
fakes; no certificate authority is needed.

The subset of Redfish SlaveAPI's client uses:

  - C{GET /redfish/v1}: the service root, without credentials. It offers
    no session service, so the client uses HTTP basic authentication.
  - C{GET /redfish/v1/Systems}: one member, C{/redfish/v1/Systems/1}.
  - C{GET /redfish/v1/Systems/1}: C{PowerState} (C{On} while the machine
    has power), C{Status} (C{Health}, C{HealthRollup}: C{OK}), C{Boot} and
    C{Actions} with the reset kinds of L{RESET_TYPES}.
  - C{POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset}: C{On}
    (L{PowerControl.power_on}), C{ForceOff} (L{PowerControl.power_off}),
    C{GracefulShutdown} (power off, only when the OS runs), C{ForceRestart}
    (a hard reboot) and C{GracefulRestart} (a reboot from the OS, only when
    it runs; a real BMC's ACPI request is ignored by a hung OS too); 204.
  - C{PATCH /redfish/v1/Systems/1}: a one-time boot override, remembered; 204.

Everything but the service root needs the lab's BMC user and password
(401 otherwise); unknown paths are 404, other methods 405.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any, Final

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl

_log = Logger(namespace="slaveapi.lab.redfish")

#: The reset kinds every lab Redfish BMC advertises.
RESET_TYPES: Final = ("On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart")
#: The boot targets it accepts for a one-time override.
BOOT_TARGETS: Final = ("None", "Pxe", "Hdd", "BiosSetup")

_ROOT: Final = "/redfish/v1"
_SYSTEM: Final = f"{_ROOT}/Systems/1"
_RESET: Final = f"{_SYSTEM}/Actions/ComputerSystem.Reset"
#: The largest request body read.
_MAX_BODY: Final = 64 * 1024


class LabRedfishError(Exception):
    """The Redfish BMCs could not be started (the message says why, in one line)."""


class _QuietSite(Site):
    """A Site that writes no access log."""

    noisy = False

    def log(self, request: Any) -> None:
        """No access log."""


class _BMC(Resource):
    """The Redfish service of one machine's BMC."""

    isLeaf = True

    def __init__(self, owner: LabRedfish, machine: LabMachine) -> None:
        super().__init__()
        self._owner = owner
        self.machine = machine
        #: The one-time boot target set, if any.
        self.boot_once: str | None = None

    def render(self, request: Request) -> bytes:
        path = (request.path or b"").decode("latin-1").rstrip("/") or "/"
        method = (request.method or b"").decode("latin-1")
        if path == _ROOT and method == "GET":
            return _json(request, 200, self._root())
        if path not in (f"{_ROOT}/Systems", _SYSTEM, _RESET):
            return _error(request, 404, f"no resource at {path}")
        if not self._owner.authorized(request):
            request.setHeader(b"www-authenticate", b'Basic realm="lab BMC"')
            return _error(request, 401, "credentials refused")
        if path == f"{_ROOT}/Systems" and method == "GET":
            return _json(request, 200, {
                "@odata.id": f"{_ROOT}/Systems",
                "Members": [{"@odata.id": _SYSTEM}],
                "Members@odata.count": 1,
            })
        if path == _SYSTEM and method == "GET":
            return _json(request, 200, self._system())
        if path == _SYSTEM and method == "PATCH":
            return self._patch(request)
        if path == _RESET and method == "POST":
            return self._reset(request)
        return _error(request, 405, f"{method} not allowed on {path}")

    def _root(self) -> dict[str, Any]:
        return {
            "@odata.id": _ROOT,
            "Id": "RootService",
            "RedfishVersion": "1.6.0",
            "Systems": {"@odata.id": f"{_ROOT}/Systems"},
        }

    def _system(self) -> dict[str, Any]:
        machine = self.machine
        return {
            "@odata.id": _SYSTEM,
            "Id": "1",
            "Name": machine.name,
            "PowerState": "On" if machine.powered else "Off",
            "Status": {"State": "Enabled", "Health": "OK", "HealthRollup": "OK"},
            "Boot": {
                "BootSourceOverrideEnabled": "Once" if self.boot_once else "Disabled",
                "BootSourceOverrideTarget": self.boot_once or "None",
                "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": _RESET,
                    "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
                }
            },
        }

    def _reset(self, request: Request) -> bytes:
        body = _body(request)
        kind = body.get("ResetType") if isinstance(body, dict) else None
        if kind not in RESET_TYPES:
            return _error(request, 400, f"ResetType {kind!r} is not one of {', '.join(RESET_TYPES)}")
        self._owner.reset(self.machine, str(kind))
        request.setResponseCode(204)
        return b""

    def _patch(self, request: Request) -> bytes:
        body = _body(request)
        boot = body.get("Boot") if isinstance(body, dict) else None
        target = boot.get("BootSourceOverrideTarget") if isinstance(boot, dict) else None
        if target not in BOOT_TARGETS:
            return _error(request, 400, f"BootSourceOverrideTarget {target!r} is not one of {', '.join(BOOT_TARGETS)}")
        self.boot_once = None if target == "None" else str(target)
        request.setResponseCode(204)
        return b""


def _body(request: Request) -> Any:
    """The request's JSON body, or None."""
    content = request.content
    if content is None:
        return None
    content.seek(0)
    raw = content.read(_MAX_BODY)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _json(request: Request, code: int, data: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"odata-version", b"4.0")
    return json.dumps(data).encode("utf-8")


def _error(request: Request, code: int, message: str) -> bytes:
    return _json(request, code, {"error": {"code": "Base.1.0.GeneralError", "message": message}})


class LabRedfish:
    """
    The running Redfish BMCs of a lab (see the module docstring).

    @ivar port: the TCP port every BMC listens on.
    @ivar machines: the machines with a Redfish BMC here, by name.
    @ivar resets: C{(machine name, reset kind)} for every reset asked, in order.
    """

    def __init__(self, reactor: Any, machines: list[LabMachine], power: PowerControl, username: str,
                 password: str) -> None:
        """Set up without listening; L{start} is the way in."""
        self._reactor = reactor
        self._power = power
        self._credentials = f"{username}:{password}".encode()
        self.machines: dict[str, LabMachine] = {m.name: m for m in machines if m.bmc and m.mgmt_ip}
        self.bmcs: dict[str, _BMC] = {name: _BMC(self, machine) for name, machine in self.machines.items()}
        self.resets: list[tuple[str, str]] = []
        self.port = 0
        self._listeners: list[Any] = []

    @classmethod
    def start(
        cls,
        reactor: Any,
        machines: list[LabMachine],
        power: PowerControl,
        username: str,
        password: str,
        *,
        port: int = 0,
        tries: int = 20,
    ) -> LabRedfish:
        """
        Listen for every machine with a BMC in C{machines} on its
        C{mgmt_ip} and one port: C{port}, or with 0 one the OS picks on the
        first address and that is free on all the others (C{tries} picks at most).
        """
        service = cls(reactor, machines, power, username, password)
        ips = [(name, service.machines[name].mgmt_ip or "") for name in sorted(service.machines)]
        if not ips:
            return service
        for _ in range(max(1, tries)):
            try:
                service._listen(ips, port)
            except CannotListenError as error:
                service._close()
                if port:
                    raise LabRedfishError(f"cannot listen on port {port}: {error}") from None
                continue
            _log.info("lab: {count} Redfish BMCs on TCP port {port}", count=len(ips), port=service.port)
            return service
        raise LabRedfishError(f"no TCP port free on all of {len(ips)} Redfish BMC addresses")

    def _listen(self, ips: list[tuple[str, str]], port: int) -> None:
        first_name, first_ip = ips[0]
        listener = self._reactor.listenTCP(port, _QuietSite(self.bmcs[first_name]), interface=first_ip)
        self._listeners.append(listener)
        self.port = listener.getHost().port
        for name, ip in ips[1:]:
            self._listeners.append(self._reactor.listenTCP(self.port, _QuietSite(self.bmcs[name]), interface=ip))

    def _close(self) -> None:
        for listener in self._listeners:
            listener.stopListening()
        self._listeners = []

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the lab's BMC user and password (HTTP basic)."""
        header = request.getHeader(b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(given, self._credentials)

    def reset(self, machine: LabMachine, kind: str) -> None:
        """Apply a reset to the machine through the lab's power control."""
        self.resets.append((machine.name, kind))
        _log.info("lab: Redfish BMC of {machine}: {kind}", machine=machine.name, kind=kind)
        if kind == "On":
            self._power.power_on(machine)
        elif kind == "ForceOff":
            self._power.power_off(machine)
        elif kind == "GracefulShutdown":
            if machine.up:
                self._power.power_off(machine)
        elif kind == "GracefulRestart":
            if machine.up:
                self._power.reboot(machine, graceful=True)
        elif kind == "ForceRestart":
            self._power.reboot(machine, graceful=False)

    def stop(self) -> Deferred[None]:
        """Stop listening; fires when every listener closed."""
        stops = [defer.maybeDeferred(listener.stopListening) for listener in self._listeners]
        self._listeners = []
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)
