"""
What actions, machines and the web layer ask of each kind of client.

Each kind is declared once, as a C{typing.Protocol} (C{SSHClientSpec},
C{SlaveallocSpec}, ...): the type checker then checks structurally that the
concrete clients and the fakes of L{slaveapi.testing} fit where a
L{slaveapi.context.Clients} field expects them. The zope C{Interface} of the
kind (C{ISSHClient}, C{ISlavealloc}, ...) is derived from that Protocol, method
for method and signature for signature: concrete clients declare it with
C{@implementer}, and C{zope.interface.verify.verifyObject} checks any object
against it at run time. Declaring both by hand would be two lists of methods
to keep in step; type checkers do not understand zope interfaces without a
plugin.

A spec lists exactly the calls made through L{slaveapi.context.Context}; a
client may have more (construction, configuration, tools of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import FunctionType, MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from twisted.internet.defer import Deferred
from zope.interface import Attribute
from zope.interface.interface import InterfaceClass, fromMethod

if TYPE_CHECKING:
    from slaveapi.clients._boot import BootOverride
    from slaveapi.clients.aws import Instance, LaunchSpec, SubnetUsage
    from slaveapi.clients.bugzilla import Bug
    from slaveapi.clients.devices import Device
    from slaveapi.clients.dns import HostInfo
    from slaveapi.clients.inventory import DNSRecord, InventorySystem, PDUOutlet
    from slaveapi.clients.master import ShutdownRequested
    from slaveapi.clients.probe import RebootWait
    from slaveapi.clients.slavealloc import MasterRecord, SlaveRecord
    from slaveapi.clients.ssh import CommandResult

#: Special methods a spec may declare (any other underscored name is the Protocol's own machinery).
_DECLARED_SPECIAL = frozenset({"__aenter__", "__aexit__"})


def _interface_of(spec: type, name: str) -> InterfaceClass:
    """The zope interface declaring C{spec}'s methods and properties."""
    attributes: dict[str, Any] = {
        attribute: Attribute(f"{attribute}: {kind}")
        for attribute, kind in vars(spec).get("__annotations__", {}).items()
    }
    for attribute, value in vars(spec).items():
        if attribute.startswith("_") and attribute not in _DECLARED_SPECIAL:
            continue
        if isinstance(value, FunctionType):
            attributes[attribute] = fromMethod(value, name=attribute)
        elif isinstance(value, property):
            attributes[attribute] = Attribute(value.__doc__ or attribute)
    interface = InterfaceClass(name, attrs=attributes, __doc__=spec.__doc__, __module__=__name__)
    for method in attributes.values():
        method.interface = interface
    return interface


# --- SSH ------------------------------------------------------------------------


class SSHSessionSpec(Protocol):
    """One logged-in SSH connection for several commands; closes on leaving C{async with}."""

    @property
    def host(self) -> str:
        """The host as it was given when the session was opened."""

    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run a shell command line; C{exit_code} is C{None} when the connection dropped."""

    def close(self) -> Deferred[None]:
        """Close the connection; fires once closed. Safe to call more than once."""

    async def __aenter__(self) -> Self:
        """The session itself."""

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close the session."""


class SSHClientSpec(Protocol):
    """Logs in to hosts over SSH (errors: L{slaveapi.clients.ssh.SSHError} and its kinds)."""

    async def session(self, host: str, *, port: int | None = None, wait: bool = True) -> SSHSessionSpec:
        """
        Connect and log in (raises C{SSHBusy} when every place to the host is
        taken: after waiting for one, or at once when not C{wait}).
        """

    async def run(
        self, host: str, command: str, *, timeout: float | None = None, port: int | None = None
    ) -> CommandResult:
        """Connect, log in, run one command, disconnect."""

    def forget_host(self, host: str, port: int | None = None) -> bool:
        """Forget the host key recorded for C{host} (its machine is gone)."""


# --- HTTP APIs --------------------------------------------------------------------


class SlaveallocSpec(Protocol):
    """slavealloc: the machines, their masters, enabling and disabling."""

    async def get_slave(self, name: str) -> SlaveRecord | None:
        """The slave called C{name}, or C{None}."""

    async def list_slaves(self) -> list[SlaveRecord]:
        """Every slave slavealloc knows."""

    async def get_master(self, masterid: int) -> MasterRecord | None:
        """The master with this id, or C{None}."""

    async def set_enabled(self, slave: SlaveRecord, enabled: bool) -> SlaveRecord:
        """Enable or disable the slave; returns its record as changed."""


class InventorySpec(Protocol):
    """inventory: what powers a host and what images it, and DNS records for loaners."""

    async def get_system(self, fqdn: str) -> InventorySystem | None:
        """The host's record, or C{None}."""

    async def create_address_record(
        self, fqdn: str, ip: str, description: str, views: tuple[str, ...] = ("private",)
    ) -> DNSRecord:
        """Make an A record."""

    async def create_ptr_record(
        self, fqdn: str, ip: str, description: str, views: tuple[str, ...] = ("private",)
    ) -> DNSRecord:
        """Make a PTR record."""

    async def delete_dns_record(self, record: DNSRecord) -> None:
        """Delete a record made by the two above."""


