"""
The inventory client: what the asset inventory knows of a host, chiefly
which PDU outlet powers it and which imaging server (Mozpool) manages it.

The reboot action needs the PDU outlet for its power-cycle step; a host
without one (or with a value that cannot be parsed) simply has no PDU step.
Inventory needs HTTP basic authentication; the password is a L{Secret}
revealed only for the request itself. The configuration refuses to send it
to an C{http://} URL unless C{[inventory] allow_plain_http} says so.

Inventory also keeps the DNS records (its C{mozdns} API, C{[inventory]
dns_api_url}): AWS loaners get their A and PTR records there
(L{InventoryClient.create_address_record}, L{InventoryClient.create_ptr_record},
L{InventoryClient.delete_dns_record}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.clients.http import JSONClient, RemoteError, url_with_params
from slaveapi.config import Secret
from slaveapi.interfaces import IInventory

_SERVICE = "inventory"
_OUTLET = re.compile(r"^([A-Za-z])([A-Za-z])([0-9]{1,4})$")
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")

PDU_KEY = "system.pdu.0"
IMAGING_SERVER_KEY = "system.imaging_server.0"


@dataclass(frozen=True)
class PDUOutlet:
    """
    One outlet of a ServerTech-style PDU.

    @ivar host: the PDU's host name.
    @ivar outlet: tower letter, infeed letter, outlet number, e.g. C{"AA12"}.
    """

    host: str
    outlet: str

    def __post_init__(self) -> None:
        if not _HOST.match(self.host):
            raise ValueError(f"PDU host {self.host!r} is not a host name")
        match = _OUTLET.match(self.outlet)
        if not match or int(match.group(3)) < 1:
            raise ValueError(
                f"PDU outlet {self.outlet!r} is not <tower letter><infeed letter><outlet number>, e.g. AA12"
            )

    @property
    def tower(self) -> int:
        """The tower, counting from 1 (A is 1, B is 2, ...)."""
        return ord(self.outlet[0].upper()) - ord("A") + 1

    @property
    def infeed(self) -> int:
        """The infeed within the tower, counting from 1 (A is 1, B is 2, ...)."""
        return ord(self.outlet[1].upper()) - ord("A") + 1

    @property
    def number(self) -> int:
        """The outlet number within the infeed, counting from 1."""
        return int(self.outlet[2:])

    @classmethod
    def parse(cls, value: str) -> PDUOutlet:
        """
        Read inventory's C{<pdu host>:<tower letter><infeed letter><outlet number>}.

        @raise ValueError: the value does not have that form; the message says why.
        """
        if not isinstance(value, str):
            raise ValueError(f"PDU value {value!r} is not a string")
        host, colon, outlet = value.strip().rpartition(":")
        if not colon or not host:
            raise ValueError(f"PDU value {value!r} is not <pdu host>:<outlet>, e.g. pdu1.example:AA12")
        return cls(host=host, outlet=outlet.upper())

    def __str__(self) -> str:
        return f"{self.host}:{self.outlet}"


@dataclass(frozen=True)
class InventorySystem:
    """
    One host in the inventory.

    @ivar pdu: the outlet powering it, or C{None} when it has none (or its
        value could not be parsed).
    @ivar imaging_server: the Mozpool server managing it, if any.
    @ivar key_values: all of the system's key/value pairs.
    """

    hostname: str
    pdu: PDUOutlet | None
    imaging_server: str | None
    key_values: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class DNSRecord:
    """
    One record made through inventory's DNS API.

    @ivar kind: C{"A"} or C{"PTR"}.
    @ivar id: the record's primary key in inventory (what deleting it needs).
    @ivar fqdn: the name (of an A record) or the target (of a PTR).
    """

    kind: str
    id: int
    fqdn: str
    ip: str

    @property
    def resource(self) -> str:
        """The DNS API's collection for this kind of record."""
        return "addressrecord" if self.kind == "A" else "ptr"


