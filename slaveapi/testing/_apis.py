"""
In-memory HTTP APIs: slavealloc, inventory, Bugzilla, buildapi, devices.json
and Buildbot masters. Each keeps its data in plain attributes a test fills
and reads, and lists what it was asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zope.interface import implementer

from slaveapi.clients.bugzilla import Bug
from slaveapi.clients.devices import Device
from slaveapi.clients.inventory import DNSRecord, InventorySystem, PDUOutlet
from slaveapi.clients.master import MasterError, ShutdownRequested, cannot_on_08
from slaveapi.clients.slavealloc import MasterRecord, SlaveRecord
from slaveapi.interfaces import (
    IBugzilla,
    IBuildapi,
    IDevices,
    IInventory,
    IMaster,
    ISlavealloc,
)
from slaveapi.testing._hosts import FakeHosts

#: Bugzilla statuses of a closed bug.
_CLOSED = ("RESOLVED", "VERIFIED", "CLOSED")


def slave_record(name: str, slaveid: int = 1, **fields: Any) -> SlaveRecord:
    """A plain enabled slavealloc record for C{name}; C{fields} override any field."""
    record = SlaveRecord(
        slaveid=slaveid, name=name, purpose="build", environment="prod", pool="build-lab", datacenter="lab",
        distro="centos6", trustlevel="core", basedir="/builds/slave", enabled=True, current_masterid=None,
        current_master=None, notes="",
    )
    return dataclasses.replace(record, **fields)


@implementer(ISlavealloc)
class FakeSlavealloc:
    """
    Knows the slaves given (names or records; in any case, like slavealloc's
    database) and the masters in C{masters}.

    @ivar asked: every name looked up.
    @ivar changes: C{(name, enabled)} for every L{set_enabled}.
    """

    def __init__(self, slaves: Iterable[str | SlaveRecord] = (), masters: Iterable[MasterRecord] = ()) -> None:
        self.records: dict[str, SlaveRecord] = {}
        for index, slave in enumerate(slaves):
            record = slave if isinstance(slave, SlaveRecord) else slave_record(slave, index + 1)
            self.records[record.name.lower()] = record
        self.masters = {master.masterid: master for master in masters}
        self.asked: list[str] = []
        self.changes: list[tuple[str, bool]] = []
        self.error: Exception | None = None

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def get_slave(self, name: str) -> SlaveRecord | None:
        self.asked.append(name)
        self._check()
        return self.records.get(name.lower())

    async def list_slaves(self) -> list[SlaveRecord]:
        self._check()
        return list(self.records.values())

    async def get_master(self, masterid: int) -> MasterRecord | None:
        self._check()
        return self.masters.get(masterid)

    async def set_enabled(self, slave: SlaveRecord, enabled: bool) -> SlaveRecord:
        self._check()
        self.changes.append((slave.name, enabled))
        changed = dataclasses.replace(self.records.get(slave.name.lower(), slave), enabled=enabled)
        self.records[slave.name.lower()] = changed
        return changed


@implementer(IInventory)
class FakeInventory:
    """
    Systems from C{systems} (by FQDN), else from the L{FakeHosts} machines'
    outlets and imaging servers; DNS records made are kept in C{records}.
    """

    def __init__(self, hosts: FakeHosts | None = None, systems: Mapping[str, InventorySystem] | None = None) -> None:
        self._hosts = hosts
        self.systems = dict(systems or {})
        self.records: list[DNSRecord] = []
        self.deleted: list[DNSRecord] = []
        self.error: Exception | None = None

    async def get_system(self, fqdn: str) -> InventorySystem | None:
        if self.error is not None:
            raise self.error
        if fqdn in self.systems:
            return self.systems[fqdn]
        host = self._hosts.find(fqdn) if self._hosts is not None else None
        if host is None:
            return None
        pdu = PDUOutlet.parse(host.outlet) if host.outlet else None
        return InventorySystem(hostname=host.fqdn, pdu=pdu, imaging_server=host.imaging_server)

    async def create_address_record(
        self, fqdn: str, ip: str, description: str, views: tuple[str, ...] = ("private",)
    ) -> DNSRecord:
        return self._make("A", fqdn, ip)

    async def create_ptr_record(
        self, fqdn: str, ip: str, description: str, views: tuple[str, ...] = ("private",)
    ) -> DNSRecord:
        return self._make("PTR", fqdn, ip)

    def _make(self, kind: str, fqdn: str, ip: str) -> DNSRecord:
        if self.error is not None:
            raise self.error
        record = DNSRecord(kind=kind, id=len(self.records) + len(self.deleted) + 1, fqdn=fqdn, ip=ip)
        self.records.append(record)
        return record

    async def delete_dns_record(self, record: DNSRecord) -> None:
        if self.error is not None:
            raise self.error
        self.records.remove(record)
        self.deleted.append(record)


@implementer(IBugzilla)
class FakeBugzilla:
    """
    Bugs by id in C{bugs}; C{created} lists the fields of every bug filed,
    C{comments} the comments by bug id. With C{error} set, every call raises it.
    """

    def __init__(self) -> None:
        self.bugs: dict[int, Bug] = {}
        self.created: list[dict[str, Any]] = []
        self.comments: dict[int, list[str]] = {}
        self.updates: list[tuple[int, dict[str, Any]]] = []
        self.error: Exception | None = None
        self._next_id = 1000

    def add_bug(self, summary: str, **fields: Any) -> Bug:
        """Put a bug in (open, unless C{status} says otherwise); returns it."""
        self._next_id += 1
        status = fields.pop("status", "NEW")
        bug = Bug(
            id=fields.pop("id", self._next_id),
            alias=fields.pop("alias", None),
            summary=summary,
            status=status,
            resolution=fields.pop("resolution", "FIXED" if status in _CLOSED else ""),
            is_open=status not in _CLOSED,
            product=fields.pop("product", ""),
            component=fields.pop("component", ""),
            blocks=tuple(fields.pop("blocks", ())),
            depends_on=tuple(fields.pop("depends_on", ())),
        )
        if fields:
            raise TypeError(f"unknown bug fields: {', '.join(fields)}")
        self.bugs[bug.id] = bug
        return bug

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def get_bug(self, id_or_alias: str | int) -> Bug | None:
        self._check()
        for bug in self.bugs.values():
            if str(bug.id) == str(id_or_alias) or bug.alias == id_or_alias:
                return bug
        return None

    async def search(self, **criteria: Any) -> list[Bug]:
        self._check()
        return [bug for bug in self.bugs.values() if _matches(bug, criteria)]

    async def create_bug(self, **fields: Any) -> int:
        self._check()
        self.created.append(dict(fields))
        known = ("alias", "product", "component", "blocks")
        bug = self.add_bug(fields["summary"], **{key: fields[key] for key in known if key in fields})
        for blocked in bug.blocks:
            if blocked in self.bugs:
                target = self.bugs[blocked]
                self.bugs[blocked] = dataclasses.replace(target, depends_on=(*target.depends_on, bug.id))
        return bug.id

    async def add_comment(self, bug_id: int, text: str) -> None:
        self._check()
        self.comments.setdefault(bug_id, []).append(text)

    async def update_bug(self, bug_id: int, **fields: Any) -> None:
        self._check()
        self.updates.append((bug_id, dict(fields)))
        bug = self.bugs[bug_id]
        if "status" in fields:
            status = fields["status"]
            is_open = status not in _CLOSED
            bug = dataclasses.replace(
                bug, status=status, is_open=is_open, resolution="" if is_open else fields.get("resolution", "FIXED")
            )
        self.bugs[bug_id] = bug


def _matches(bug: Bug, criteria: Mapping[str, Any]) -> bool:
    """Bugzilla's search, for the parameters SlaveAPI uses (C{summary} is a substring)."""
    for key, wanted in criteria.items():
        if key == "resolution":
            ok = (bug.is_open and not bug.resolution) if wanted == "---" else bug.resolution == wanted
        elif key == "blocks":
            ok = int(wanted) in bug.blocks
        elif key == "summary":
            ok = str(wanted) in bug.summary
        else:
            ok = getattr(bug, key, None) == wanted
        if not ok:
            return False
    return True