class BugzillaSpec(Protocol):
    """Bugzilla's REST API."""

    async def get_bug(self, id_or_alias: str | int) -> Bug | None:
        """The bug with this id or alias, or C{None}."""

    async def search(self, **criteria: Any) -> list[Bug]:
        """Bugs matching Bugzilla's search parameters."""

    async def create_bug(self, **fields: Any) -> int:
        """File a bug; returns its id."""

    async def add_comment(self, bug_id: int, text: str) -> None:
        """Comment on a bug."""

    async def update_bug(self, bug_id: int, **fields: Any) -> None:
        """Change a bug's fields."""


class BuildapiSpec(Protocol):
    """buildapi: the jobs a machine ran."""

    async def recent_jobs(self, name: str, count: int = 10) -> list[dict[str, Any]]:
        """The machine's last C{count} jobs, newest first."""


class DevicesSpec(Protocol):
    """devices.json: devices and the foopies their buildbots run on."""

    async def get_device(self, name: str) -> Device | None:
        """The device called C{name}, or C{None} when it is not one."""


class MasterSpec(Protocol):
    """Buildbot masters' web interfaces."""

    async def shutdown_worker(self, master: MasterRecord, worker: str, reason: str) -> ShutdownRequested:
        """Ask the master for a graceful shutdown of C{worker}."""

    async def worker_connected(self, master: MasterRecord, worker: str) -> bool | None:
        """
        Whether C{worker} is connected to the master now; C{None} when the
        master cannot say (Buildbot 0.8). Raises C{MasterError}.
        """

    async def pause_worker(self, master: MasterRecord, worker: str, reason: str) -> None:
        """
        Pause C{worker} (it takes no new builds) through the data API's
        C{pause} control; raises C{MasterError} (a 0.8 master cannot).
        """

    async def unpause_worker(self, master: MasterRecord, worker: str) -> None:
        """Undo L{pause_worker}; raises C{MasterError} (a 0.8 master cannot)."""


# --- power --------------------------------------------------------------------------


class IPMISpec(Protocol):
    """Chassis power through BMCs."""

    async def available(self, host: str) -> bool:
        """Whether a BMC at C{host} answers (False rather than an error)."""

    async def power_state(self, host: str) -> bool:
        """Whether the machine behind the BMC has chassis power (raises C{IPMIError})."""

    async def set_power(self, host: str, state: str) -> None:
        """
        Ask the BMC for C{on}, C{off} (hard), C{soft} (ACPI shutdown),
        C{reset} or C{cycle}; returns once accepted (raises C{IPMIError}).
        """

    async def set_boot_device(self, host: str, device: str) -> None:
        """
        Boot from C{device} (C{pxe}, C{disk} or C{bios}) the next time only
        (raises C{IPMIError}).
        """

    async def boot_device(self, host: str) -> BootOverride | None:
        """
        The boot device the BMC forces (C{pxe}, C{disk}, C{bios}, ...) and
        whether at the next boot only, C{None} when no override is pending
        (raises C{IPMIError}).
        """

    async def powercycle(self, host: str, progress: Callable[[str], None] | None = None) -> None:
        """Power-cycle the machine behind the BMC (raises C{IPMIError}, C{IPMITimeout})."""

    async def close(self) -> None:
        """Release what the client holds."""


class RedfishSpec(Protocol):
    """Power and next boot through BMCs' Redfish services (errors: C{RedfishError} and its kinds)."""

    async def available(self, host: str) -> bool:
        """Whether the BMC's Redfish service root answers (False rather than an error)."""

    async def speaks_redfish(self, host: str) -> bool:
        """Whether the BMC speaks Redfish: C{available}, asked once per BMC and remembered."""

    def forget(self, host: str) -> None:
        """Discover the BMC again at its next C{speaks_redfish} (after a failure through it)."""

    async def reset_types(self, host: str) -> tuple[str, ...]:
        """The C{ResetType} values the BMC advertises."""

    async def power_state(self, host: str) -> str:
        """C{"on"} or C{"off"}."""

    async def health(self, host: str) -> str | None:
        """C{"OK"}, C{"Warning"}, C{"Critical"}, or C{None} when the BMC reports none."""

    async def reset(self, host: str, reset_type: str) -> None:
        """C{ComputerSystem.Reset} with a reset kind the BMC advertises."""

    async def powercycle(self, host: str, progress: Callable[[str], None] | None = None) -> None:
        """
        C{ForceOff}, power read off, C{On}, power read on (bounded); the
        part from C{ForceOff} on finishes even when the caller is cancelled.
        """

    async def set_boot_once(self, host: str, target: str) -> None:
        """Boot from C{Pxe}, C{Hdd} or C{BiosSetup} at the next boot only."""

    async def boot_override(self, host: str) -> BootOverride | None:
        """
        The boot target pending (C{Pxe}, C{Hdd}, C{BiosSetup}, ...) and
        whether for the next boot only (C{Once}) or every boot
        (C{Continuous}), C{None} when no override is pending.
        """

    async def close(self) -> None:
        """Release what the client holds."""


