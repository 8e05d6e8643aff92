"""
The lab's EC2: moto's EC2 server, seeded with the lab's subnet, AMIs and instances.

L{LabEC2.start} spawns a child process (C{python -m slaveapi.lab.ec2}) that
serves moto's EC2 API on a loopback port and seeds it:

  - a VPC and one subnet covering the lab's machine addresses (127.0.0.0/16
    by default), with the subnet id the lab chose;
  - two AMIs, for build and test loaners (ids chosen by the lab; moto's
    AMI validation is on, so an unknown AMI is C{InvalidAMIID.NotFound} as
    on real EC2);
  - a launch template C{slaveapi-lab-test} (the test AMI, C{m5.large});
  - every C{*-ec2-*} machine of the fleet as a running instance at its lab
    address, tagged C{Name}, C{FQDN}, C{moz-type}, C{moz-state} (and the
    loaner's C{moz-loaned-to} and C{moz-bug}).

Why a child process rather than moto's C{ThreadedMotoServer} in the lab's
own process: moto keeps its state in module-level globals, so every lab and
every test server of one process would share (and reset) one EC2; the ids
the lab writes into SlaveAPI's configuration must be fixed before seeding,
which takes moto internals that should not be touched in a shared process;
and importing moto and building its backend takes seconds of CPU and
~190 MB that a child keeps off the reactor and gives back when it exits.

The port is known at once: the lab binds a listening socket on 127.0.0.1
and hands it to the child (file descriptor 3), which serves on it. The
child reads its configuration as one JSON line on stdin, writes
C{{"event": "ready"}} on stdout once seeded, and exits when stdin closes or
on SIGTERM.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

import slaveapi
from slaveapi.lab._child import ChildProcess, Readiness
from slaveapi.lab.fleet import Fleet
from slaveapi.lab.machines import LabMachine

_log = Logger(namespace="slaveapi.lab.ec2")

#: Credentials moto takes (it checks none); they map to moto's default account.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # noqa: S105  # moto accepts any key; not a secret

DEFAULT_REGION = "us-east-1"
DEFAULT_CIDR = "127.0.0.0/16"
TEST_LAUNCH_TEMPLATE = "slaveapi-lab-test"
BUILD_INSTANCE_TYPE = "c5.2xlarge"
TEST_INSTANCE_TYPE = "m5.large"

# After SIGTERM, how long until SIGKILL.
_KILL_GRACE = 3.0
_FD = 3
_LOANER_NOTES = re.compile(r"loaned to (\S+) for bug (\d+)")


class LabEC2Error(Exception):
    """The EC2 process could not be started or seeded (the message says why, in one line)."""


@dataclass(frozen=True)
class LabInstance:
    """A fleet machine seeded as an EC2 instance."""

    name: str
    fqdn: str
    ip: str
    purpose: str
    tags: dict[str, str]


class _EC2Process(ChildProcess):
    """The child process serving EC2."""

    def __init__(self, owner: LabEC2) -> None:
        super().__init__("EC2", LabEC2Error, lambda: owner.stopping)
        self.ready.addCallback(self._announce, owner)

    @staticmethod
    def _announce(result: None, owner: LabEC2) -> None:
        _log.info("lab: EC2 (moto) ready on port {port}", port=owner.port)
        return result


class LabEC2:
    """
    The lab's EC2 endpoint (see the module docstring).

    @ivar port: the TCP port on 127.0.0.1 it serves on.
    @ivar region: the region everything is seeded in.
    @ivar subnet_id: the subnet loaners are launched into.
    @ivar cidr: the subnet's CIDR block.
    @ivar build_ami: the AMI of build loaners; C{test_ami} that of test loaners.
    @ivar test_launch_template: the launch template test loaners use.
    @ivar instances: the fleet machines seeded as instances.
    """

    def __init__(self, reactor: Any, fleet: Fleet, region: str = DEFAULT_REGION, cidr: str = DEFAULT_CIDR) -> None:
        """Choose the ids without starting; L{start} is the way in."""
        self._reactor = reactor
        self.region = region
        self.cidr = cidr
        self.subnet_id = "subnet-" + secrets.token_hex(9)[:17]
        self.build_ami = "ami-" + secrets.token_hex(9)[:17]
        self.test_ami = "ami-" + secrets.token_hex(9)[:17]
        self.test_launch_template = TEST_LAUNCH_TEMPLATE
        self.instances = _instances(fleet, cidr)
        self.port = 0
        self.stopping = False
        self._child: _EC2Process | None = None
        self._stopped: Deferred[None] | None = None
        self._readiness = Readiness()

    @classmethod
    def start(cls, reactor: Any, fleet: Fleet, workdir: str, region: str = DEFAULT_REGION) -> LabEC2:
        """Listen on a free port of 127.0.0.1 and spawn the EC2 process; returns at once."""
        ec2 = cls(reactor, fleet, region)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            ec2.port = listener.getsockname()[1]
            ec2._spawn(workdir, listener.fileno())
        finally:
            # The child has its own copy of the socket now.
            listener.close()
        assert ec2._child is not None  # noqa: S101  # _spawn just set it
        ec2._child.ready.addCallbacks(lambda _: ec2._readiness.settle(None), ec2._readiness.settle)
        _log.info(
            "lab: EC2 (moto) on port {port}: {count} instances in {subnet}",
            port=ec2.port,
            count=len(ec2.instances),
            subnet=ec2.subnet_id,
        )
        return ec2

    @property
    def endpoint_url(self) -> str:
        """The EC2 endpoint (C{http://127.0.0.1:<port>})."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The EC2 process, while it runs."""
        child = self._child
        return child.pid if child is not None and not child.exited else None

    @property
    def ready(self) -> Deferred[None]:
        """A new Deferred on each access: fires once EC2 answers and is seeded; fails if the process died."""
        return self._readiness.wait()

    def _spawn(self, workdir: str, fd: int) -> None:
        os.makedirs(workdir, exist_ok=True)
        amis_path = os.path.join(workdir, "ec2-amis.json")
        with open(amis_path, "w", encoding="utf-8") as handle:
            json.dump(self._amis(), handle, indent=2)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(slaveapi.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        # Only the lab's AMIs, and unknown AMIs refused as real EC2 does.
        env["MOTO_AMIS_PATH"] = amis_path
        env["MOTO_ENABLE_AMI_VALIDATION"] = "true"
        for name in ("MOTO_ACCOUNT_ID", "AWS_PROFILE"):
            env.pop(name, None)
        child = _EC2Process(self)
        self._reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-m", "slaveapi.lab.ec2"],
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", _FD: fd},
        )
        self._child = child
        child.send(
            {
                "fd": _FD,
                "region": self.region,
                "cidr": self.cidr,
                "subnet_id": self.subnet_id,
                "build_ami": self.build_ami,
                "test_ami": self.test_ami,
                "test_launch_template": self.test_launch_template,
                "instances": [
                    {"ip": i.ip, "purpose": i.purpose, "tags": i.tags} for i in self.instances
                ],
            }
        )

    def _amis(self) -> list[dict[str, Any]]:
        common = {
            "owner_id": "123456789012",
            "public": False,
            "virtualization_type": "hvm",
            "architecture": "x86_64",
            "state": "available",
            "root_device_type": "ebs",
            "root_device_name": "/dev/xvda",
            "hypervisor": "xen",
            "creation_date": "2026-01-01T00:00:00.000Z",
        }
        return [
            dict(common, ami_id=self.build_ami, name="slaveapi-lab-build", description="lab build loaner image"),
            dict(common, ami_id=self.test_ami, name="slaveapi-lab-test", description="lab test loaner image"),
        ]

    def stop(self) -> Deferred[None]:
        """End the EC2 process (SIGTERM, SIGKILL if it lingers); fires when it is gone."""
        if self._stopped is None:
            self.stopping = True
            child = self._child
            if child is None:
                self._stopped = defer.succeed(None)
                return self._stopped
            child.signal("TERM")
            kill = self._reactor.callLater(_KILL_GRACE, child.signal, "KILL")

            def done(_: object) -> None:
                if kill.active():
                    kill.cancel()

            self._stopped = child.ended.addCallback(done)
        return self._stopped


def _instances(fleet: Fleet, cidr: str) -> list[LabInstance]:
    """The fleet's C{*-ec2-*} machines whose address is in the subnet, with their tags."""
    network = ipaddress.ip_network(cidr)
    found = []
    for machine in fleet.machines:
        if not machine.is_aws or ipaddress.ip_address(machine.ip) not in network:
            continue
        found.append(LabInstance(machine.name, machine.fqdn, machine.ip, machine.purpose, _tags(machine)))
    return found


def _tags(machine: LabMachine) -> dict[str, str]:
    kind = machine.name.split("-ec2-", 1)[0]
    tags = {"Name": machine.name, "FQDN": machine.fqdn, "moz-type": kind, "moz-state": "ready"}
    loan = _LOANER_NOTES.search(machine.notes or "")
    if loan:
        tags.update({"moz-loaned-to": loan.group(1), "moz-bug": loan.group(2)})
    return tags


# --- the child process ---------------------------------------------------------------


def _serve(config: dict[str, Any]) -> None:
    """In the child: serve moto's EC2 on the inherited socket, seed it, say so, run until stdin closes."""
    import logging
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler, fd=int(config["fd"])
    )
    port = server.socket.getsockname()[1]
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    _seed(config, f"http://127.0.0.1:{port}")
    sys.stdout.write(json.dumps({"event": "ready"}) + "\n")
    sys.stdout.flush()
    for _line in sys.stdin:
        pass
    server.shutdown()


def _seed(config: dict[str, Any], endpoint: str) -> None:
    """The VPC, the subnet (with the lab's id), the launch template and the instances."""
    from unittest import mock

    import boto3
    import moto.ec2.models.subnets as moto_subnets
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    region = config["region"]
    ec2 = boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    vpc_id = ec2.create_vpc(CidrBlock=config["cidr"])["Vpc"]["VpcId"]
    # moto picks subnet ids at random; SlaveAPI's configuration was written
    # with the lab's, so the subnet is made through moto's backend with it.
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    with mock.patch.object(moto_subnets, "random_subnet_id", return_value=config["subnet_id"]):
        backend.create_subnet(vpc_id=vpc_id, cidr_block=config["cidr"], availability_zone=f"{region}a")
    ec2.create_launch_template(
        LaunchTemplateName=config["test_launch_template"],
        LaunchTemplateData={"ImageId": config["test_ami"], "InstanceType": TEST_INSTANCE_TYPE},
    )
    for instance in config["instances"]:
        build = instance["purpose"] == "build"
        ec2.run_instances(
            ImageId=config["build_ami"] if build else config["test_ami"],
            InstanceType=BUILD_INSTANCE_TYPE if build else TEST_INSTANCE_TYPE,
            MinCount=1,
            MaxCount=1,
            SubnetId=config["subnet_id"],
            PrivateIpAddress=instance["ip"],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in instance["tags"].items()]}
            ],
        )


def main() -> None:
    """The child's entry point: configuration on stdin (one JSON line)."""
    line = sys.stdin.readline()
    if not line.strip():
        sys.exit("slaveapi.lab.ec2: expected the configuration as one JSON line on stdin")
    _serve(json.loads(line))


if __name__ == "__main__":
    main()
