"""
The lab as one object: the fleet and every fake service, started together.

L{Lab.start} builds the fleet and starts the DNS, SSH and HTTP servers at
once (listening is synchronous, so it works before the reactor runs, from a
twistd plugin's C{makeService}); L{Lab.write_config} writes the ini and
credentials that point SlaveAPI at it; L{Lab.stop} closes everything.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi.clients.ssh import replace_file
from slaveapi.fdlimit import raise_open_files_limit
from slaveapi.lab._ca import LabCA
from slaveapi.lab.bmc import LabBMCs
from slaveapi.lab.bugzilla import BugzillaFake
from slaveapi.lab.buildbot import LabBuildbots
from slaveapi.lab.dns import LabDNS
from slaveapi.lab.ec2 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, LabEC2
from slaveapi.lab.fleet import Fleet, build_fleet
from slaveapi.lab.http import LabHTTP
from slaveapi.lab.inventory_dns import InventoryDNSFake
from slaveapi.lab.machines import APC_PDU_NAME, SSH_OK, SSH_REFUSE_LOGIN, SSH_USER, LabMachine
from slaveapi.lab.pdu import LabPDUs
from slaveapi.lab.power import PowerControl
from slaveapi.lab.redfish import LabRedfish
from slaveapi.lab.ssh import LabSSHServer, generate_host_key

DEFAULT_DOMAIN = "build.scl3.slaveapi.test"
#: By default a quarter of the machines with a BMC have a Redfish BMC: in the
#: 12-machine lab, bld-linux64-lab-010 (see L{_redfish_bmcs}).
DEFAULT_REDFISH_SHARE = 0.25
#: Seconds between SlaveAPI's health sweeps of the lab: verdicts within a minute of start-up.
DEFAULT_HEALTH_INTERVAL = 20.0
_MIN_TOKEN_LENGTH = 16
#: The lab CA's certificate, written beside the ini (C{[redfish] ca_bundle}).
CA_FILE = "lab-ca.pem"


class Lab:
    """
    A running simulated fleet.

    @ivar fleet: the machines and masters.
    @ivar power: reboots and power changes over time.
    @ivar dns: the DNS server (C{add_address} / C{remove_address}).
    @ivar ssh: the SSH servers.
    @ivar http: the HTTP fakes; C{bugzilla} is its Bugzilla.
    @ivar inventory_dns: inventory's DNS records API; its records feed C{dns}.
    @ivar ec2: the EC2 endpoint (moto, in a process of its own), once started.
    @ivar buildbots: the masters' shutdown endpoint and the buildbots' shutdowns.
    @ivar ssh_password: the password of C{cltbld} everywhere.
    @ivar inventory_user: the inventory's basic-auth user; C{inventory_password} its password.
    @ivar bugzilla_api_key: the only API key Bugzilla accepts.
    @ivar ipmi_username: the BMC user; C{ipmi_password} its password.
    @ivar snmp_community: the PDUs' write community.
    @ivar ca: the lab's certificate authority (its key never leaves this process).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        fleet: Fleet,
        workdir: str,
        boot_time: float,
        clock: Callable[[], float],
        shutdown_delay: float = 0.1,
        command_delay: float = 1.0,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
    ) -> None:
        """Set the lab up without listening yet; L{start} is the usual way in."""
        self.reactor = reactor
        self.fleet = fleet
        self.domain = fleet.domain
        self.workdir = workdir
        self.boot_time = boot_time
        self.health_interval = health_interval
        self.clock = clock
        self.ssh_password = "lab-" + secrets.token_urlsafe(12)
        self.inventory_user = "lab-inventory"
        self.inventory_password = "lab-" + secrets.token_urlsafe(12)
        self.bugzilla_user = "slaveapi@example.test"
        self.bugzilla_api_key = "lab" + secrets.token_hex(18)
        self.ipmi_username = "ADMIN"
        self.ipmi_password = "lab-" + secrets.token_urlsafe(9)
        self.snmp_community = "lab-" + secrets.token_hex(6)
        self.host_key = generate_host_key()
        self.ca = LabCA()
        self.power = PowerControl(reactor, clock, boot_time)
        self.bugzilla = BugzillaFake(fleet, self.bugzilla_api_key, self.bugzilla_user, clock)
        self.buildbots = LabBuildbots(reactor, fleet, clock, command_delay=command_delay)
        self.http = LabHTTP(
            reactor, fleet, self.bugzilla, self.inventory_user, self.inventory_password, power=self.power,
            buildbots=self.buildbots,
        )
        self.dns = LabDNS(reactor, fleet)
        self.inventory_dns = InventoryDNSFake(self.dns, self.inventory_user, self.inventory_password)
        self.http.inventory_dns = self.inventory_dns
        self.ssh = LabSSHServer(
            reactor, fleet.all_hosts(), self.power, self.ssh_password, self.host_key, clock, shutdown_delay
        )
        self.power.add_observer(self.ssh)
        self.http_port = self.dns_port = self.ssh_port = 0
        self.pdus: LabPDUs | None = None
        self.bmcs: LabBMCs | None = None
        self.redfish: LabRedfish | None = None
        self.ec2: LabEC2 | None = None
        self._stopping: defer.Deferred[None] | None = None

    @classmethod
    def start(
        cls,
        reactor: Any,
        slaves: int = 12,
        workdir: str | None = None,
        boot_time: float = 3.0,
        domain: str = DEFAULT_DOMAIN,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        shutdown_delay: float = 0.1,
        refuse_ssh_share: float = 0.0,
        command_delay: float = 1.0,
        redfish_share: float = DEFAULT_REDFISH_SHARE,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
    ) -> Lab:
        """
        Build a fleet of C{slaves} machines and start every fake service.

        @param workdir: where the lab keeps its files (the SSH host key and a
            known_hosts file); a new temporary directory when None.
        @param boot_time: seconds a rebooted machine stays down.
        @param clock: the wall clock uptimes and log times follow.
        @param shutdown_delay: seconds from answering a reboot command to
            the machine going down.
        @param refuse_ssh_share: the share of ordinary machines with a BMC
            whose SSH refuses logins, so that their reboots go to IPMI (the
            reboot-wave benchmark uses it).
        @param command_delay: seconds a machine running a command takes to
            finish it once its master asked its buildbot to shut down.
        @param redfish_share: the share of machines with a BMC whose BMC
            speaks Redfish instead of IPMI (see L{_redfish_bmcs}).
        @param health_interval: the C{[health] interval} the ini asks of
            SlaveAPI; 0 turns the health loop off (tests and benchmarks
            that study something else, so that sweeps do not log in to
            their machines meanwhile).
        """
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="slaveapi-lab-")
        os.makedirs(workdir, exist_ok=True)
        # One SSH listener per machine: 2,000 machines pass the usual soft limit of 1,024.
        raise_open_files_limit()
        fleet = build_fleet(slaves, domain, clock(), seed)
        _redfish_bmcs(fleet, redfish_share)
        _refuse_ssh(fleet, refuse_ssh_share)
        lab = cls(reactor, fleet, workdir, boot_time, clock, shutdown_delay, command_delay, health_interval)
        try:
            lab.http_port = lab.http.start()
            for master in lab.fleet.masters:
                master.http_port = lab.http_port
            lab.dns_port = lab.dns.start()
            lab.ssh_port = lab.ssh.start()
            ipmi_machines = [m for m in lab.fleet.machines if not m.redfish]
            lab.bmcs = LabBMCs.start(
                reactor, ipmi_machines, lab.power, 0, lab.ipmi_username, lab.ipmi_password, clock=clock
            )
            lab.redfish = LabRedfish.start(
                reactor, [m for m in lab.fleet.machines if m.redfish], lab.power, lab.ipmi_username,
                lab.ipmi_password, ca=lab.ca,
            )
            lab.pdus = LabPDUs.start(
                reactor, lab.fleet, lab.power, 0, lab.snmp_community, apc_hosts={f"{APC_PDU_NAME}.{domain}"}
            )
            lab.ec2 = LabEC2.start(reactor, lab.fleet, workdir)
        except BaseException:
            lab.stop()
            raise
        lab._write_host_files()
        lab._log.info(
            "lab: {count} machines in {domain}; http {http}, dns {dns}, ssh {ssh}",
            count=len(lab.fleet), domain=domain, http=lab.http_port, dns=lab.dns_port, ssh=lab.ssh_port,
        )
        return lab

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP fakes (C{http://127.0.0.1:<port>})."""
        return f"http://127.0.0.1:{self.http_port}"

    def machine(self, name: str) -> LabMachine:
        """A slave or foopy by short name or fqdn; KeyError if there is none."""
        return self.fleet[name]

    def power_off(self, name: str) -> None:
        """Cut a machine's power (it goes down at once and stays down)."""
        self.power.power_off(self.machine(name))

    def power_on(self, name: str) -> None:
        """Power a machine on; it is up after C{boot_time} (unless it never comes back)."""
        self.power.power_on(self.machine(name))

    def hang(self, name: str) -> None:
        """Make a machine stop answering with its power on, until it is rebooted or power-cycled."""
        self.power.hang(self.machine(name))

    def reboot(self, name: str, graceful: bool = False) -> None:
        """Reboot a machine now (a reset, or from the OS when C{graceful})."""
        self.power.reboot(self.machine(name), graceful)

    def write_config(
        self,
        directory: str,
        *,
        listen: str = "tcp:9999:interface=127.0.0.1",
        api_tokens: dict[str, str] | None = None,
    ) -> str:
        """
        Write C{slaveapi.ini}, C{credentials.json} and the lab CA's
        certificate (L{CA_FILE}) pointing at this lab.

        @param listen: the endpoint SlaveAPI itself listens on.
        @param api_tokens: client name to bearer token (16 characters at
            least); none turns SlaveAPI's authentication off.
        @return: the path of the ini.
        """
        tokens = dict(api_tokens or {})
        for client, token in tokens.items():
            if len(token) < _MIN_TOKEN_LENGTH:
                raise ValueError(f"api token for {client!r} is shorter than {_MIN_TOKEN_LENGTH} characters")
        os.makedirs(directory, exist_ok=True)
        credentials = {
            "ssh": {SSH_USER: ["wrong-first", self.ssh_password]},
            "inventory": self.inventory_password,
            "bugzilla": self.bugzilla_api_key,
            "ipmi": self.ipmi_password,
            "snmp_community": self.snmp_community,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "api_tokens": tokens,
        }
        credentials_path = os.path.join(directory, "credentials.json")
        descriptor = os.open(credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(credentials, handle, indent=2)
            handle.write("\n")
        self.ca.write_certificate(os.path.join(directory, CA_FILE))
        ini_path = os.path.join(directory, "slaveapi.ini")
        with open(ini_path, "w", encoding="utf-8") as handle:
            handle.write(self.config_text(listen))
        return ini_path

    def config_text(self, listen: str = "tcp:9999:interface=127.0.0.1") -> str:
        """The ini L{write_config} writes (it names C{credentials.json} and L{CA_FILE} beside it)."""
        url = self.http_url
        return (
            "# SlaveAPI against the simulated fleet; written by slaveapi.lab.\n"
            f"[server]\nendpoint = {listen}\n\n"
            "[secrets]\ncredentials_file = credentials.json\n\n"
            f"[slavealloc]\napi_url = {url}/slavealloc/api\n\n"
            # The lab serves plain http on loopback; credentials go there knowingly.
            f"[inventory]\napi_url = {url}/inventory/api\nusername = {self.inventory_user}\n"
            "allow_plain_http = true\n\n"
            f"[bugzilla]\napi_url = {url}/bugzilla/rest\nusername = {self.bugzilla_user}\n"
            "allow_plain_http = true\n\n"
            f"[buildapi]\napi_url = {url}/buildapi\n\n"
            f"[slaves]\ndefault_domain = {self.domain}\nipmi_username = {self.ipmi_username}\n\n"
            f"[dns]\nservers = 127.0.0.1:{self.dns_port}\n\n"
            f"[ssh]\nport = {self.ssh_port or 22}\nhost_keys = strict\n"
            f"known_hosts = {os.path.join(os.path.abspath(self.workdir), 'known_hosts')}\n\n"
            f"[devices]\nurl = {url}/devices.json\n\n"
            + self._health_config_text()
            + self._power_config_text()
            + self._aws_config_text()
        )

    def reboot_paths(self) -> dict[str, str]:
        """
        For each slave, the reboot method expected to bring it back: C{ssh},
        C{mozpool}, C{redfish}, C{ipmi} or C{pdu}; C{bug} for one that never comes back.
        """
        paths = {}
        for machine in self.fleet.machines:
            if not machine.comes_back:
                paths[machine.name] = "bug"
            elif machine.imaging_server:
                paths[machine.name] = "mozpool"
            elif machine.up and machine.ssh == SSH_OK:
                paths[machine.name] = "ssh"
            elif machine.bmc and machine.redfish:
                paths[machine.name] = "redfish"
            elif machine.bmc:
                paths[machine.name] = "ipmi"
            else:
                paths[machine.name] = "pdu" if machine.pdu else "bug"
        return paths

    def ready(self) -> defer.Deferred[None]:
        """Fires when every part of the lab answers (the BMC and EC2 processes start on their own time)."""
        parts = [part.ready for part in (self.bmcs, self.ec2) if part is not None]
        if not parts:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()

        def relay(result: Any) -> None:
            if isinstance(result, Failure):
                if result.check(defer.FirstError):
                    result = cast(defer.FirstError, result.value).subFailure
                waiting.errback(result)
            else:
                waiting.callback(None)

        defer.gatherResults(parts, consumeErrors=True).addBoth(relay)
        return waiting

    def _health_config_text(self) -> str:
        if not self.health_interval:
            return "[health]\nenabled = false\n\n"
        # Verdicts within a minute of start-up (GET /health); remediation stays off as by default.
        return (
            f"[health]\ninterval = {self.health_interval:g}\nprobe_timeout = 5\nssh_timeout = 20\n"
            "remote_timeout = 10\nmachine_timeout = 60\n\n"
        )

    def _aws_config_text(self) -> str:
        """The lab's EC2 (moto) and where loaners are named; quick polls for quick state changes."""
        if self.ec2 is None:
            return ""
        return (
            f"[aws]\nendpoint_url = {self.ec2.endpoint_url}\nregion = {self.ec2.region}\n"
            f"subnet_id = {self.ec2.subnet_id}\nbuild_ami = {self.ec2.build_ami}\ntest_ami = {self.ec2.test_ami}\n"
            f"test_launch_template = {self.ec2.test_launch_template}\n"
            f"build_domain = {self.domain}\ntest_domain = {self.domain}\n"
            "timeout = 10\npoll_interval = 0.2\nstate_timeout = 30\ndns_timeout = 10\n\n"
        )

    def _power_config_text(self) -> str:
        """Probes, PDUs and Mozpool, tuned to the lab's quick boots."""
        text = (
            "[probes]\nmethod = tcp\ntcp_timeout = 1\ninterval = 0.2\ndown_timeout = 10\n"
            f"up_timeout = {self.boot_time * 2 + 3:g}\n\n"
            f"[mozpool]\nport = {self.http_port}\n\n"
            # Graceful shutdowns: the lab's buildbots stop within seconds.
            "[buildbot]\npoll_interval = 0.2\nmax_wait = 30\n\n"
        )
        if self.bmcs is not None:
            # Four workers: they share the lab's few cores with the BMC processes; on 2 cores,
            # 500 power cycles at once took about 20 s with 4 and 27 s with 8, none timing out.
            text += (
                f"[ipmi]\nport = {self.bmcs.port}\ntimeout = 10\nretries = 1\nworkers = 4\noff_timeout = 5\n"
                "poll_interval = 0.2\npower_delay = 0.5\n\n"
            )
        if self.redfish is not None and self.redfish.port:
            # HTTPS verified against the lab's CA, as against a site's own; the client logs in with sessions.
            text += (
                f"[redfish]\nscheme = https\nport = {self.redfish.port}\nca_bundle = {CA_FILE}\n"
                "timeout = 5\nretries = 1\n\n"
            )
        if self.pdus is not None:
            text += (
                f"[snmp]\nport = {self.pdus.port}\ntimeout = 1\nretries = 1\nstate_timeout = 10\n"
                "poll_interval = 0.2\npower_delay = 0.5\n\n"
            )
            apc = [host for host, kind in sorted(self.pdus.types.items()) if kind == "apc"]
            if apc:
                text += "[pdus]\n" + "".join(f"{host} = apc\n" for host in apc) + "\n"
        return text

    def stop(self) -> defer.Deferred[None]:
        """Close every listener and connection and cancel pending reboots."""
        if self._stopping is None:
            self.power.stop()
            self.buildbots.stop()
            stops = [self.ssh.stop(), self.dns.stop(), self.http.stop()]
            if self.pdus is not None:
                stops.append(self.pdus.stop())
            if self.bmcs is not None:
                stops.append(self.bmcs.stop())
            if self.redfish is not None:
                stops.append(self.redfish.stop())
            if self.ec2 is not None:
                stops.append(self.ec2.stop())
            self._stopping = defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)
        return self._stopping

    def _write_host_files(self) -> None:
        """The host key's public half and a known_hosts for every machine (for strict host checking)."""
        public = self.host_key.public().toString("openssh").decode("ascii")
        with open(os.path.join(self.workdir, "ssh_host_ed25519_key.pub"), "w", encoding="ascii") as handle:
            handle.write(public + "\n")
        lines = "".join(
            f"[{machine.fqdn}]:{self.ssh_port},[{machine.ip}]:{self.ssh_port} {public}\n"
            for machine in self.fleet.all_hosts()
        )
        replace_file(os.path.join(self.workdir, "known_hosts"), lines.encode("ascii"))


def _redfish_bmcs(fleet: Fleet, share: float) -> None:
    """
    Give C{share} of the machines with a BMC a Redfish BMC instead of IPMI,
    spread evenly (every 1/share-th, the first one at the 1/share-th).

    With the default share of a quarter that is bld-linux64-lab-010 in the
    12-machine lab (bld-linux64-lab-001, t-w864-lab-004 and the
    SSH-refusing bld-linux64-lab-006 keep IPMI). Its SSH works, as the
    many tests and demonstrations that log in to it expect, so its reboot
    goes over SSH; one whose SSH refuses logins
    (C{lab.machine("bld-linux64-lab-010").ssh = SSH_REFUSE_LOGIN}, or
    C{refuse_ssh_share}) reboots by Redfish.
    """
    if share <= 0:
        return
    chosen = 0.0
    for machine in fleet.machines:
        if not (machine.bmc and machine.mgmt_ip):
            continue
        chosen += share
        if chosen >= 1 - 1e-9:
            chosen -= 1
            machine.redfish = True


def _refuse_ssh(fleet: Fleet, share: float) -> None:
    """Make C{share} of the ordinary machines with a BMC refuse SSH logins, spread evenly."""
    if share <= 0:
        return
    candidates = [m for m in fleet.machines if m.bmc and m.ssh == SSH_OK and m.scenario in ("idle", "running_command")]
    chosen = 0.0
    for machine in candidates:
        chosen += share
        if chosen >= 1:
            chosen -= 1
            machine.ssh = SSH_REFUSE_LOGIN


class LabService(Service):
    """A started L{Lab} in a service hierarchy: stopping the service stops the lab."""

    name = "lab"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.lab.stop()
