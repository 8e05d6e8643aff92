"""
The devices.json client: which foopy drives a device.

Mobile test devices do not run buildbot themselves; a "foopy" host runs it
for them. devices.json maps each device to its foopy (and PDU details).
The file is optional: with no URL configured nothing is a device.

Every action asks whether its machine is a device, so a reboot wave of a
thousand machines would fetch the whole file a thousand times. The file
changes when devices are added, not by the second: a copy is kept for
C{MAX_AGE} seconds, and lookups made while it is being fetched share that
one fetch. A failed fetch is not kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from slaveapi.clients.http import JSONClient, RemoteError
from slaveapi.interfaces import IDevices

_SERVICE = "devices"

#: Seconds a fetched devices.json is used before it is fetched again.
MAX_AGE = 60.0


@dataclass(frozen=True)
class Device:
    """
    One device from devices.json.

    @ivar foopy: the host that runs the device's buildbot, if any.
    @ivar fields: everything devices.json says about the device.
    """

    name: str
    foopy: str | None
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)


@implementer(IDevices)
class DevicesClient:
    """Looks devices up in the devices.json at C{url} (C{None}: not configured)."""

    _log = Logger()

    def __init__(self, url: str | None, json_client: JSONClient, reactor: Any = None) -> None:
        """
        @param reactor: the clock a fetched copy ages by; C{None}: no copy
            is kept (every lookup fetches).
        """
        self._url = url
        self._http = json_client
        self._reactor = reactor
        self._copy: tuple[float, dict[str, Any]] | None = None
        self._sharing: list[Deferred[dict[str, Any]]] | None = None

    async def get_device(self, name: str) -> Device | None:
        """The device called C{name}, or C{None} when it is not one (or no URL is configured)."""
        devices = await self._load()
        if devices is None:
            return None
        entry = devices.get(name)
        if entry is None:
            return None
        return self._device(name, entry)

    async def list_devices(self) -> list[Device]:
        """
        Every device devices.json lists, in its order; none when no URL is
        configured. For the host key enrolment, which must reach the foopies
        SlaveAPI logs in to for them.
        """
        devices = await self._load()
        if devices is None:
            return []
        return [self._device(str(name), entry) for name, entry in devices.items()]

    async def _load(self) -> dict[str, Any] | None:
        """devices.json's object of devices; C{None} when no URL is configured."""
        if not self._url:
            return None
        if self._reactor is None:
            return await self._fetch(self._url)
        now = self._reactor.seconds()
        if self._copy is not None and now - self._copy[0] < MAX_AGE:
            return self._copy[1]
        if self._sharing is not None:
            waiter: Deferred[dict[str, Any]] = Deferred()
            self._sharing.append(waiter)
            return await waiter
        sharing: list[Deferred[dict[str, Any]]] = []
        self._sharing = sharing
        try:
            data = await self._fetch(self._url)
        except BaseException:
            failure = Failure()
            self._sharing = None
            for waiter in sharing:
                if not waiter.called:
                    waiter.errback(failure)
            raise
        self._sharing = None
        self._copy = (now, data)
        for waiter in sharing:
            if not waiter.called:
                waiter.callback(data)
        return data

    async def _fetch(self, url: str) -> dict[str, Any]:
        data = await self._http.get_json(url)
        if not isinstance(data, dict):
            raise RemoteError(_SERVICE, "GET", url, "malformed answer: expected an object of devices")
        return data

    def _device(self, name: str, entry: Any) -> Device:
        if not isinstance(entry, dict):
            raise RemoteError(_SERVICE, "GET", self._url or "", f"malformed answer: device {name} is not an object")
        foopy = entry.get("foopy")
        if foopy is not None and (not isinstance(foopy, str) or not foopy):
            self._log.warn("devices: {device}: ignoring malformed foopy value", device=name)
            foopy = None
        return Device(name=name, foopy=foopy, fields=MappingProxyType(dict(entry)))

