"""
The slavealloc client: which slaves exist, what they are for, which master
each one is attached to, and whether it is enabled.

slavealloc is the source of truth for a slave's purpose, pool, basedir and
enabled flag; the C{disable} action turns the flag off through it, and
C{GET /slaves} lists and filters its records. Records arrive as
L{SlaveRecord} and L{MasterRecord}; anything slavealloc sends that does not
have the documented shape becomes a L{RemoteError} saying what was wrong,
never a C{KeyError} deep inside an action.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from zope.interface import implementer

from slaveapi.clients.http import JSONClient, NotFound, RemoteError, url_with_params
from slaveapi.interfaces import ISlavealloc

_SERVICE = "slavealloc"
_DRIVE = re.compile(r"^([A-Za-z]):(.*)$")


@dataclass(frozen=True)
class SlaveRecord:
    """
    One slave as slavealloc knows it.

    @ivar basedir: where buildbot lives on the slave, with Windows paths in
        the MSYS form SlaveAPI's shell commands use (C{C:\\slave} becomes
        C{/c/slave}).
    @ivar current_masterid: the master the slave is attached to, or C{None}.
    @ivar fields: every field slavealloc sent, as received (its C{basedir}
        unconverted); L{to_json} gives them with the converted basedir.
    """

    slaveid: int
    name: str
    purpose: str | None
    environment: str | None
    pool: str | None
    datacenter: str | None
    distro: str | None
    trustlevel: str | None
    basedir: str | None
    enabled: bool
    current_masterid: int | None
    current_master: str | None
    notes: str
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """slavealloc's fields, as published by C{GET /slaves}, with the converted basedir."""
        data = dict(self.fields)
        if "basedir" in data:
            data["basedir"] = self.basedir
        return data


@dataclass(frozen=True)
class MasterRecord:
    """One Buildbot master as slavealloc knows it."""

    masterid: int
    nickname: str
    fqdn: str
    http_port: int | None
    pb_port: int | None
    enabled: bool


def convert_basedir(basedir: str) -> str:
    """
    A Windows path in the MSYS form: backslashes become slashes and a drive
    letter C{X:} becomes C{/x}. Other paths are returned unchanged.

    >>> convert_basedir("C:\\\\slave\\\\test-1")
    '/c/slave/test-1'
    """
    path = basedir.replace("\\", "/")
    match = _DRIVE.match(path)
    if match:
        rest = match.group(2)
        if not rest.startswith("/"):
            rest = "/" + rest
        path = "/" + match.group(1).lower() + rest
    return path


def filter_slaves(
    slaves: Iterable[SlaveRecord],
    *,
    purpose: str | None = None,
    environment: str | None = None,
    pools: Sequence[str] = (),
    enabled: bool | None = None,
) -> list[SlaveRecord]:
    """
    The slaves matching every criterion given, in their original order.

    A criterion left at its default does not filter; C{pools} matches a slave
    in any of them.
    """
    wanted_pools = set(pools)
    return [
        slave
        for slave in slaves
        if (purpose is None or slave.purpose == purpose)
        and (environment is None or slave.environment == environment)
        and (not wanted_pools or slave.pool in wanted_pools)
        and (enabled is None or slave.enabled == enabled)
    ]