@implementer(IInventory)
class InventoryClient:
    """
    Looks hosts up in the inventory's REST API at C{api_url}.

    Requests carry basic authentication when both C{username} and
    C{password} are set.
    """

    _log = Logger()

    def __init__(
        self,
        api_url: str,
        username: str | None,
        password: Secret | None,
        json_client: JSONClient,
        dns_api_url: str | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._username = username
        self._password = password
        self._http = json_client
        self._dns_api_url = (dns_api_url or f"{self._api_url}/mozdns/api/v1_dns").rstrip("/")

    def _auth(self) -> tuple[str, str] | None:
        if self._username and self._password is not None:
            return (self._username, self._password.reveal())
        return None

    async def get_system(self, fqdn: str) -> InventorySystem | None:
        """The system whose host name is C{fqdn}, or C{None} when inventory has none."""
        url = f"{self._api_url}/system/"
        params = {"format": "json", "hostname": fqdn}
        auth = None
        if self._username and self._password is not None:
            auth = (self._username, self._password.reveal())
        data = await self._http.get_json(url, params=params, auth=auth)
        shown_url = url_with_params(url, params)
        if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
            raise RemoteError(_SERVICE, "GET", shown_url, "malformed answer: expected an object with an objects list")
        systems = data["objects"]
        if not systems:
            return None
        chosen = next(
            (item for item in systems if isinstance(item, dict) and item.get("hostname") == fqdn),
            systems[0],
        )
        return self._parse_system(chosen, fqdn, shown_url)

    def _parse_system(self, data: Any, fqdn: str, url: str) -> InventorySystem:
        if not isinstance(data, dict):
            raise RemoteError(_SERVICE, "GET", url, "malformed answer: a system is not an object")
        hostname = data.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            raise RemoteError(_SERVICE, "GET", url, "malformed answer: a system has no hostname")
        raw_pairs = data.get("key_value") or []
        if not isinstance(raw_pairs, list):
            raise RemoteError(_SERVICE, "GET", url, "malformed answer: key_value is not a list")
        key_values: dict[str, str] = {}
        for pair in raw_pairs:
            if not isinstance(pair, dict) or not isinstance(pair.get("key"), str):
                self._log.warn(
                    "inventory: {fqdn}: ignoring malformed key_value entry", fqdn=fqdn, entry=repr(pair)[:200]
                )
                continue
            value = pair.get("value")
            key_values[pair["key"]] = "" if value is None else str(value)

        pdu = None
        pdu_value = key_values.get(PDU_KEY)
        if pdu_value:
            try:
                pdu = PDUOutlet.parse(pdu_value)
            except ValueError as error:
                self._log.warn(
                    "inventory: {fqdn}: ignoring malformed {key}: {reason}",
                    fqdn=fqdn,
                    key=PDU_KEY,
                    reason=str(error),
                )
        return InventorySystem(
            hostname=hostname,
            pdu=pdu,
            imaging_server=key_values.get(IMAGING_SERVER_KEY) or None,
            key_values=MappingProxyType(key_values),
        )


    # --- DNS records (the mozdns API) -----------------------------------------

    async def create_address_record(
        self, fqdn: str, ip: str, description: str, views: tuple[str, ...] = ("private",)
    ) -> DNSRecord:
        """
        Create the A record C{fqdn} -> C{ip} in the DNS C{views}.

        @raise RemoteError: inventory refused (the reason quotes its
            C{error_messages}, e.g. a record that already exists) or failed.
        """
        return await self._create_dns_record("A", fqdn, ip, description, views)

    async def create_ptr_record(
        self, fqdn: str, ip: str, description: str, views: tuple[str, ...] = ("private",)
    ) -> DNSRecord:
        """Create the PTR record C{ip} -> C{fqdn}; errors as L{create_address_record}."""
        return await self._create_dns_record("PTR", fqdn, ip, description, views)

    async def delete_dns_record(self, record: DNSRecord) -> None:
        """
        Delete a record made by L{create_address_record} or L{create_ptr_record}.

        @raise NotFound: inventory has no such record (any more).
        @raise RemoteError: inventory refused or failed.
        """
        url = f"{self._dns_api_url}/{record.resource}/{record.id}/"
        try:
            await self._http.request_json("DELETE", url, params={"format": "json"}, auth=self._auth())
        except RemoteError as error:
            raise _with_detail(error) from None
        self._log.info(
            "inventory: deleted {kind} record {id} ({fqdn} {ip})",
            kind=record.kind,
            id=record.id,
            fqdn=record.fqdn,
            ip=record.ip,
        )

    async def _create_dns_record(
        self, kind: str, fqdn: str, ip: str, description: str, views: tuple[str, ...]
    ) -> DNSRecord:
        resource = "addressrecord" if kind == "A" else "ptr"
        url = f"{self._dns_api_url}/{resource}/"
        body: dict[str, Any] = {
            "ip_str": ip,
            "ip_type": "6" if ":" in ip else "4",
            "views": list(views),
            "description": description,
        }
        # An A record names its host in "fqdn"; a PTR its target in "name" (mozdns, as invtool sends them).
        body["fqdn" if kind == "A" else "name"] = fqdn
        try:
            data = await self._http.post_json(url, json_body=body, auth=self._auth())
        except RemoteError as error:
            raise _with_detail(error) from None
        record_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(record_id, int) or isinstance(record_id, bool):
            raise RemoteError(_SERVICE, "POST", url, f"malformed answer: the new {kind} record has no id")
        self._log.info("inventory: created {kind} record {id} ({fqdn} {ip})", kind=kind, id=record_id, fqdn=fqdn, ip=ip)
        return DNSRecord(kind=kind, id=record_id, fqdn=fqdn, ip=ip)


def _with_detail(error: RemoteError) -> RemoteError:
    """C{error} with the DNS API's own explanation (a 400's C{error_messages}) added to its reason."""
    body = error.body
    detail = None
    if isinstance(body, dict):
        detail = body.get("error_messages") or body.get("message") or body.get("msg")
    if not detail:
        return error
    text = detail if isinstance(detail, str) else _flatten(detail)
    kind = type(error)
    return kind(error.service, error.method, error.url, f"{error.reason}: {text[:200]}", status=error.status, body=body)


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return ", ".join(_flatten(item) for item in detail)
    return str(detail)
