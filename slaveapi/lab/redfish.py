"""
The lab's Redfish BMCs: a small Redfish service per machine whose BMC speaks
Redfish instead of IPMI, relaying resets to the lab's L{PowerControl}.

Each listens on its machine's C{mgmt_ip} (127.1.X.Y) and one TCP port, the
same for all (the client is configured with one C{[redfish] port}), in this
process and on this reactor (unlike the IPMI BMCs, nothing here blocks).
They speak HTTPS, as real BMCs do, each with a certificate of its own issued
by the lab's CA (L{slaveapi.lab._ca.LabCA}) naming the BMC's C{-mgmt} host
name and its address: SlaveAPI connects to the address C{<name>-mgmt}
resolved to and verifies that address against C{[redfish] ca_bundle}, the
CA certificate the lab writes beside its ini.

The subset of Redfish SlaveAPI's client uses:

  - C{GET /redfish/v1}: the service root, without credentials. It links the
    session service (C{SessionService}, C{Links.Sessions}), so the client
    logs in with a session.
  - C{POST /redfish/v1/SessionService/Sessions} with C{UserName} and
    C{Password}, without credentials: 201 with an C{X-Auth-Token} header and
    the session's C{Location}; wrong credentials 401. A session expires
    after L{SESSION_TIMEOUT} seconds without use; a BMC holds at most
    L{MAX_SESSIONS} (503 beyond, as a full BMC answers).
    C{DELETE} of the session's URL logs out (204). C{GET} of the session
    service, its collection and a session are answered too.
  - C{GET /redfish/v1/Systems}: one member, C{/redfish/v1/Systems/1}.
  - C{GET /redfish/v1/Systems/1}: C{PowerState} (C{On} while the machine
    has power), C{Status} (C{Health}, C{HealthRollup}: C{OK}), C{Boot} and
    C{Actions} with the reset kinds of L{RESET_TYPES}.
  - C{POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset}: C{On}
    (L{PowerControl.power_on}), C{ForceOff} (L{PowerControl.power_off}),
    C{GracefulShutdown} (power off, only when the OS runs), C{ForceRestart}
    (a hard reboot) and C{GracefulRestart} (a reboot from the OS, only when
    it runs; a real BMC's ACPI request is ignored by a hung OS too); 204.
  - C{PATCH /redfish/v1/Systems/1}: a boot override, C{Boot} with
    C{BootSourceOverrideTarget} and C{BootSourceOverrideEnabled}
    (C{Once}, C{Continuous} or C{Disabled}; a target without it keeps the
    current one, C{Once} when the override was disabled). C{Once} is
    remembered until the machine next boots (the BMC follows the lab's
    power as a L{slaveapi.lab.power.PowerObserver}), as a BIOS uses it up;
    C{Continuous} is kept for every boot; 204.

Everything but the service root and opening a session needs a session's
C{X-Auth-Token} or, as real BMCs still accept, the BMC user and password by
HTTP basic authentication (401 otherwise); unknown paths are 404, other
methods 405.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from slaveapi.lab._ca import IssuedCertificate, LabCA
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl

_log = Logger(namespace="slaveapi.lab.redfish")

#: The reset kinds every lab Redfish BMC advertises.
RESET_TYPES: Final = ("On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart")
#: The boot targets it accepts for an override.
BOOT_TARGETS: Final = ("None", "Pxe", "Hdd", "BiosSetup")
#: The values of C{BootSourceOverrideEnabled} it accepts.
BOOT_OVERRIDE_ENABLED: Final = ("Disabled", "Once", "Continuous")
#: Seconds a session lives without being used (Redfish's C{SessionTimeout}).
SESSION_TIMEOUT: Final = 300.0
#: The most sessions one BMC holds at once.
MAX_SESSIONS: Final = 32

_ROOT: Final = "/redfish/v1"
_SYSTEMS: Final = f"{_ROOT}/Systems"
_SYSTEM: Final = f"{_SYSTEMS}/1"
_RESET: Final = f"{_SYSTEM}/Actions/ComputerSystem.Reset"
_SESSION_SERVICE: Final = f"{_ROOT}/SessionService"
_SESSIONS: Final = f"{_SESSION_SERVICE}/Sessions"
#: The largest request body read.
_MAX_BODY: Final = 64 * 1024


class LabRedfishError(Exception):
    """The Redfish BMCs could not be started (the message says why, in one line)."""


class _QuietSite(Site):
    """A Site that writes no access log."""

    noisy = False

    def log(self, request: Any) -> None:
        """No access log."""


@dataclass
class _Session:
    """One open session of a BMC: its id, token, user and when it was last used."""

    id: str
    token: str
    username: str
    last_used: float

    @property
    def url(self) -> str:
        return f"{_SESSIONS}/{self.id}"

    def resource(self) -> dict[str, Any]:
        return {"@odata.id": self.url, "Id": self.id, "Name": "User Session", "UserName": self.username}


class _BMC(Resource):
    """The Redfish service of one machine's BMC."""

    isLeaf = True

    def __init__(self, owner: LabRedfish, machine: LabMachine) -> None:
        super().__init__()
        self._owner = owner
        self.machine = machine
        #: The boot target set, if any, and for which boots (C{BootSourceOverrideEnabled}).
        self.boot_target: str | None = None
        self.boot_enabled = "Disabled"
        #: Whether it keeps a C{Once} override for every boot (C{Continuous}), as some BMCs (and sushy-emulator) do.
        self.ignores_once = False
        #: The open sessions, by token.
        self.sessions: dict[str, _Session] = {}
        #: How many sessions were ever opened.
        self.sessions_opened = 0

    def render(self, request: Request) -> bytes:
        path = (request.path or b"").decode("latin-1").rstrip("/") or "/"
        method = (request.method or b"").decode("latin-1")
        if path == _ROOT and method == "GET":
            return _json(request, 200, self._root())
        if path == _SESSIONS and method == "POST":
            return self._open_session(request)
        session_id = path[len(_SESSIONS) + 1 :] if path.startswith(_SESSIONS + "/") else None
        if path not in (_SYSTEMS, _SYSTEM, _RESET, _SESSION_SERVICE, _SESSIONS) and not session_id:
            return _error(request, 404, f"no resource at {path}")
        if not self._authorized(request):
            request.setHeader(b"www-authenticate", b'Basic realm="lab BMC"')
            return _error(request, 401, "credentials refused")
        if session_id:
            return self._session(request, method, session_id)
        answer = self._read(path) if method == "GET" else None
        if answer is not None:
            return _json(request, 200, answer)
        if path == _SYSTEM and method == "PATCH":
            return self._patch(request)
        if path == _RESET and method == "POST":
            return self._reset(request)
        return _error(request, 405, f"{method} not allowed on {path}")

    def _read(self, path: str) -> dict[str, Any] | None:
        """The resource at C{path} for a C{GET}, or None when it has none."""
        if path == _SYSTEMS:
            return _collection(_SYSTEMS, [_SYSTEM])
        if path == _SYSTEM:
            return self._system()
        if path == _SESSION_SERVICE:
            return {
                "@odata.id": _SESSION_SERVICE,
                "Id": "SessionService",
                "ServiceEnabled": True,
                "SessionTimeout": int(self._owner.session_timeout),
                "Sessions": {"@odata.id": _SESSIONS},
            }
        if path == _SESSIONS:
            return _collection(_SESSIONS, [session.url for session in self.sessions.values()])
        return None

    def _root(self) -> dict[str, Any]:
        return {
            "@odata.id": _ROOT,
            "Id": "RootService",
            "RedfishVersion": "1.6.0",
            "Systems": {"@odata.id": _SYSTEMS},
            "SessionService": {"@odata.id": _SESSION_SERVICE},
            "Links": {"Sessions": {"@odata.id": _SESSIONS}},
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
                "BootSourceOverrideEnabled": self.boot_enabled,
                "BootSourceOverrideTarget": self.boot_target or "None",
                "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": _RESET,
                    "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
                }
            },
        }

    # --- sessions ----------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        """A live session's token (its use keeps it alive), else the BMC user by basic authentication."""
        token = (request.getHeader(b"x-auth-token") or b"").decode("latin-1")
        if token:
            self._expire()
            session = self.sessions.get(token)
            if session is not None:
                session.last_used = self._owner.now()
                return True
            return False
        return self._owner.authorized(request)

    def _expire(self) -> None:
        """Drop the sessions unused for longer than the session timeout."""
        oldest = self._owner.now() - self._owner.session_timeout
        for token in [token for token, session in self.sessions.items() if session.last_used < oldest]:
            _log.info("lab: Redfish BMC of {machine}: session {id} expired", machine=self.machine.name,
                      id=self.sessions[token].id)
            del self.sessions[token]

    def _open_session(self, request: Request) -> bytes:
        body = _body(request)
        username = body.get("UserName") if isinstance(body, dict) else None
        password = body.get("Password") if isinstance(body, dict) else None
        if not isinstance(username, str) or not isinstance(password, str):
            return _error(request, 400, "expected a JSON object with the strings UserName and Password")
        if not self._owner.valid(username, password):
            return _error(request, 401, "credentials refused")
        self._expire()
        if len(self.sessions) >= self._owner.max_sessions:
            return _error(request, 503, f"no more than {self._owner.max_sessions} sessions at once")
        self.sessions_opened += 1
        session = _Session(str(self.sessions_opened), secrets.token_hex(16), username, self._owner.now())
        self.sessions[session.token] = session
        request.setHeader(b"x-auth-token", session.token.encode("ascii"))
        request.setHeader(b"location", session.url.encode("ascii"))
        return _json(request, 201, session.resource())

    def _session(self, request: Request, method: str, session_id: str) -> bytes:
        """C{GET} or C{DELETE} (log out) of one session."""
        session = next((s for s in self.sessions.values() if s.id == session_id), None)
        if session is None:
            return _error(request, 404, f"no session {session_id}")
        if method == "GET":
            return _json(request, 200, session.resource())
        if method == "DELETE":
            del self.sessions[session.token]
            request.setResponseCode(204)
            return b""
        return _error(request, 405, f"{method} not allowed on {session.url}")

    # --- actions -----------------------------------------------------------------

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
        if not isinstance(boot, dict) or not {"BootSourceOverrideTarget", "BootSourceOverrideEnabled"} & set(boot):
            return _error(request, 400, "expected Boot with BootSourceOverrideTarget or BootSourceOverrideEnabled")
        target = boot.get("BootSourceOverrideTarget", self.boot_target or "None")
        if target not in BOOT_TARGETS:
            return _error(request, 400, f"BootSourceOverrideTarget {target!r} is not one of {', '.join(BOOT_TARGETS)}")
        kept = self.boot_enabled if self.boot_enabled != "Disabled" else "Once"
        enabled = boot.get("BootSourceOverrideEnabled", kept)
        if enabled not in BOOT_OVERRIDE_ENABLED:
            return _error(
                request, 400,
                f"BootSourceOverrideEnabled {enabled!r} is not one of {', '.join(BOOT_OVERRIDE_ENABLED)}",
            )
        if target == "None" or enabled == "Disabled":
            self.boot_target, self.boot_enabled = None, "Disabled"
        else:
            once_ignored = enabled == "Once" and self.ignores_once
            self.boot_target, self.boot_enabled = str(target), "Continuous" if once_ignored else str(enabled)
        request.setResponseCode(204)
        return b""


