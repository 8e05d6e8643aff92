"""
What is known of one machine ("slave"), gathered from the remote systems.

L{identify} decides whether a name is a machine SlaveAPI knows and gives its
canonical identity (L{KnownMachine}): the slavealloc name, lower-case, with
its FQDN made from configuration, never from the name asked for. Unknown
names go no further: nothing is contacted for them. L{find_slave} answers
the questions every action asks first (what is its address, where is its
buildbot); L{load_slave_info} adds the L{Lookup}s asked for (all of them for
C{GET /slaves/<slave>}, only what an action declares it needs for an
action). Past identification a remote system that fails does not hide what
the others said: its failure is recorded in C{errors}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Set
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, gatherResults

from slaveapi.clients.bugzilla import Bug
from slaveapi.clients.devices import Device
from slaveapi.clients.dns import HostInfo
from slaveapi.clients.http import RemoteError
from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.slavealloc import MasterRecord, SlaveRecord
from slaveapi.config import Config
from slaveapi.context import Context
from slaveapi.hostnames import is_valid_hostname

T = TypeVar("T")


class Lookup(StrEnum):
    """What L{load_slave_info} can add to a L{Slave}, one remote question each."""

    #: Inventory's record: the PDU outlet and the Mozpool imaging server.
    INVENTORY = "inventory"
    #: The C{-mgmt} name of the machine's BMC, from DNS.
    BMC = "bmc"
    #: The problem-tracking bug, from Bugzilla.
    BUG = "bug"
    #: The recent jobs, from buildapi.
    RECENT_JOBS = "recent_jobs"
    #: The master its buildbot talks to, from slavealloc.
    MASTER = "master"


#: Everything L{load_slave_info} can look up (what C{GET /slaves/<slave>} shows).
ALL_LOOKUPS: frozenset[Lookup] = frozenset(Lookup)

def is_valid_slave_name(name: str) -> bool:
    """Whether C{name} may name a machine (checked before any lookup): a hostname."""
    return is_valid_hostname(name)


class UnknownMachine(Exception):
    """No machine of that name is known to slavealloc, devices.json or the loaner patterns."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no machine named {name} is known to slavealloc, devices or the loaner patterns")
        self.name = name


#: The name actions and older callers know it by.
SlaveNotFound = UnknownMachine


class IdentificationFailed(Exception):
    """Whether the machine is known could not be found out: slavealloc or devices.json failed."""

    def __init__(self, name: str, error: RemoteError) -> None:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        super().__init__(f"could not check that {name} is a known machine: {reason}")
        self.name = name


@dataclass(frozen=True)
class KnownMachine:
    """
    A machine SlaveAPI knows, by its canonical identity.

    @ivar name: the slavealloc name in lower case (the loaner's or device's
        name when only the patterns or devices.json know it). Locks, single
        flight and results go by it.
    @ivar fqdn: C{name} under its configured domain: C{[slaves]
        default_domain}, or C{[aws] build_domain}/C{test_domain} for a
        loaner name; a name that has dots already is its own FQDN.
    @ivar known_by: C{"slavealloc"}, C{"devices"} or C{"loaner"}.
    @ivar loaner: C{"build"} or C{"test"} when the name matches the loaner
        patterns of that type, else C{None}.
    """

    name: str
    fqdn: str
    known_by: str
    loaner: str | None = None
    record: SlaveRecord | None = field(default=None, compare=False, repr=False)
    device: Device | None = field(default=None, compare=False, repr=False)

    @property
    def domain(self) -> str:
        return self.fqdn.partition(".")[2]


def loaner_type(config: Config, name: str) -> str | None:
    """C{"build"} or C{"test"} when the short C{name} matches that type's loaner patterns."""
    short = name.lower()
    if "." in short:
        return None
    for kind, patterns in (("build", config.aws.build_loaner_names), ("test", config.aws.test_loaner_names)):
        if any(fnmatchcase(short, pattern) for pattern in patterns):
            return kind
    return None


def loaner_domain(config: Config, kind: str) -> str:
    """The domain loaners of C{kind} (build, test) are named in."""
    domain = config.aws.build_domain if kind == "build" else config.aws.test_domain
    return (domain or config.slaves.default_domain).strip(".").lower()


def configured_domains(config: Config) -> set[str]:
    """Every domain a machine may be named in: the default one and the loaners'."""
    default = config.slaves.default_domain.strip(".").lower()
    return {default, loaner_domain(config, "build"), loaner_domain(config, "test")}


def _split_known_domain(config: Config, name: str) -> tuple[str, str]:
    """
    (name to look up, domain asked for): C{name} lower-cased, with a
    configured domain taken off; C{""} as the domain when none was given
    (or the dots are part of the name).
    """
    asked = name.lower()
    short, _, domain = asked.partition(".")
    if domain and domain in configured_domains(config):
        return short, domain
    return asked, ""


def canonical_name(config: Config, name: str) -> str:
    """
    The identity C{name} stands for without asking anyone: lower case, a
    configured domain taken off. For reading results, which need no lookup.
    """
    return _split_known_domain(config, name)[0]


def machine_fqdn(config: Config, name: str) -> str:
    """
    The FQDN SlaveAPI gives the machine called C{name} (its canonical,
    lower-case name): C{name} under its loaner domain when it matches the
    loaner patterns, else under C{[slaves] default_domain}; a name with dots
    is its own FQDN. The enrolment command resolves machines by it too.
    """
    if "." in name:
        return name
    kind = loaner_type(config, name)
    domain = loaner_domain(config, kind) if kind else config.slaves.default_domain.strip(".").lower()
    return f"{name}.{domain}"