class PDUSpec(Protocol):
    """Outlets of SNMP-controlled PDUs."""

    async def outlet_state(self, outlet: PDUOutlet) -> bool:
        """Whether the outlet is on (raises C{PDUError})."""

    async def set_outlet(self, outlet: PDUOutlet, on: bool) -> None:
        """Switch the outlet and wait (bounded) until it reports that state (raises C{PDUError})."""

    async def powercycle(self, outlet: PDUOutlet, progress: Callable[[str], None] | None = None) -> None:
        """Switch the outlet off and on again (raises C{PDUError})."""

    async def close(self) -> None:
        """Release what the client holds."""


class MozpoolSpec(Protocol):
    """Mozpool imaging servers."""

    async def power_cycle(self, server: str, device: str) -> None:
        """Power-cycle C{device} through C{server} (raises C{MozpoolError})."""


# --- AWS, DNS, probes ------------------------------------------------------------------


class AWSSpec(Protocol):
    """EC2 instances."""

    #: Private addresses picked for instances being created right now (shared by the creations).
    claimed_ips: set[str]

    async def find_instances(self, name: str) -> list[Instance]:
        """The live instances named C{name}."""

    async def start(self, instance_id: str) -> str:
        """Start the instance; the state EC2 answered."""

    async def stop(self, instance_id: str) -> str:
        """Stop the instance; the state EC2 answered."""

    async def terminate(self, instance_id: str) -> str:
        """Terminate the instance; the state EC2 answered."""

    async def wait_for_state(
        self, instance_id: str, target: str, *, timeout: float | None = None, poll_interval: float | None = None
    ) -> Instance:
        """Poll until the instance is in C{target} (raises C{AWSTimeout}, C{AWSError})."""

    async def subnet_usage(self, subnet_id: str) -> SubnetUsage:
        """The addresses of the subnet and those in use."""

    async def run_instance(self, spec: LaunchSpec) -> Instance:
        """Launch an instance."""

    async def close(self) -> None:
        """Release what the client holds."""


class DNSSpec(Protocol):
    """Name lookups."""

    def qualify(self, name: str) -> str:
        """C{name} with the default domain when it has none."""

    async def lookup_host(self, name: str) -> HostInfo | None:
        """Canonical name and address of C{name}, or C{None} when it does not exist."""

    async def reverse(self, ip: str) -> str | None:
        """The name of an address, or C{None}."""

    async def ipmi_name(self, name: str) -> str | None:
        """C{<name>-mgmt} qualified, when it resolves."""


class ProberSpec(Protocol):
    """Liveness probes."""

    async def alive(self, host: str) -> bool:
        """Whether C{host} answers the probe now."""

    async def wait_for(self, host: str, up: bool, limit: float) -> bool:
        """Poll until C{host} is up (or down); False if C{limit} seconds pass first."""

    async def wait_for_reboot(self, host: str, progress: Callable[[str], None] | None = None) -> RebootWait:
        """Wait, bounded, for C{host} to go down and come back."""

    async def close(self) -> None:
        """Stop probing and release the probe socket."""


ISSHSession = _interface_of(SSHSessionSpec, "ISSHSession")
ISSHClient = _interface_of(SSHClientSpec, "ISSHClient")
ISlavealloc = _interface_of(SlaveallocSpec, "ISlavealloc")
IInventory = _interface_of(InventorySpec, "IInventory")
IBugzilla = _interface_of(BugzillaSpec, "IBugzilla")
IBuildapi = _interface_of(BuildapiSpec, "IBuildapi")
IDevices = _interface_of(DevicesSpec, "IDevices")
IMaster = _interface_of(MasterSpec, "IMaster")
IIPMI = _interface_of(IPMISpec, "IIPMI")
IRedfish = _interface_of(RedfishSpec, "IRedfish")
IPDU = _interface_of(PDUSpec, "IPDU")
IMozpool = _interface_of(MozpoolSpec, "IMozpool")
IAWS = _interface_of(AWSSpec, "IAWS")
IDNS = _interface_of(DNSSpec, "IDNS")
IProber = _interface_of(ProberSpec, "IProber")

#: Each spec and the interface derived from it.
SPECS: Mapping[type, InterfaceClass] = MappingProxyType({
    SSHSessionSpec: ISSHSession,
    SSHClientSpec: ISSHClient,
    SlaveallocSpec: ISlavealloc,
    InventorySpec: IInventory,
    BugzillaSpec: IBugzilla,
    BuildapiSpec: IBuildapi,
    DevicesSpec: IDevices,
    MasterSpec: IMaster,
    IPMISpec: IIPMI,
    RedfishSpec: IRedfish,
    PDUSpec: IPDU,
    MozpoolSpec: IMozpool,
    AWSSpec: IAWS,
    DNSSpec: IDNS,
    ProberSpec: IProber,
})
