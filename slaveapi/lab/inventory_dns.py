"""
The lab's inventory DNS API (mozdns): A and PTR records that really resolve.

Mounted by L{slaveapi.lab.http.LabHTTP} at C{/inventory/api/mozdns/api/v1_dns}
(inventory's C{dns_api_url}), with inventory's basic authentication. It
speaks the Tastypie API invtool uses:

  - C{POST /addressrecord/} with C{{"fqdn", "ip_str", "ip_type": "4",
    "views": ["private"], "description"}} and C{POST /ptr/} with C{{"name"
    (the target), "ip_str", "ip_type", "views", "description"}} -> 201 and
    the record (with its C{id} and C{resource_uri}); a record that exists
    already, a name outside the lab's zone or a bad address -> 400 with
    C{{"error_messages": {"<field>": ["..."]}}};
  - C{GET /addressrecord/} and C{GET /ptr/} (filters C{fqdn}, C{name},
    C{ip_str}) -> C{{"meta": {...}, "objects": [...]}};
  - C{GET} and C{DELETE /addressrecord/<id>/}, C{/ptr/<id>/} -> the record,
    or 204 when deleted; 404 when there is no such record.

Records made here feed the lab's DNS server: a name and address get their A
and PTR there while an A or a PTR record of that pair exists here, and lose
them when the last one is deleted (the lab's DNS server publishes names and
addresses in pairs). Only records made through this API are listed; the
fleet's own names are not records here (SlaveAPI never makes records for a
name that already resolves, so it never takes one of them away).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from slaveapi.lab.dns import LabDNS

_RESOURCES = {"addressrecord": "A", "ptr": "PTR"}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{1,63}$")
_REVERSE_NETWORK = ipaddress.ip_network("127.0.0.0/8")


class _Invalid(Exception):
    """A request the API refuses with 400 and C{error_messages}."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message


@dataclass
class LabDNSRecord:
    """One record made through the API."""

    id: int
    kind: str
    fqdn: str
    ip: str
    views: list[str] = field(default_factory=list)
    description: str = ""
    ttl: int | None = None

    def to_json(self) -> dict[str, Any]:
        resource = "addressrecord" if self.kind == "A" else "ptr"
        data: dict[str, Any] = {
            "id": self.id,
            "ip_str": self.ip,
            "ip_type": "6" if ":" in self.ip else "4",
            "views": list(self.views),
            "description": self.description,
            "ttl": self.ttl,
            "resource_uri": f"/en-US/mozdns/api/v1_dns/{resource}/{self.id}/",
        }
        data["fqdn" if self.kind == "A" else "name"] = self.fqdn
        return data