@implementer(IBuildapi)
class FakeBuildapi:
    """Recent jobs by machine name in C{jobs}, newest first."""

    def __init__(self, jobs: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        self.jobs = dict(jobs or {})
        self.asked: list[str] = []

    async def recent_jobs(self, name: str, count: int = 10) -> list[dict[str, Any]]:
        self.asked.append(name)
        return list(self.jobs.get(name, []))[:count]


@implementer(IDevices)
class FakeDevices:
    """Knows the devices given (names, each driven by C{foopy}, or L{Device}s); C{asked} lists every lookup."""

    def __init__(self, devices: Iterable[str | Device] = (), foopy: str = "foopy-1") -> None:
        self.devices = {
            device.name if isinstance(device, Device) else device: (
                device if isinstance(device, Device) else Device(name=device, foopy=foopy)
            )
            for device in devices
        }
        self.asked: list[str] = []

    async def get_device(self, name: str) -> Device | None:
        self.asked.append(name)
        return self.devices.get(name)


@implementer(IMaster)
class FakeMaster:
    """
    Masters that accept every graceful shutdown, pause and unpause (or raise
    C{error}); C{requests} lists C{(master nickname, worker, reason)} of the
    shutdowns, and C{on_shutdown} (if set) is told the worker's name, e.g.
    to write its log.

    As a Buildbot 0.8 master (C{flavour="0.8"}) it cannot pause or say
    whether a worker is connected, as L{MasterClient} says.

    @ivar connected: whether each worker the masters know is connected; a
        worker not in it is unknown (L{worker_connected} raises).
    @ivar paused: the pause reason of each paused worker.
    @ivar controls: C{(master nickname, worker, "pause" or "unpause")} for
        every pause or unpause asked, even refused.
    """

    def __init__(self, flavour: str = "modern") -> None:
        self.flavour = flavour
        self.requests: list[tuple[str, str, str]] = []
        self.error: Exception | None = None
        self.on_shutdown: Callable[[str], None] | None = None
        self.connected: dict[str, bool] = {}
        self.paused: dict[str, str] = {}
        self.controls: list[tuple[str, str, str]] = []

    async def shutdown_worker(self, master: MasterRecord, worker: str, reason: str) -> ShutdownRequested:
        self.requests.append((master.nickname, worker, reason))
        if self.error is not None:
            raise self.error
        if self.on_shutdown is not None:
            self.on_shutdown(worker)
        return ShutdownRequested(f"http://{master.fqdn}/api/v2/workers/{worker}", self.flavour, 200)

    async def worker_connected(self, master: MasterRecord, worker: str) -> bool | None:
        if self.error is not None:
            raise self.error
        if self.flavour == "0.8":
            return None
        if worker not in self.connected:
            raise MasterError(f"master {master.nickname}: the master does not know worker {worker}")
        return self.connected[worker]

    async def pause_worker(self, master: MasterRecord, worker: str, reason: str) -> None:
        self._control(master, worker, "pause")
        self.paused[worker] = reason

    async def unpause_worker(self, master: MasterRecord, worker: str) -> None:
        self._control(master, worker, "unpause")
        self.paused.pop(worker, None)

    def _control(self, master: MasterRecord, worker: str, verb: str) -> None:
        self.controls.append((master.nickname, worker, verb))
        if self.error is not None:
            raise self.error
        if self.flavour == "0.8":
            raise cannot_on_08(master, verb)
