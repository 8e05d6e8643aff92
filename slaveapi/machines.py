"""
What is known of one machine ("slave"), gathered from the remote systems.

L{find_slave} answers the questions every action asks first (does the machine
exist, what is its address, where is its buildbot); L{load_slave_info} adds
everything else for C{GET /slaves/<slave>}. A remote system that fails does
not hide what the others said: its failure is recorded in C{errors}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from twisted.internet.defer import CancelledError, Deferred, gatherResults

from slaveapi.clients.bugzilla import Bug
from slaveapi.clients.dns import HostInfo
from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.slavealloc import MasterRecord, SlaveRecord
from slaveapi.context import Context
from slaveapi.hostnames import is_valid_hostname

T = TypeVar("T")

def is_valid_slave_name(name: str) -> bool:
    """Whether C{name} may name a machine (checked before any lookup): a hostname."""
    return is_valid_hostname(name)


class SlaveNotFound(Exception):
    """Neither DNS nor slavealloc knows the machine."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not known to DNS or slavealloc")
        self.name = name


@dataclass
class Slave:
    """
    One machine as SlaveAPI sees it.

    @ivar name: the short name, as slavealloc and the URL know it.
    @ivar buildbot_host: where the machine's buildbot runs and its
        twistd.log lives: the machine itself, or the foopy that drives a device.
    """

    name: str
    host: HostInfo | None = None
    slavealloc: SlaveRecord | None = None
    master: MasterRecord | None = None
    ipmi: str | None = None
    pdu: PDUOutlet | None = None
    mozpool_server: str | None = None
    bug: Bug | None = None
    recent_jobs: list[dict[str, Any]] = field(default_factory=list)
    buildbot_host: str | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def fqdn(self) -> str | None:
        return self.host.fqdn if self.host else None

    @property
    def address(self) -> str:
        """What to connect to: the IP if known, else the name."""
        if self.host:
            return self.host.ip
        return self.name

    @property
    def basedir(self) -> str | None:
        return self.slavealloc.basedir if self.slavealloc else None

    @property
    def enabled(self) -> bool | None:
        return self.slavealloc.enabled if self.slavealloc else None

    def to_dict(self) -> dict[str, Any]:
        """The machine's JSON for C{GET /slaves/<slave>}."""
        host = self.host
        data: dict[str, Any] = {
            "name": self.name,
            "fqdn": host.fqdn if host else None,
            "domain": host.domain if host else None,
            "ip": host.ip if host else None,
            "colo": host.colo if host else None,
            "ipmi": {"fqdn": self.ipmi} if self.ipmi else None,
            "pdu": {"fqdn": self.pdu.host, "port": self.pdu.outlet} if self.pdu else None,
            "enabled": self.enabled,
            "basedir": self.basedir,
            "notes": self.slavealloc.notes if self.slavealloc else None,
            "bug": self.bug.id if self.bug else None,
            "recent_jobs": self.recent_jobs,
            "buildbotslave": {"name": self.buildbot_host} if self.buildbot_host else None,
            "mozpool_server": self.mozpool_server,
            "master": (
                {"nickname": self.master.nickname, "fqdn": self.master.fqdn, "http_port": self.master.http_port}
                if self.master
                else None
            ),
        }
        if self.slavealloc:
            for key in ("purpose", "environment", "pool", "datacenter", "distro", "trustlevel"):
                data[key] = getattr(self.slavealloc, key)
        if self.errors:
            data["errors"] = dict(self.errors)
        return data


async def _guarded(slave: Slave, system: str, call: Callable[[], Awaitable[T]]) -> T | None:
    try:
        return await call()
    except CancelledError:
        raise
    except Exception as error:
        slave.errors[system] = str(error).splitlines()[0] if str(error) else type(error).__name__
        return None


def _both(*calls: Awaitable[Any]) -> Deferred[list[Any]]:
    return gatherResults([Deferred.fromCoroutine(call) for call in calls])  # type: ignore[arg-type]


async def find_slave(ctx: Context, name: str) -> Slave:
    """
    Look the machine up in DNS and slavealloc, and find where its buildbot runs.

    @raise SlaveNotFound: when neither knows it (and neither failed).
    """
    clients = ctx.clients
    slave = Slave(name=name.split(".")[0] if not _looks_like_ip(name) else name)
    host, record = await _both(
        _guarded(slave, "dns", lambda: clients.dns.lookup_host(name)),
        _guarded(slave, "slavealloc", lambda: clients.slavealloc.get_slave(slave.name)),
    )
    slave.host, slave.slavealloc = host, record
    if host is None and record is None and not slave.errors:
        raise SlaveNotFound(name)
    device = await _guarded(slave, "devices", lambda: clients.devices.get_device(slave.name))
    if device is not None and device.foopy:
        slave.buildbot_host = device.foopy
    else:
        slave.buildbot_host = slave.fqdn or slave.name
    return slave


async def load_master(ctx: Context, slave: Slave) -> None:
    """Fill in the master the machine's buildbot currently talks to."""
    record = slave.slavealloc
    if record is not None and record.current_masterid is not None:
        masterid = record.current_masterid
        slave.master = await _guarded(slave, "slavealloc", lambda: ctx.clients.slavealloc.get_master(masterid))


async def load_slave_info(ctx: Context, slave: Slave) -> None:
    """Add inventory, BMC, problem-tracking bug, master and recent jobs."""
    clients = ctx.clients
    fqdn = slave.fqdn or clients.dns.qualify(slave.name)

    async def inventory() -> None:
        system = await _guarded(slave, "inventory", lambda: clients.inventory.get_system(fqdn))
        if system is not None:
            slave.pdu = system.pdu
            slave.mozpool_server = system.imaging_server

    async def ipmi() -> None:
        slave.ipmi = await _guarded(slave, "dns", lambda: clients.dns.ipmi_name(slave.name))

    async def bug() -> None:
        slave.bug = await _guarded(slave, "bugzilla", lambda: clients.bugzilla.get_bug(slave.name))

    async def jobs() -> None:
        slave.recent_jobs = await _guarded(slave, "buildapi", lambda: clients.buildapi.recent_jobs(slave.name)) or []

    await _both(inventory(), ipmi(), bug(), jobs(), load_master(ctx, slave))


def _looks_like_ip(name: str) -> bool:
    return bool(re.match(r"^\d+\.\d+\.\d+\.\d+$", name))