def _collection(url: str, members: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": url,
        "Members": [{"@odata.id": member} for member in members],
        "Members@odata.count": len(members),
    }


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
    @ivar certificates: each BMC's certificate, issued by the lab's CA, by machine name.
    @ivar session_timeout: seconds a session lives unused.
    @ivar max_sessions: the most sessions one BMC holds.
    """

    def __init__(
        self,
        reactor: Any,
        machines: list[LabMachine],
        power: PowerControl,
        username: str,
        password: str,
        *,
        ca: LabCA,
        clock: Callable[[], float] | None = None,
        session_timeout: float = SESSION_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        """Set up without listening; L{start} is the way in."""
        self._reactor = reactor
        self._power = power
        self._ca = ca
        self._username = username.encode()
        self._password = password.encode()
        self.now: Callable[[], float] = clock or reactor.seconds
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.machines: dict[str, LabMachine] = {m.name: m for m in machines if m.bmc and m.mgmt_ip}
        self.bmcs: dict[str, _BMC] = {name: _BMC(self, machine) for name, machine in self.machines.items()}
        self.resets: list[tuple[str, str]] = []
        self.port = 0
        self._listeners: list[Any] = []
        #: Each BMC's certificate (and key), by machine name.
        self.certificates: dict[str, IssuedCertificate] = {}

    @classmethod
    def start(
        cls,
        reactor: Any,
        machines: list[LabMachine],
        power: PowerControl,
        username: str,
        password: str,
        *,
        ca: LabCA,
        port: int = 0,
        tries: int = 20,
        clock: Callable[[], float] | None = None,
        session_timeout: float = SESSION_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
    ) -> LabRedfish:
        """
        Listen for every machine with a BMC in C{machines} on its
        C{mgmt_ip} and one port: C{port}, or with 0 one the OS picks on the
        first address and that is free on all the others (C{tries} picks at most).

        @param ca: issues each BMC's certificate.
        @param clock: what session expiry is measured with; the reactor's by default.
        """
        service = cls(
            reactor, machines, power, username, password, ca=ca, clock=clock, session_timeout=session_timeout,
            max_sessions=max_sessions,
        )
        power.add_observer(service)
        ips = [(name, service.machines[name].mgmt_ip or "") for name in sorted(service.machines)]
        if not ips:
            return service
        for name, ip in ips:
            fqdn = service.machines[name].mgmt_fqdn
            service.certificates[name] = ca.issue([fqdn] if fqdn else [], [ip])
        for _ in range(max(1, tries)):
            try:
                service._listen(ips, port)
            except CannotListenError as error:
                service._close()
                if port:
                    raise LabRedfishError(f"cannot listen on port {port}: {error}") from None
                continue
            _log.info("lab: {count} Redfish BMCs on TCP port {port} (HTTPS)", count=len(ips), port=service.port)
            return service
        raise LabRedfishError(f"no TCP port free on all of {len(ips)} Redfish BMC addresses")

    def _listen(self, ips: list[tuple[str, str]], port: int) -> None:
        for name, ip in ips:
            tls = self.certificates[name].server_options()
            listener = self._reactor.listenSSL(port or self.port, _QuietSite(self.bmcs[name]), tls, interface=ip)
            self._listeners.append(listener)
            self.port = self.port or listener.getHost().port

    def _close(self) -> None:
        for listener in self._listeners:
            listener.stopListening()
        self._listeners = []
        self.port = 0

    def valid(self, username: str | bytes, password: str | bytes) -> bool:
        """Whether C{username} and C{password} (text, or UTF-8 bytes) are the lab's BMC user and password."""
        given_user = username.encode() if isinstance(username, str) else username
        given_password = password.encode() if isinstance(password, str) else password
        user_ok = secrets.compare_digest(given_user, self._username)
        return secrets.compare_digest(given_password, self._password) and user_ok

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
        username, separator, password = given.partition(b":")
        return bool(separator) and self.valid(username, password)

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

    def machine_down(self, machine: LabMachine) -> None:
        """Nothing: the BMC keeps running on standby power."""

    def machine_up(self, machine: LabMachine) -> None:
        """The machine booted: a one-time boot override is used up (a continuous one is kept)."""
        bmc = self.bmcs.get(machine.name)
        if bmc is not None and bmc.boot_target is not None:
            _log.info("lab: Redfish BMC of {machine}: booted from {target}", machine=machine.name,
                      target=bmc.boot_target)
            if bmc.boot_enabled == "Once":
                bmc.boot_target, bmc.boot_enabled = None, "Disabled"

    def stop(self) -> Deferred[None]:
        """Stop listening; fires when every listener closed."""
        stops = [defer.maybeDeferred(listener.stopListening) for listener in self._listeners]
        self._listeners = []
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)
