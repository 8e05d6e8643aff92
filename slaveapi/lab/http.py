"""
The lab's HTTP fakes: slavealloc, inventory, buildapi, Bugzilla and devices.json.

One web server on 127.0.0.1 serves every fake under its own path prefix
(C{/slavealloc/api}, C{/inventory/api}, C{/buildapi}, C{/bugzilla/rest},
C{/devices.json}, and the Buildbot masters' C{/buildslaves/}), answering
exactly as docs/remote-apis.rst says the real systems do. Everything is
read from and written to the fleet's records, so a change made through
slavealloc shows in later reads.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, cast

from klein import Klein
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from slaveapi.lab.bugzilla import BugzillaFake
from slaveapi.lab.buildbot import LabBuildbots
from slaveapi.lab.fleet import Fleet
from slaveapi.lab.inventory_dns import InventoryDNSFake
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl

_DEFAULT_NUMBUILDS = 25
_STRING_FIELDS = ("basedir", "pool", "environment", "purpose", "distro", "datacenter", "trustlevel", "speed", "notes")
_MASTER_FIELDS = ("current_masterid", "locked_masterid")


def _json(request: IRequest, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return json.dumps(body).encode("utf-8")


class _QuietSite(Site):
    """A Site that writes no access log (the bench sends many thousands of requests)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class LabHTTP:
    """
    The HTTP fakes on one port.

    @param inventory_user: the basic-auth user inventory accepts.
    @param inventory_password: its password.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        fleet: Fleet,
        bugzilla: BugzillaFake,
        inventory_user: str,
        inventory_password: str,
        power: PowerControl | None = None,
        buildbots: LabBuildbots | None = None,
        inventory_dns: InventoryDNSFake | None = None,
    ) -> None:
        self._reactor = reactor
        self._power = power
        self.buildbots = buildbots
        self.inventory_dns = inventory_dns
        self.fleet = fleet
        self.bugzilla = bugzilla
        self._inventory_user = inventory_user.encode("utf-8")
        self._inventory_password = inventory_password.encode("utf-8")
        self._listener: IListeningPort | None = None
        self._connections: WrappingFactory | None = None
        self.port = 0

    def start(self) -> int:
        """Listen on a free port of 127.0.0.1; returns the port."""
        # The wrapper keeps track of open connections, to close them on stop.
        self._connections = WrappingFactory(_QuietSite(self.app.resource()))
        self._connections.noisy = False
        # A wave sends a thousand lookups at once: a backlog of 50 would drop most of them.
        self._listener = self._reactor.listenTCP(0, self._connections, backlog=1024, interface="127.0.0.1")
        self.port = cast(IPv4Address, self._listener.getHost()).port
        return self.port

    def stop(self) -> defer.Deferred[Any]:
        """Stop listening and close the connections still open."""
        listener, self._listener = self._listener, None
        if listener is None:
            return defer.succeed(None)
        stopped = defer.maybeDeferred(listener.stopListening)
        if self._connections is not None:
            for connection in list(self._connections.protocols):
                connection.transport.loseConnection()
        return stopped

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Any) -> bytes:
        return _json(request, {"error": "not found", "msg": "no such resource in the lab"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request: IRequest, failure: Any) -> bytes:
        return _json(request, {"error": "method not allowed", "msg": "not supported by the lab"}, 405)

    @app.handle_errors(Exception)
    def _broken(self, request: IRequest, failure: Any) -> bytes:
        self._log.failure("lab http: {method} {uri} failed", failure, method=request.method, uri=request.uri)
        return _json(request, {"error": "internal error", "msg": "the lab failed; see its log"}, 500)

    # --- slavealloc ---------------------------------------------------------

    def _slave_json(self, machine: LabMachine) -> dict[str, Any]:
        master = self.fleet.master_by_nickname(machine.master)
        return {
            "slaveid": machine.slaveid,
            "name": machine.name,
            "distro": machine.distro,
            "bitlength": machine.bitlength,
            "purpose": machine.purpose,
            "datacenter": machine.datacenter,
            "trustlevel": machine.trustlevel,
            "speed": machine.speed,
            "environment": machine.environment,
            "pool": machine.pool,
            "basedir": machine.basedir,
            "enabled": machine.enabled,
            "current_masterid": master.masterid if master else None,
            "current_master": master.nickname if master else None,
            "locked_masterid": machine.locked_masterid,
            "notes": machine.notes,
        }

    def _find_slave(self, request: IRequest, ident: str) -> LabMachine | None:
        if request.args.get(b"byname", [b"0"])[0] in (b"1", b"true"):
            return next((m for m in self.fleet.machines if m.name == ident), None)
        if not ident.isdigit():
            return None
        return next((m for m in self.fleet.machines if m.slaveid == int(ident)), None)

    @app.route("/slavealloc/api/slaves", methods=["GET"])
    def slaves(self, request: IRequest) -> bytes:
        return _json(request, [self._slave_json(machine) for machine in self.fleet.machines])

    @app.route("/slavealloc/api/slaves/<ident>", methods=["GET"])
    def slave(self, request: IRequest, ident: str) -> bytes:
        machine = self._find_slave(request, ident)
        if machine is None:
            return _json(request, {"error": "not found", "msg": f"no slave {ident}"}, 404)
        return _json(request, self._slave_json(machine))

    @app.route("/slavealloc/api/slaves/<ident>", methods=["PUT"])
    def update_slave(self, request: IRequest, ident: str) -> bytes:
        machine = self._find_slave(request, ident)
        if machine is None:
            return _json(request, {"error": "not found", "msg": f"no slave {ident}"}, 404)
        try:
            changes = json.loads(request.content.read() or b"")
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return _json(request, {"error": "bad request", "msg": "expected a JSON object"}, 400)
        problem = self._check_changes(changes)
        if problem:
            return _json(request, {"error": "bad request", "msg": problem}, 400)
        for key, value in changes.items():
            if key == "enabled" or key in _STRING_FIELDS:
                setattr(machine, key, value)
            elif key == "current_masterid":
                master = self.fleet.master_by_id(value) if value is not None else None
                machine.master = master.nickname if master else None
            elif key == "locked_masterid":
                machine.locked_masterid = value
        return _json(request, self._slave_json(machine))

    def _check_changes(self, changes: dict[str, Any]) -> str | None:
        """Why a PUT body cannot be applied, or None."""
        for key, value in changes.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    return "enabled: expected true or false"
            elif key in _STRING_FIELDS:
                if not isinstance(value, str):
                    return f"{key}: expected a string"
            elif key in _MASTER_FIELDS:
                if value is not None and (not isinstance(value, int) or self.fleet.master_by_id(value) is None):
                    return f"{key}: no master with id {value!r}"
            else:
                return f"{key}: not a field that can be changed"
        return None

    def _master_json(self, masterid: int) -> dict[str, Any] | None:
        master = self.fleet.master_by_id(masterid)
        if master is None:
            return None
        return {
            "masterid": master.masterid,
            "nickname": master.nickname,
            "fqdn": master.fqdn,
            "http_port": master.http_port,
            "pb_port": master.pb_port,
            "dcname": master.dcname,
            "pool": master.pool,
            "enabled": master.enabled,
        }

    @app.route("/slavealloc/api/masters", methods=["GET"])
    def masters(self, request: IRequest) -> bytes:
        return _json(request, [self._master_json(master.masterid) for master in self.fleet.masters])

    @app.route("/slavealloc/api/masters/<ident>", methods=["GET"])
    def master(self, request: IRequest, ident: str) -> bytes:
        found = self._master_json(int(ident)) if ident.isdigit() else None
        if found is None:
            return _json(request, {"error": "not found", "msg": f"no master {ident}"}, 404)
        return _json(request, found)

    # --- inventory ----------------------------------------------------------

    def _system_json(self, machine: LabMachine, number: int) -> dict[str, Any]:
        key_value = [
            {"key": "nic.0.ipv4_address.0", "value": machine.ip},
            {"key": "nic.0.mac_address.0", "value": "00:25:90:" + ":".join(
                f"{int(part):02x}" for part in machine.ip.split(".")[1:])},
        ]
        if machine.pdu:
            key_value.append({"key": "system.pdu.0", "value": machine.pdu})
        if machine.imaging_server:
            key_value.append({"key": "system.imaging_server.0", "value": machine.imaging_server})
        return {
            "id": number,
            "hostname": machine.fqdn,
            "asset_tag": machine.asset_tag,
            "serial": f"LABSN{number:06d}",
            "operating_system": {"name": machine.os, "version": machine.distro},
            "server_model": {"vendor": "Amazon" if machine.is_aws else "iXsystems", "model": machine.distro},
            "key_value": key_value,
            "resource_uri": f"/en-US/tasty/v3/system/{number}/",
        }

    @app.route("/inventory/api/system/", methods=["GET"])
    def systems(self, request: IRequest) -> bytes:
        user, password = request.getUser(), request.getPassword()
        if not (
            hmac.compare_digest(user or b"", self._inventory_user)
            and hmac.compare_digest(password or b"", self._inventory_password)
        ):
            request.setHeader(b"WWW-Authenticate", b'Basic realm="inventory"')
            return _json(request, {"error": "unauthorized", "msg": "bad or missing credentials"}, 401)
        wanted = request.args.get(b"hostname", [b""])[0].decode("utf-8", "replace").lower()
        found = [
            self._system_json(machine, number)
            for number, machine in enumerate(self.fleet.all_hosts(), start=1)
            if not wanted or machine.fqdn.lower() == wanted
        ]
        meta = {"limit": 20, "next": None, "offset": 0, "previous": None, "total_count": len(found)}
        return _json(request, {"meta": meta, "objects": found})

    @app.route("/inventory/api/mozdns/api/v1_dns/", branch=True)
    def inventory_dns_api(self, request: IRequest) -> IResource | bytes:
        """Inventory's DNS records API (A and PTR records); see L{slaveapi.lab.inventory_dns}."""
        if self.inventory_dns is None:
            return _json(request, {"error": "not found", "msg": "no DNS records API in this lab"}, 404)
        return self.inventory_dns.app.resource()

    # --- buildapi -----------------------------------------------------------

    @app.route("/buildapi/recent/<name>", methods=["GET"])
    def recent(self, request: IRequest, name: str) -> bytes:
        raw = request.args.get(b"numbuilds", [str(_DEFAULT_NUMBUILDS).encode()])[0]
        if not raw.isdigit():
            return _json(request, {"error": "bad request", "msg": "numbuilds: expected a number"}, 400)
        machine = self.fleet.machine(name)
        jobs = machine.recent_jobs[: int(raw)] if machine is not None and machine in self.fleet.machines else []
        return _json(
            request,
            [
                {
                    "buildername": job.buildername,
                    "buildnumber": job.buildnumber,
                    "starttime": job.starttime,
                    "endtime": job.endtime,
                    "result": job.result,
                    "master": job.master,
                    "slave": job.slave,
                    "reason": job.reason,
                    "request_ids": list(job.request_ids),
                }
                for job in jobs
            ],
        )

    # --- Bugzilla, devices.json ----------------------------------------------

    @app.route("/bugzilla/rest/", branch=True)
    def bugzilla_rest(self, request: IRequest) -> IResource:
        return self.bugzilla.app.resource()

    @app.route("/api/device/<name>/power-cycle/", methods=["POST"])
    def mozpool_power_cycle(self, request: IRequest, name: str) -> bytes:
        """Mozpool's device power-cycle: the device reboots."""
        machine = self.fleet.machine(name)
        if machine is None or machine.imaging_server is None or self._power is None:
            return _json(request, {"error": "not found", "msg": f"no device {name}"}, 404)
        self._power.reboot(machine)
        return _json(request, {})

    @app.route("/buildslaves/", branch=True)
    def buildslaves(self, request: IRequest) -> IResource | bytes:
        """The Buildbot masters' 0.8 web status (graceful shutdowns); see L{slaveapi.lab.buildbot}."""
        if self.buildbots is None:
            return _json(request, {"error": "not found", "msg": "no Buildbot masters in this lab"}, 404)
        return self.buildbots.app.resource()

    @app.route("/devices.json", methods=["GET"])
    def devices(self, request: IRequest) -> bytes:
        body = {}
        for machine in self.fleet.machines:
            if machine.foopy is None:
                continue
            entry = {"foopy": machine.foopy}
            if machine.pdu:
                pdu, _, outlet = machine.pdu.rpartition(":")
                entry.update({"pdu": pdu, "pduid": "." + outlet})
            body[machine.name] = entry
        return _json(request, body)