def _known(config: Config, name: str, known_by: str, **found: Any) -> KnownMachine:
    kind = loaner_type(config, name)
    return KnownMachine(name=name, fqdn=machine_fqdn(config, name), known_by=known_by, loaner=kind, **found)


async def identify(ctx: Context, name: str) -> KnownMachine:
    """
    The machine C{name} stands for: slavealloc's, else a loaner name (by
    the configured patterns), else a device of devices.json. A name with a
    domain names the machine only when that is the machine's configured
    domain.

    Asks slavealloc once (and devices.json when slavealloc does not know the
    name and it is not a loaner's); nothing else is contacted.

    @raise UnknownMachine: nobody knows it, or it was asked for in another domain.
    @raise IdentificationFailed: slavealloc or devices.json could not be asked.
    """
    config = ctx.config
    candidate, domain = _split_known_domain(config, name)
    try:
        record = await ctx.clients.slavealloc.get_slave(candidate)
        if record is not None:
            machine = _known(config, record.name.lower(), "slavealloc", record=record)
        elif loaner_type(config, candidate):
            machine = _known(config, candidate, "loaner")
        else:
            device = await ctx.clients.devices.get_device(candidate)
            if device is None:
                raise UnknownMachine(name)
            machine = _known(config, candidate, "devices", device=device)
    except RemoteError as error:
        raise IdentificationFailed(name, error) from None
    if domain and domain != machine.domain:
        raise UnknownMachine(name)
    return machine


def identify_loaner(config: Config, name: str) -> KnownMachine:
    """
    The loaner C{name} stands for, by the configured patterns alone (for
    creating one: slavealloc need not know it yet).

    @raise UnknownMachine: the name is no loaner's, or not in its loaner domain.
    """
    candidate, domain = _split_known_domain(config, name)
    if not loaner_type(config, candidate):
        raise UnknownMachine(name)
    machine = _known(config, candidate, "loaner")
    if domain and domain != machine.domain:
        raise UnknownMachine(name)
    return machine


@dataclass
class Slave:
    """
    One machine as SlaveAPI sees it.

    @ivar name: the canonical identity (see L{KnownMachine}).
    @ivar known: how it was identified, and its configured FQDN.
    @ivar buildbot_host: where the machine's buildbot runs and its
        twistd.log lives: the machine itself, or the foopy that drives a device.
    """

    name: str
    known: KnownMachine | None = None
    host: HostInfo | None = None
    slavealloc: SlaveRecord | None = None
    master: MasterRecord | None = None
    ipmi: str | None = None
    pdu: PDUOutlet | None = None
    mozpool_server: str | None = None
    bug: Bug | None = None
    recent_jobs: list[dict[str, Any]] = field(default_factory=list)
    buildbot_host: str | None = None
    #: The power channels it has, in the order the power actions try them
    #: (C{redfish}, C{ipmi}, C{pdu}, C{mozpool}); C{None} until looked for.
    power_channels: list[str] | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def fqdn(self) -> str | None:
        """The canonical name DNS gave for the configured FQDN, else the configured FQDN."""
        if self.host:
            return self.host.fqdn
        return self.known.fqdn if self.known else None

    @property
    def address(self) -> str:
        """What to connect to: the IP if known, else the configured FQDN."""
        if self.host:
            return self.host.ip
        return self.fqdn or self.name

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
            "power_channels": self.power_channels,
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


def _concurrently(*calls: Coroutine[Any, Any, Any]) -> Deferred[list[Any]]:
    return gatherResults([Deferred.fromCoroutine(call) for call in calls])


async def find_slave(ctx: Context, name: str) -> Slave:
    """
    Identify the machine, look its configured FQDN up in DNS, and find where
    its buildbot runs.

    @raise UnknownMachine: it is not a machine SlaveAPI knows.
    @raise IdentificationFailed: slavealloc or devices.json could not be asked.
    """
    return await _addressed(ctx, await identify(ctx, name))


async def slave_from_record(ctx: Context, record: SlaveRecord) -> Slave:
    """
    The machine of a record slavealloc listed, as L{find_slave} gives it,
    without asking slavealloc again (the health sweep lists every machine
    once and checks each).
    """
    return await _addressed(ctx, _known(ctx.config, record.name.lower(), "slavealloc", record=record))


async def _addressed(ctx: Context, known: KnownMachine) -> Slave:
    """The machine C{known} stands for, with its address from DNS and where its buildbot runs."""
    clients = ctx.clients
    slave = Slave(name=known.name, known=known, slavealloc=known.record)
    fqdn = known.fqdn
    slave.host = await _guarded(slave, "dns", lambda: clients.dns.lookup_host(fqdn))
    device = known.device
    if device is None:
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


async def load_slave_info(ctx: Context, slave: Slave, lookups: Set[Lookup] = ALL_LOOKUPS) -> None:
    """
    Add what C{lookups} name, asking the systems concurrently: inventory,
    BMC, problem-tracking bug, recent jobs and master (by default all).
    """
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

    calls: dict[Lookup, Callable[[], Coroutine[Any, Any, None]]] = {
        Lookup.INVENTORY: inventory,
        Lookup.BMC: ipmi,
        Lookup.BUG: bug,
        Lookup.RECENT_JOBS: jobs,
        Lookup.MASTER: lambda: load_master(ctx, slave),
    }
    await _concurrently(*(call() for lookup, call in calls.items() if lookup in lookups))
