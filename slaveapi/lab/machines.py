"""
The simulated machines' records: a machine, its jobs, its master, its host.

Plain state: the fake services (DNS, SSH, HTTP) read it;
L{slaveapi.lab.power} changes it over time (reboots), and the slavealloc
fake changes fields on request. L{slaveapi.lab.fleet} builds a fleet of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slaveapi.lab import logs

#: The only user the lab's SSH servers let in.
SSH_USER = "cltbld"

LINUX, MACOS, WINDOWS = "linux", "macos", "windows"

#: How a machine's SSH server treats logins.
SSH_OK = "ok"
SSH_REFUSE_LOGIN = "refuse_login"
#: The short name of the lab's APC rack PDU (the others are ServerTech Sentry).
APC_PDU_NAME = "pdu-apc1"

#: No SSH server at all (a Mozpool device: its buildbot runs on a foopy).
SSH_NONE = "none"

_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_TWISTD_START_DELAY = 30  # seconds from boot until buildbot starts


@dataclass
class LabJob:
    """One buildapi job (see docs/remote-apis.rst); C{endtime} is None while running."""

    buildername: str
    buildnumber: int
    starttime: int
    endtime: int | None
    result: int | None
    master: str
    slave: str
    reason: str = "scheduler"
    request_ids: list[int] = field(default_factory=list)


@dataclass
class LabMaster:
    """A Buildbot master as slavealloc describes it."""

    masterid: int
    nickname: str
    fqdn: str
    http_port: int
    pb_port: int
    dcname: str
    pool: str
    enabled: bool = True


@dataclass(frozen=True)
class LabHost:
    """A name the lab's DNS answers that is not a slave (PDU, imaging server, name server)."""

    fqdn: str
    ip: str