@implementer(ISlavealloc)
class SlaveallocClient:
    """
    Reads and updates slavealloc's REST API at C{api_url}.

    @param api_url: the API root, e.g. C{http://slavealloc/api}.
    """

    def __init__(self, api_url: str, json_client: JSONClient) -> None:
        self._api_url = api_url.rstrip("/")
        self._http = json_client

    async def get_slave(self, name: str) -> SlaveRecord | None:
        """The slave called C{name}, or C{None} when slavealloc does not know it."""
        url = f"{self._api_url}/slaves/{quote(name, safe='')}"
        params = {"byname": "1"}
        try:
            data = await self._http.get_json(url, params=params)
        except NotFound:
            return None
        return _parse_slave(data, "GET", url_with_params(url, params), "slave")

    async def list_slaves(self) -> list[SlaveRecord]:
        """Every slave slavealloc knows, in the order it sent them."""
        url = f"{self._api_url}/slaves"
        data = await self._http.get_json(url)
        if not isinstance(data, list):
            raise RemoteError(_SERVICE, "GET", url, f"expected a list of slaves, got {_kind(data)}")
        return [_parse_slave(item, "GET", url, f"slaves[{index}]") for index, item in enumerate(data)]

    async def get_master(self, masterid: int) -> MasterRecord | None:
        """The master with id C{masterid}, or C{None} when there is none."""
        url = f"{self._api_url}/masters/{int(masterid)}"
        try:
            data = await self._http.get_json(url)
        except NotFound:
            return None
        return _parse_master(data, "GET", url)

    async def set_enabled(self, slave: SlaveRecord, enabled: bool) -> SlaveRecord:
        """Set the slave's enabled flag; returns the record slavealloc answered with."""
        url = f"{self._api_url}/slaves/{slave.slaveid}"
        data = await self._http.put_json(url, json_body={"enabled": bool(enabled)})
        return _parse_slave(data, "PUT", url, "slave")


def _kind(value: Any) -> str:
    """A JSON type name for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Fields:
    """Typed reads from one JSON object, failing with a L{RemoteError} naming the field."""

    def __init__(self, data: Any, method: str, url: str, what: str) -> None:
        self._method = method
        self._url = url
        self._what = what
        if not isinstance(data, dict):
            raise self.fail(f"{what} is {_kind(data)}, expected an object")
        self.data: dict[str, Any] = data

    def fail(self, reason: str) -> RemoteError:
        return RemoteError(_SERVICE, self._method, self._url, f"malformed answer: {reason}")

    def integer(self, key: str, *, required: bool) -> int | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(f"{self._what} has no {key}")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{self._what}.{key} is {_kind(value)}, expected an integer")
        return value

    def string(self, key: str, *, required: bool) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(f"{self._what} has no {key}")
            return None
        if not isinstance(value, str):
            raise self.fail(f"{self._what}.{key} is {_kind(value)}, expected a string")
        if required and not value:
            raise self.fail(f"{self._what}.{key} is empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.fail(f"{self._what}.{key} is {_kind(value)}, expected a boolean")


def _parse_slave(data: Any, method: str, url: str, what: str) -> SlaveRecord:
    """A L{SlaveRecord} from slavealloc's JSON, or a L{RemoteError} saying what was wrong."""
    fields = _Fields(data, method, url, what)
    slaveid = fields.integer("slaveid", required=True)
    name = fields.string("name", required=True)
    assert slaveid is not None and name is not None  # noqa: S101  (required=True never answers None)
    basedir = fields.string("basedir", required=False)
    return SlaveRecord(
        slaveid=slaveid,
        name=name,
        purpose=fields.string("purpose", required=False),
        environment=fields.string("environment", required=False),
        pool=fields.string("pool", required=False),
        datacenter=fields.string("datacenter", required=False),
        distro=fields.string("distro", required=False),
        trustlevel=fields.string("trustlevel", required=False),
        basedir=convert_basedir(basedir) if basedir is not None else None,
        enabled=fields.boolean("enabled", default=True),
        current_masterid=fields.integer("current_masterid", required=False),
        current_master=fields.string("current_master", required=False),
        notes=fields.string("notes", required=False) or "",
        fields=MappingProxyType(dict(fields.data)),
    )


def _parse_master(data: Any, method: str, url: str) -> MasterRecord:
    """A L{MasterRecord} from slavealloc's JSON, or a L{RemoteError} saying what was wrong."""
    fields = _Fields(data, method, url, "master")
    masterid = fields.integer("masterid", required=True)
    nickname = fields.string("nickname", required=True)
    fqdn = fields.string("fqdn", required=True)
    assert masterid is not None and nickname is not None and fqdn is not None  # noqa: S101  (required=True)
    return MasterRecord(
        masterid=masterid,
        nickname=nickname,
        fqdn=fqdn,
        http_port=fields.integer("http_port", required=False),
        pb_port=fields.integer("pb_port", required=False),
        enabled=fields.boolean("enabled", default=True),
    )