class InventoryDNSFake:
    """
    The DNS records API under its own Klein app (see the module docstring).

    @ivar records: every record made and not deleted, by id.
    """

    app = Klein()
    _log = Logger()

    def __init__(self, dns: LabDNS, user: str, password: str) -> None:
        self._dns = dns
        self._user = user.encode("utf-8")
        self._password = password.encode("utf-8")
        self.records: dict[int, LabDNSRecord] = {}
        self._next_id = 1
        self._published: set[tuple[str, str]] = set()

    def find(self, kind: str | None = None, fqdn: str | None = None, ip: str | None = None) -> list[LabDNSRecord]:
        """The records of C{kind} (C{"A"}, C{"PTR"}; any when None) for C{fqdn} and C{ip}."""
        return [
            record
            for record in self.records.values()
            if (kind is None or record.kind == kind)
            and (fqdn is None or record.fqdn.lower() == fqdn.lower().rstrip("."))
            and (ip is None or record.ip == ip)
        ]

    # --- HTTP ------------------------------------------------------------------

    def _authorised(self, request: IRequest) -> bool:
        return hmac.compare_digest(request.getUser() or b"", self._user) and hmac.compare_digest(
            request.getPassword() or b"", self._password
        )

    def _answer(self, request: IRequest, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        if status == 204:
            return b""
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return json.dumps(body).encode("utf-8")

    def _refuse(self, request: IRequest) -> bytes | None:
        """A 401 answer when the credentials are wrong, else None."""
        if self._authorised(request):
            return None
        request.setHeader(b"WWW-Authenticate", b'Basic realm="inventory"')
        return self._answer(request, 401, {"error": "unauthorized", "msg": "bad or missing credentials"})

    @app.handle_errors(NotFound, MethodNotAllowed)
    def _no_such_resource(self, request: IRequest, failure: Any) -> bytes:
        return self._answer(request, 404, {"error_message": "Sorry, this request could not be processed."})

    @app.handle_errors(Exception)
    def _broken(self, request: IRequest, failure: Any) -> bytes:
        self._log.failure("lab inventory DNS: {uri} failed", failure, uri=request.uri)
        return self._answer(request, 500, {"error_message": "the lab's inventory DNS API failed"})

    @app.route("/<resource>/", methods=["POST"])
    def create(self, request: IRequest, resource: str) -> bytes:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        kind = _RESOURCES.get(resource)
        if kind is None:
            return self._answer(request, 404, {"error_message": f"no resource {resource!r}"})
        try:
            record = self._create(kind, request.content.read())
        except _Invalid as error:
            return self._answer(request, 400, {"error_messages": {error.field_name: [error.message]}})
        return self._answer(request, 201, record.to_json())

    @app.route("/<resource>/", methods=["GET"])
    def listing(self, request: IRequest, resource: str) -> bytes:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        kind = _RESOURCES.get(resource)
        if kind is None:
            return self._answer(request, 404, {"error_message": f"no resource {resource!r}"})

        def arg(name: str) -> str | None:
            values = request.args.get(name.encode("ascii"))
            return values[0].decode("utf-8", "replace") if values else None

        found = self.find(kind, arg("fqdn") or arg("name"), arg("ip_str"))
        meta = {"limit": 20, "next": None, "offset": 0, "previous": None, "total_count": len(found)}
        return self._answer(request, 200, {"meta": meta, "objects": [record.to_json() for record in found]})

    @app.route("/<resource>/<int:record_id>/", methods=["GET"])
    def detail(self, request: IRequest, resource: str, record_id: int) -> bytes:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        record = self.records.get(record_id)
        if record is None or record.kind != _RESOURCES.get(resource):
            return self._answer(request, 404, {"error_message": f"no {resource} {record_id}"})
        return self._answer(request, 200, record.to_json())

    @app.route("/<resource>/<int:record_id>/", methods=["DELETE"])
    def delete(self, request: IRequest, resource: str, record_id: int) -> bytes:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        record = self.records.get(record_id)
        if record is None or record.kind != _RESOURCES.get(resource):
            return self._answer(request, 404, {"error_message": f"no {resource} {record_id}"})
        del self.records[record_id]
        self._sync(record.fqdn, record.ip)
        self._log.info(
            "lab inventory DNS: deleted {kind} {fqdn} {ip}", kind=record.kind, fqdn=record.fqdn, ip=record.ip
        )
        return self._answer(request, 204, None)

    # --- records -----------------------------------------------------------------

    def _create(self, kind: str, raw: bytes) -> LabDNSRecord:
        try:
            body = json.loads(raw or b"")
        except ValueError:
            raise _Invalid("__all__", "The request body is not JSON.") from None
        if not isinstance(body, dict):
            raise _Invalid("__all__", "The request body must be a JSON object.")
        name_field = "fqdn" if kind == "A" else "name"
        fqdn = body.get(name_field)
        if not isinstance(fqdn, str) or not _HOSTNAME.match(fqdn.rstrip(".")):
            raise _Invalid(name_field, "Enter a valid fully qualified domain name.")
        fqdn = fqdn.rstrip(".").lower()
        zone = self._dns.domain.lower()
        if not (fqdn == zone or fqdn.endswith("." + zone)):
            raise _Invalid(name_field, f"Could not find an existing domain for {fqdn}.")
        ip_text = body.get("ip_str")
        try:
            ip = ipaddress.ip_address(ip_text if isinstance(ip_text, str) else "")
        except ValueError:
            raise _Invalid("ip_str", "Enter a valid IPv4 address.") from None
        if ip.version != 4 or str(body.get("ip_type", "4")) != "4":
            raise _Invalid("ip_str", "Only IPv4 records (ip_type 4) are served by the lab.")
        if kind == "PTR" and ip not in _REVERSE_NETWORK:
            raise _Invalid("ip_str", f"Could not find an existing reverse domain for {ip}.")
        views = body.get("views", [])
        if not isinstance(views, list) or not all(isinstance(view, str) for view in views):
            raise _Invalid("views", "Expected a list of view names.")
        description = body.get("description", "")
        if not isinstance(description, str):
            raise _Invalid("description", "Expected text.")
        ttl = body.get("ttl")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
            raise _Invalid("ttl", "Expected a non-negative integer.")
        if kind == "A" and self.find("A", fqdn, str(ip)):
            raise _Invalid("__all__", f"An A record for {fqdn} with address {ip} already exists.")
        if kind == "PTR" and self.find("PTR", None, str(ip)):
            raise _Invalid("__all__", f"A PTR record for {ip} already exists.")
        record = LabDNSRecord(self._next_id, kind, fqdn, str(ip), list(views), description, ttl)
        self._next_id += 1
        self.records[record.id] = record
        self._sync(record.fqdn, record.ip)
        self._log.info("lab inventory DNS: created {kind} {fqdn} {ip}", kind=kind, fqdn=fqdn, ip=record.ip)
        return record

    def _sync(self, fqdn: str, ip: str) -> None:
        """Publish C{fqdn}/C{ip} in the lab's DNS while a record of the pair exists; withdraw it after."""
        pair = (fqdn, ip)
        wanted = bool(self.find(None, fqdn, ip))
        if wanted and pair not in self._published:
            self._dns.add_address(fqdn, ip)
            self._published.add(pair)
        elif not wanted and pair in self._published:
            self._dns.remove_address(fqdn, ip)
            self._published.discard(pair)