@dataclass
class LabMachine:
    """
    Everything the fakes know about one simulated machine.

    @ivar name: short name, as slavealloc knows it.
    @ivar ip: its own loopback address (127.0.X.Y); its SSH server listens there.
    @ivar os: L{LINUX}, L{MACOS} or L{WINDOWS}.
    @ivar basedir: as slavealloc has it (C{C:\\slave} on Windows).
    @ivar master: the nickname of its current master, or None.
    @ivar bug_alias: the alias of its problem-tracking bug, if it has one.
    @ivar tz_offset: the UTC offset its twistd.log is written in.
    @ivar booted_at: when it last booted (Unix seconds).
    @ivar ssh: L{SSH_OK}, L{SSH_REFUSE_LOGIN} or L{SSH_NONE}.
    @ivar powered: whether the chassis has power.
    @ivar up: whether the operating system is running (and its SSH server listening).
    @ivar comes_back: whether it boots when powered on or rebooted.
    @ivar bmc: whether it has a BMC, reachable as C{mgmt_ip} / C{<name>-mgmt}.
    @ivar redfish: its BMC speaks Redfish (L{slaveapi.lab.redfish}) instead of IPMI.
    @ivar pdu: C{<pdu fqdn>:<tower><infeed><outlet>}, or None.
    @ivar imaging_server: its Mozpool server (devices only).
    @ivar foopy: the short name of the foopy its buildbot runs on (devices only).
    @ivar devices: for a foopy, the devices whose buildbots it runs.
    @ivar log_style: L{logs.STYLE_4X} or L{logs.STYLE_08}.
    @ivar scenario: which case of the fleet mix it is (C{"idle"},
        C{"running_command"}, C{"stopped"}, C{"booting"}, C{"refuse_login"},
        C{"dead"}, C{"device"}, C{"hung"}, C{"foopy"}).
    @ivar users, load: what C{uptime} shows besides the uptime.
    @ivar master_address: C{host:port} its buildbot connects to (in boot lines).
    @ivar locked_masterid: slavealloc's field of that name.
    """

    name: str
    fqdn: str
    ip: str
    os: str
    purpose: str
    environment: str
    pool: str
    datacenter: str
    distro: str
    enabled: bool
    basedir: str
    slaveid: int
    master: str | None
    notes: str
    bug_alias: str | None
    tz_offset: str
    booted_at: float
    ssh: str = SSH_OK
    powered: bool = True
    up: bool = True
    comes_back: bool = True
    bmc: bool = False
    mgmt_ip: str | None = None
    redfish: bool = False
    pdu: str | None = None
    imaging_server: str | None = None
    foopy: str | None = None
    is_aws: bool = False
    log_style: str = logs.STYLE_4X
    scenario: str = "idle"
    bitlength: str = "64"
    trustlevel: str = "core"
    speed: str = "fast"
    asset_tag: str = ""
    users: int = 1
    load: tuple[float, float, float] = (0.0, 0.01, 0.05)
    twistd_log: list[str] = field(default_factory=list, repr=False)
    twistd_log_1: list[str] = field(default_factory=list, repr=False)
    recent_jobs: list[LabJob] = field(default_factory=list, repr=False)
    devices: list[LabMachine] = field(default_factory=list, repr=False)
    master_address: str = ""
    locked_masterid: int | None = None

    @property
    def mgmt_fqdn(self) -> str | None:
        """The BMC's name, C{<name>-mgmt.<domain>}, when there is a BMC."""
        if not self.bmc:
            return None
        return self.name + "-mgmt" + self.fqdn[len(self.name) :]

    @property
    def posix_basedir(self) -> str:
        """The basedir as a shell on the machine spells it (C{C:\\slave} is C{/c/slave})."""
        return posix_path(self.basedir)

    def uptime(self, now: float) -> int:
        """Whole seconds since the machine booted."""
        return max(0, int(now - self.booted_at))

    def files(self) -> dict[str, list[str]]:
        """The readable log files by path: its own twistd.log(s) and its devices'."""
        found = _own_logs(self) if self.ssh == SSH_OK else {}
        for device in self.devices:
            found.update(_own_logs(device))
        return found

    # Power: pure state changes. L{slaveapi.lab.power.PowerControl} decides
    # when they happen and opens or closes the machine's listeners.

    def power_off(self) -> None:
        """Cut the power: the OS stops at once, writing nothing."""
        self.powered = False
        self.up = False

    def power_on(self) -> bool:
        """Restore power; whether the machine will boot (C{comes_back})."""
        self.powered = True
        return self.comes_back

    def reboot(self, now: float, graceful: bool) -> bool:
        """
        Take the OS down for a reboot; whether the machine will boot again.

        @param graceful: the OS stopped its services (a reboot from the
            shell): the buildbot logs that it received SIGTERM.
        """
        if self.up and graceful and self.twistd_log and not _is_stopped(self.twistd_log):
            self.twistd_log.extend(logs.sigterm_lines(now, self.tz_offset))
        self.up = False
        self.powered = True
        return self.comes_back

    def boot(self, now: float) -> None:
        """The OS is up again: uptime restarts and the buildbot starts."""
        self.up = True
        self.powered = True
        self.booted_at = now
        if self.twistd_log:
            lines = logs.boot_lines(self.log_style, now, self.tz_offset, self.master_address)
            # Without a master the buildbot never gets past connecting.
            self.twistd_log.extend(lines if self.master else lines[:-2])


def _own_logs(machine: LabMachine) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if machine.twistd_log:
        found[f"{machine.posix_basedir}/twistd.log"] = machine.twistd_log
        if machine.twistd_log_1:
            found[f"{machine.posix_basedir}/twistd.log.1"] = machine.twistd_log_1
    return found


def _is_stopped(lines: list[str]) -> bool:
    return bool(lines) and lines[-1].endswith("Server Shut Down.")


def posix_path(path: str) -> str:
    """C{C:\\slave\\x} or C{C:/slave/x} as C{/c/slave/x}; POSIX paths unchanged."""
    path = path.replace("\\", "/")
    if len(path) >= 2 and path[1] == ":" and path[0].isalpha():
        return "/" + path[0].lower() + path[2:]
    return path
