"""
The simulated fleet: which machines exist and what state each one is in.

L{build_fleet} makes a deterministic fleet whose first nine machines cover
every case SlaveAPI must handle (healthy Linux, macOS and Windows machines,
a busy 0.8 slave, a stopped buildbot, a machine refusing SSH logins, one
that is off for good, an AWS loaner, a Mozpool device, a machine just
booted, a hung machine only its PDU can revive); further machines are
ordinary Linux build and test slaves.

The records here are plain state. The fake services (DNS, SSH, HTTP) read
them; L{slaveapi.lab.power} changes them over time (reboots), and the
slavealloc fake changes fields on request.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
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


@dataclass
class Fleet:
    """
    The whole simulated fleet.

    @ivar machines: the slaves, in slavealloc order.
    @ivar foopies: hosts that run devices' buildbots (not slaves themselves).
    @ivar hosts: other names in DNS (PDUs, imaging servers, the name server).
    @ivar alias: a CNAME in DNS, (alias fqdn, target fqdn).
    """

    domain: str
    machines: list[LabMachine]
    masters: list[LabMaster]
    foopies: list[LabMachine] = field(default_factory=list)
    hosts: list[LabHost] = field(default_factory=list)
    alias: tuple[str, str] | None = None
    _index: dict[str, LabMachine] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for machine in self.machines + self.foopies:
            self._remember(machine)

    def _remember(self, machine: LabMachine) -> None:
        self._index[machine.name.lower()] = machine
        self._index[machine.fqdn.lower()] = machine

    def __iter__(self) -> Iterator[LabMachine]:
        return iter(self.machines)

    def __len__(self) -> int:
        return len(self.machines)

    def machine(self, name: str) -> LabMachine | None:
        """A slave or foopy by short name or fqdn (any case), or None."""
        return self._index.get(name.lower())

    def __getitem__(self, name: str) -> LabMachine:
        machine = self.machine(name)
        if machine is None:
            raise KeyError(name)
        return machine

    def all_hosts(self) -> list[LabMachine]:
        """Every machine with an operating system: slaves and foopies."""
        return self.machines + self.foopies

    def master_by_id(self, masterid: int) -> LabMaster | None:
        return next((m for m in self.masters if m.masterid == masterid), None)

    def master_by_nickname(self, nickname: str | None) -> LabMaster | None:
        return next((m for m in self.masters if m.nickname == nickname), None)


# --- building a fleet ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Role:
    """
    A template for one machine of the fleet.

    @ivar template: the name, formatted with C{n} (the 1-based position).
    @ivar uptime: seconds since it booted, at the fleet's C{now}.
    @ivar master: index into the masters, or None.
    @ivar apc: on the APC rack PDU rather than a Sentry (implies a PDU).
    """

    template: str
    uptime: int
    master: int | None
    os: str = LINUX
    purpose: str = "tests"
    environment: str = "prod"
    pool: str = "tests-scl3"
    distro: str = "ubuntu64"
    scenario: str = "idle"
    style: str = logs.STYLE_4X
    tz_offset: str = "+0000"
    bmc: bool = False
    pdu: bool = False
    ssh: str = SSH_OK
    enabled: bool = True
    notes: str = ""
    bug: bool = False
    is_aws: bool = False
    device: bool = False
    apc: bool = False


_MASTERS = (
    ("bm01-build1", "build-scl3", "scl3"),
    ("bm02-tests1", "tests-scl3", "scl3"),
    ("bm03-tests2", "panda-scl3", "scl3"),
    ("bm04-build-aws", "build-aws-use1", "use1"),
)

_MIX = (
    _Role(template="bld-linux64-lab-{n:03d}", purpose="build", pool="build-scl3", distro="centos6-mock",
          uptime=78 * _DAY + 21 * _HOUR + 57 * _MINUTE + 12, master=0, bmc=True),
    _Role(template="tst-linux64-lab-{n:03d}", scenario="running_command", style=logs.STYLE_08, tz_offset="-0800",
          uptime=2 * _DAY + 10 * _MINUTE + 5, master=1, pdu=True),
    _Role(template="t-yosemite-r7-lab-{n:03d}", os=MACOS, distro="yosemite", scenario="booting", tz_offset="-0700",
          uptime=100, master=1, pdu=True),
    _Role(template="t-w864-lab-{n:03d}", os=WINDOWS, distro="win864", style=logs.STYLE_08,
          uptime=5 * _DAY + 3 * _HOUR + 25 * _MINUTE + 9, master=1, bmc=True),
    _Role(template="dev-linux64-ec2-lab{n}", purpose="build", environment="dev", pool="build-aws-use1",
          distro="centos6-mock", scenario="stopped", uptime=2 * _HOUR + 40, master=None, enabled=False,
          notes="loaned to dev@example.test for bug 1100001", is_aws=True),
    _Role(template="bld-linux64-lab-{n:03d}", purpose="build", pool="build-scl3", distro="centos6-mock",
          scenario="refuse_login", uptime=12 * _DAY + 4 * _HOUR + 2 * _MINUTE, master=0, bmc=True,
          ssh=SSH_REFUSE_LOGIN, bug=True),
    _Role(template="t-linux64-lab-{n:03d}", scenario="dead", style=logs.STYLE_08, tz_offset="-0800",
          uptime=45 * _DAY, master=1, pdu=True, bug=True),
    _Role(template="panda-{n:04d}", pool="panda-scl3", distro="android", scenario="device", style=logs.STYLE_08,
          tz_offset="-0700", uptime=20 * _MINUTE + 15, master=2, pdu=True, ssh=SSH_REFUSE_LOGIN, device=True),
    # Hung: off the network until its power is cycled, then it boots (the PDU path).
    _Role(template="t-linux64-lab-{n:03d}", scenario="hung", style=logs.STYLE_08, tz_offset="-0800",
          uptime=6 * _DAY, master=1, pdu=True, apc=True),
)

# The foopy that runs the devices' buildbots.
_FOOPY_UPTIME = 33 * _MINUTE + 20

_BUILDERS = {
    "build": ("Linux x86-64 mozilla-central build", "Linux x86-64 mozilla-inbound build", "Linux x86-64 try build"),
    "tests-linux": (
        "Ubuntu VM 12.04 x64 mozilla-central opt test mochitest-1",
        "Ubuntu VM 12.04 x64 mozilla-inbound opt test xpcshell",
    ),
    "tests-macos": (
        "Rev7 MacOSX Yosemite 10.10.5 mozilla-central opt test mochitest-1",
        "Rev7 MacOSX Yosemite 10.10.5 try opt test reftest",
    ),
    "tests-windows": (
        "Windows 8 64-bit mozilla-central opt test reftest",
        "Windows 8 64-bit mozilla-inbound opt test mochitest-2",
    ),
    "tests-device": ("Android 4.0 armv7 API 15+ mozilla-central opt test robocop-1",),
}

_ARGV = {
    "build": ("/bin/bash", "-c", "python2.7 scripts/scripts/fx_desktop_build.py --config releng_linux_64.py"),
    "tests-linux": ("/tools/buildbot/bin/python", "scripts/scripts/desktop_unittest.py", "--mochitest-suite", "plain1"),
    "tests-macos": ("/tools/buildbot/bin/python", "scripts/scripts/desktop_unittest.py", "--reftest-suite", "reftest"),
    "tests-windows": ("c:/mozilla-build/python27/python", "-u", "scripts/scripts/desktop_unittest.py"),
    "tests-device": ("/tools/buildbot/bin/python", "scripts/scripts/android_panda.py", "--robocop-suite", "1"),
}

_HOMES = {LINUX: "/home/cltbld", MACOS: "/Users/cltbld", WINDOWS: "C:\\Users\\cltbld"}


def build_fleet(count: int, domain: str, now: float, seed: int = 0) -> Fleet:
    """
    Make a fleet of C{count} slaves in C{domain}, as it would be at C{now}.

    The same arguments always give the same fleet, and a bigger fleet
    begins with the machines of a smaller one. With C{count >= 8} the
    first eight slaves are the whole mix (see the module docstring); with
    fewer, the first C{count} of it.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    labels = domain.split(".")
    colo = labels[1] if len(labels) > 2 else "lab"
    masters = [
        LabMaster(
            masterid=i + 1,
            nickname=nickname,
            fqdn=f"bm{i + 1:02d}.{domain}",
            http_port=0,
            pb_port=9001 + i,
            dcname=dcname if dcname != "scl3" else colo,
            pool=pool,
        )
        for i, (nickname, pool, dcname) in enumerate(_MASTERS)
    ]
    machines: list[LabMachine] = []
    pdu_outlets = apc_outlets = 0
    for index in range(count):
        # One generator per machine: a bigger fleet starts with the same machines.
        rng = random.Random(f"{seed}:{index}")  # noqa: S311  # reproducible fleet, not cryptography
        role = _MIX[index] if index < len(_MIX) else _extra_role(rng)
        pdu = None
        if role.apc:
            apc_outlets += 1
            pdu = f"{APC_PDU_NAME}.{domain}:AA{apc_outlets}"
        elif role.pdu:
            pdu = _pdu_outlet(pdu_outlets, domain)
            pdu_outlets += 1
        machines.append(_make_machine(index, role, domain, colo, now, masters, pdu, rng))

    foopies: list[LabMachine] = []
    devices = [m for m in machines if m.imaging_server is not None]
    if devices:
        foopy = _make_foopy(1, domain, colo, now)
        for device in devices:
            device.foopy = foopy.name
            foopy.devices.append(device)
        foopies.append(foopy)

    hosts = [LabHost(f"ns1.{domain}", "127.0.0.1")]
    hosts += [LabHost(f"pdu{i + 1}.{domain}", f"127.2.0.{i + 1}") for i in range((pdu_outlets + 31) // 32)]
    if apc_outlets:
        hosts.append(LabHost(f"{APC_PDU_NAME}.{domain}", "127.2.1.1"))
    if devices:
        hosts.append(LabHost(f"mobile-imaging-001.{domain}", "127.0.0.1"))
    alias = (f"buildbot-canary.{domain}", machines[0].fqdn) if machines else None
    return Fleet(domain=domain, machines=machines, masters=masters, foopies=foopies, hosts=hosts, alias=alias)


def _extra_role(rng: random.Random) -> _Role:
    """An ordinary machine beyond the mix: Linux build or test, mostly with a master."""
    kind = rng.random()
    uptime = rng.randint(_HOUR, 90 * _DAY)
    scenario = "running_command" if rng.random() < 0.3 else "idle"
    style = logs.STYLE_4X if rng.random() < 0.7 else logs.STYLE_08
    tz = rng.choice(("+0000", "+0000", "-0800", "-0700"))
    has_master = rng.random() < 0.8
    if kind < 0.4:
        return _Role(template="bld-linux64-lab-{n:03d}", purpose="build", pool="build-scl3",
                     distro="centos6-mock", scenario=scenario, style=style, tz_offset=tz, uptime=uptime,
                     master=0 if has_master else None, bmc=True)
    if kind < 0.75:
        return _Role(template="t-linux64-lab-{n:03d}", scenario=scenario, style=style, tz_offset=tz,
                     uptime=uptime, master=1 if has_master else None, pdu=True)
    return _Role(template="tst-linux64-ec2-{n:03d}", pool="tests-aws-use1", scenario=scenario, uptime=uptime,
                 master=3 if has_master else None, is_aws=True)


def _pdu_outlet(k: int, domain: str) -> str:
    """The k-th PDU outlet: 32 outlets a PDU, towers A and B, infeed A, outlets 1-16."""
    tower = "A" if k % 32 < 16 else "B"
    return f"pdu{k // 32 + 1}.{domain}:{tower}A{k % 16 + 1}"


def _address(network: int, index: int) -> str:
    """127.<network>.X.Y for the index-th machine, X >= 1."""
    return f"127.{network}.{1 + index // 250}.{1 + index % 250}"


def _make_machine(
    index: int,
    role: _Role,
    domain: str,
    colo: str,
    now: float,
    masters: list[LabMaster],
    pdu: str | None,
    rng: random.Random,
) -> LabMachine:
    name = role.template.format(n=index + 1)
    master = masters[role.master] if role.master is not None else None
    if role.os == WINDOWS:
        basedir = "C:\\slave"
    elif role.device:
        basedir = f"/builds/{name}"
    else:
        basedir = "/builds/slave"
    booted_at = float(int(now) - role.uptime)
    machine = LabMachine(
        name=name,
        fqdn=f"{name}.{domain}",
        ip=_address(0, index),
        os=role.os,
        purpose=role.purpose,
        environment=role.environment,
        pool=role.pool,
        datacenter="us-east-1" if role.is_aws else colo,
        distro=role.distro,
        enabled=role.enabled,
        basedir=basedir,
        slaveid=101 + index,
        master=master.nickname if master else None,
        notes=role.notes,
        bug_alias=name if role.bug else None,
        tz_offset=role.tz_offset,
        booted_at=booted_at,
        ssh=role.ssh,
        bmc=role.bmc,
        mgmt_ip=_address(1, index) if role.bmc else None,
        pdu=pdu,
        imaging_server=f"mobile-imaging-001.{domain}" if role.device else None,
        is_aws=role.is_aws,
        log_style=role.style,
        scenario=role.scenario,
        asset_tag=f"LAB{10000 + index}",
        users=1 + index % 3,
        load=(round(rng.uniform(0, 2), 2), round(rng.uniform(0, 2), 2), round(rng.uniform(0, 2), 2)),
        master_address=f"{(master or masters[0]).fqdn}:{(master or masters[0]).pb_port}",
    )
    if role.scenario == "dead":
        machine.powered = machine.up = machine.comes_back = False
    elif role.scenario == "hung":
        machine.up = False
    _write_history(machine, role, now, masters, rng)
    return machine


def _make_foopy(number: int, domain: str, colo: str, now: float) -> LabMachine:
    name = f"foopy{number:02d}"
    return LabMachine(
        name=name,
        fqdn=f"{name}.{domain}",
        ip=f"127.3.0.{number}",
        os=LINUX,
        purpose="foopy",
        environment="prod",
        pool="foopies",
        datacenter=colo,
        distro="centos6",
        enabled=True,
        basedir="/builds",
        slaveid=0,
        master=None,
        notes="",
        bug_alias=None,
        tz_offset="-0700",
        booted_at=float(int(now) - _FOOPY_UPTIME),
        scenario="foopy",
        users=1,
        load=(0.35, 0.4, 0.42),
    )


def _job_kind(machine: LabMachine) -> str:
    if machine.purpose == "build":
        return "build"
    if machine.imaging_server:
        return "tests-device"
    return {LINUX: "tests-linux", MACOS: "tests-macos", WINDOWS: "tests-windows"}[machine.os]


def _write_history(
    machine: LabMachine, role: _Role, now: float, masters: list[LabMaster], rng: random.Random
) -> None:
    """
    Give the machine recent jobs and a twistd.log telling the same story.

    Jobs run while the machine is up, or before its last boot when it came
    up recently (that boot then follows a SIGTERM in the log). Events go
    oldest first; the older half lands in twistd.log.1 (absent when there is
    only one event).
    """
    now = float(int(now))
    scenario = role.scenario
    recently_booted = scenario in ("booting", "device") or (scenario == "idle" and machine.uptime(now) < 6 * _HOUR)
    jobs = _plan_jobs(machine, scenario, now, recently_booted, rng)
    events = _job_events(machine, jobs, masters, rng)
    events += _boot_events(machine, scenario, jobs, now, recently_booted)
    events.sort(key=lambda event: event[0])
    half = len(events) // 2
    for _, lines in events[:half]:
        machine.twistd_log_1.extend(lines)
    for _, lines in events[half:]:
        machine.twistd_log.extend(lines)


def _plan_jobs(
    machine: LabMachine, scenario: str, now: float, recently_booted: bool, rng: random.Random
) -> list[tuple[float, float | None]]:
    """The machine's recent jobs, oldest first: (start, end or None while running)."""
    booted = machine.booted_at
    # Planned backwards from the newest.
    jobs: list[tuple[float, float | None]] = []
    if scenario == "running_command":
        start = now - rng.randint(2 * _MINUTE, 20 * _MINUTE)
        jobs.append((start, None))
        cursor = start - rng.randint(_MINUTE, 10 * _MINUTE)
    elif scenario in ("dead", "hung"):
        cursor = now - 3 * _DAY
    elif recently_booted:
        cursor = booted - 5 * _MINUTE
    else:
        cursor = now - rng.randint(5 * _MINUTE, 40 * _MINUTE)
    earliest = booted - 7 * _DAY if recently_booted else booted + _TWISTD_START_DELAY + _MINUTE
    while scenario != "stopped" and len(jobs) < 6:  # a stopped loaner runs no jobs
        end = cursor
        start = end - rng.randint(10 * _MINUTE, 60 * _MINUTE)
        if start < earliest:
            break
        jobs.append((start, end))
        cursor = start - rng.randint(_MINUTE, 10 * _MINUTE)
    jobs.reverse()
    return jobs


def _job_events(
    machine: LabMachine, jobs: list[tuple[float, float | None]], masters: list[LabMaster], rng: random.Random
) -> list[tuple[float, list[str]]]:
    """Record C{jobs} in buildapi's list (newest first) and return their twistd.log lines."""
    kind = _job_kind(machine)
    argv = list(_ARGV[kind])
    home = _HOMES[machine.os]
    workdir = machine.basedir + ("\\test" if machine.os == WINDOWS else "/test")
    tz, style = machine.tz_offset, machine.log_style
    master = machine.master or masters[0].nickname
    builders = _BUILDERS[kind]
    number = rng.randint(1000, 9000)
    events: list[tuple[float, list[str]]] = []
    for position, (began, ended) in enumerate(jobs):
        machine.recent_jobs.insert(
            0,
            LabJob(
                buildername=builders[position % len(builders)],
                buildnumber=number + position,
                starttime=int(began),
                endtime=int(ended) if ended is not None else None,
                result=(0 if rng.random() < 0.8 else rng.choice((1, 2, 5))) if ended is not None else None,
                master=master,
                slave=machine.name,
                request_ids=[rng.randint(100000, 999999)],
            ),
        )
        events.append((began, logs.command_start_lines(style, began, tz, workdir, argv, home)))
        if ended is not None:
            events.append((ended, logs.command_end_lines(style, ended, tz, ended - began, argv)))
    return events


def _boot_events(
    machine: LabMachine, scenario: str, jobs: list[tuple[float, float | None]], now: float, recently_booted: bool
) -> list[tuple[float, list[str]]]:
    """The twistd.log lines of the buildbot's starts and stops around the last boot."""
    tz, style = machine.tz_offset, machine.log_style
    booted = machine.booted_at
    boot_at = booted + _TWISTD_START_DELAY
    events: list[tuple[float, list[str]]] = []
    if scenario == "booting":
        previous_boot = jobs[0][0] - _HOUR if jobs else booted - _DAY
        events.append((previous_boot, logs.boot_lines(style, previous_boot, tz, machine.master_address)))
    if recently_booted:
        events.append((booted - _MINUTE, logs.sigterm_lines(booted - _MINUTE, tz)))
    if boot_at < now and (machine.uptime(now) < 2 * _DAY or scenario == "stopped" or not (jobs or events)):
        boot = logs.boot_lines(style, boot_at, tz, machine.master_address)
        # Without a master the buildbot never gets past connecting.
        events.append((boot_at, boot if machine.master else boot[:-2]))
    if scenario == "stopped":
        stop_at = boot_at + 5 * _MINUTE
        if machine.master:
            events.append((stop_at, logs.graceful_shutdown_lines(style, stop_at, tz)))
        else:
            events.append((stop_at, logs.sigterm_lines(stop_at, tz)))
    return events
