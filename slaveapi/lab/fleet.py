"""
The simulated fleet: which machines exist and what state each one is in.

L{build_fleet} makes a deterministic fleet whose first nine machines cover
every case SlaveAPI must handle (healthy Linux, macOS and Windows machines,
a busy 0.8 slave, a stopped buildbot, a machine refusing SSH logins, one
that is off for good, an AWS loaner, a Mozpool device, a machine just
booted, a hung machine only its PDU can revive); further machines are
ordinary Linux build and test slaves.

The records of one machine are in L{slaveapi.lab.machines}; the jobs and
logs of its past are written by L{slaveapi.lab.history}.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from slaveapi.lab import logs
from slaveapi.lab.history import write_history
from slaveapi.lab.machines import (
    _DAY,
    _HOUR,
    _MINUTE,
    APC_PDU_NAME,
    LINUX,
    MACOS,
    SSH_OK,
    SSH_REFUSE_LOGIN,
    WINDOWS,
    LabHost,
    LabMachine,
    LabMaster,
)


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
    write_history(machine, role.scenario, now, masters, rng)
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

