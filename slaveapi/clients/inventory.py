"""
The inventory client: what the asset inventory knows of a host, chiefly
which PDU outlet powers it and which imaging server (Mozpool) manages it.

The reboot action needs the PDU outlet for its power-cycle step; a host
without one (or with a value that cannot be parsed) simply has no PDU step.
Inventory needs HTTP basic authentication; the password is a L{Secret}
revealed only for the request itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from twisted.logger import Logger

from slaveapi.clients.http import JSONClient, RemoteError, url_with_params
from slaveapi.config import Secret

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
    def parse(cls, value: str) -> "PDUOutlet":
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
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._username = username
        self._password = password
        self._http = json_client

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
