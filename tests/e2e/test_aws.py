"""
The AWS actions end to end: POSTs over HTTP to SlaveAPI serving its lab in
this process. The lab's EC2 is moto's server (in a process of its own);
the tests look behind the API with boto3 (in threads) and at the lab's DNS
records, and prepare EC2 between requests (a launch template taken away,
termination protection).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import boto3
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from slaveapi.actions._base import ActionFailure, ActionLog, ActionRun
from slaveapi.actions.aws import aws_create_instance
from slaveapi.clients.aws import AWSClient, AWSTimeout, Instance
from slaveapi.clients.dns import DNSClient
from slaveapi.context import Context
from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

WAIT = "60"
LOANER_TAGS = {"Name", "FQDN", "moz-loaned-to", "moz-bug", "moz-type", "moz-state", "created"}
CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("aws")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


def _ec2(service: RunningService) -> Any:
    ec2 = service.lab.ec2
    assert ec2 is not None
    return boto3.client(
        "ec2", region_name=ec2.region, endpoint_url=ec2.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


async def _instances(service: RunningService, name: str, *, terminated: bool = True) -> list[dict[str, Any]]:
    """Every instance named C{name}, straight from EC2."""

    def look() -> list[dict[str, Any]]:
        filters = [{"Name": "tag:Name", "Values": [name]}]
        reservations = _ec2(service).describe_instances(Filters=filters)["Reservations"]
        found = [i for r in reservations for i in r["Instances"]]
        return [i for i in found if terminated or i["State"]["Name"] != "terminated"]

    return await deferToThread(look)


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}


async def post(service: RunningService, slave: str, action: str, **fields: str) -> tuple[int, Any]:
    return await request_json(
        "POST", f"{service.url}/slaves/{slave}/actions/{action}", data={**fields, "waittime": WAIT}
    )


async def create(service: RunningService, slave: str = "default", **fields: str) -> tuple[int, Any]:
    return await post(service, slave, "aws_create_instance", **fields)


def _resolver(service: RunningService) -> DNSClient:
    from twisted.internet import reactor

    return DNSClient(reactor, service.lab.domain, (("127.0.0.1", service.lab.dns_port),), 2.0)


async def _check_loaner(
    service: RunningService, payload: dict[str, Any], name: str, bug: str, nick: str
) -> dict[str, Any]:
    """The loaner EC2, DNS and inventory know of agrees with the payload; returns it from EC2."""
    lab = service.lab
    assert lab.ec2 is not None
    fqdn = f"{name}.{lab.domain}"
    assert (payload["Name"], payload["FQDN"], payload["moz-bug"], payload["moz-state"]) == (name, fqdn, bug, "ready")
    assert CREATED.match(payload["created"]), payload["created"]
    ip = payload["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(lab.ec2.cidr)
    assert ip not in {machine.ip for machine in lab.fleet.all_hosts()}
    [instance] = await _instances(service, name)
    assert (instance["InstanceId"], instance["State"]["Name"]) == (payload["instance_id"], "running")
    assert (instance["PrivateIpAddress"], instance["SubnetId"]) == (ip, lab.ec2.subnet_id)
    assert _tags(instance) == {k: v for k, v in payload.items() if k not in ("ip", "instance_id")}
    records = sorted(lab.inventory_dns.find(fqdn=fqdn), key=lambda record: record.kind)
    assert [(r.kind, r.fqdn, r.ip, r.views, r.description) for r in records] == [
        ("A", fqdn, ip, ["private"], f"bug {bug}: loaner for {nick}"),
        ("PTR", fqdn, ip, ["private"], f"bug {bug}: loaner for {nick}"),
    ]
    resolver = _resolver(service)
    host = await resolver.lookup_host(fqdn)
    assert host is not None and host.ip == ip
    assert await resolver.reverse(ip) == fqdn
    return instance


# --- the lab's EC2 ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_labs_ec2_machines_are_running_instances(lab_service: RunningService) -> None:
    lab = lab_service.lab
    assert lab.ec2 is not None
    ec2_machines = [m for m in lab.fleet.machines if "-ec2-" in m.name]
    assert {m.name for m in ec2_machines} == {"dev-linux64-ec2-lab5", "tst-linux64-ec2-011", "tst-linux64-ec2-012"}
    for machine in ec2_machines:
        [instance] = await _instances(lab_service, machine.name)
        assert (instance["State"]["Name"], instance["PrivateIpAddress"]) == ("running", machine.ip)
        assert _tags(instance)["FQDN"] == machine.fqdn
    [loaner] = await _instances(lab_service, "dev-linux64-ec2-lab5")
    assert _tags(loaner) == {
        "Name": "dev-linux64-ec2-lab5",
        "FQDN": f"dev-linux64-ec2-lab5.{lab.domain}",
        "moz-type": "dev-linux64",
        "moz-state": "ready",
        "moz-loaned-to": "dev@example.test",
        "moz-bug": "1100001",
    }
    assert (loaner["ImageId"], loaner["InstanceType"]) == (lab.ec2.build_ami, "c5.2xlarge")


# --- create ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_a_build_loaner_with_the_default_name(lab_service: RunningService) -> None:
    code, result = await create(lab_service, email="jdoe@example.com", bug="123456", instance_type="build")
    assert (code, result["state"]) == (200, 2), result
    payload = result["text"]
    assert set(payload) == LOANER_TAGS | {"ip", "instance_id"}
    assert (payload["moz-loaned-to"], payload["moz-type"]) == ("jdoe@example.com", "dev-linux64")
    instance = await _check_loaner(lab_service, payload, "dev-linux64-ec2-jdoe", "123456", "jdoe")
    assert lab_service.lab.ec2 is not None
    assert (instance["ImageId"], instance["InstanceType"]) == (lab_service.lab.ec2.build_ami, "c5.2xlarge")
    # Filed under the slave asked for ("default") and the action name.
    code, again = await request_json(
        "GET", f"{lab_service.url}/slaves/default/actions/aws_create_instance?requestid={result['requestid']}"
    )
    assert (code, again["text"]) == (200, payload)


@pytest_twisted.ensureDeferred
async def test_create_a_32bit_test_loaner_with_disambig_from_the_launch_template(lab_service: RunningService) -> None:
    code, result = await create(
        lab_service, email="J.Doe@example.com", bug="77", instance_type="test", arch="32", disambig="7"
    )
    assert (code, result["state"]) == (200, 2), result
    payload = result["text"]
    # Launched from the lab's launch template, whose tags EC2 adds.
    assert set(payload) == LOANER_TAGS | {
        "ip",
        "instance_id",
        "aws:ec2launchtemplate:id",
        "aws:ec2launchtemplate:version",
    }
    assert (payload["moz-loaned-to"], payload["moz-type"]) == ("J.Doe@example.com", "tst-linux32")
    instance = await _check_loaner(lab_service, payload, "tst-linux32-ec2-j-doe7", "77", "j-doe")
    assert lab_service.lab.ec2 is not None
    assert (instance["ImageId"], instance["InstanceType"]) == (lab_service.lab.ec2.test_ami, "m5.large")


@pytest_twisted.ensureDeferred
async def test_create_a_64bit_test_loaner_by_default_and_one_named_by_the_slave(lab_service: RunningService) -> None:
    code, result = await create(lab_service, email="tester@example.com", bug="5", instance_type="test")
    assert (code, result["state"]) == (200, 2), result
    await _check_loaner(lab_service, result["text"], "tst-linux64-ec2-tester", "5", "tester")
    assert result["text"]["moz-type"] == "tst-linux64"
    code, named = await create(
        lab_service, "dev-linux64-ec2-loaner01", email="tester@example.com", bug="6", instance_type="build",
        disambig="3",
    )
    assert (code, named["state"]) == (200, 2), named
    # Another loaner name is used as given (disambig only tells default names apart).
    await _check_loaner(lab_service, named["text"], "dev-linux64-ec2-loaner01", "6", "tester")
    assert named["text"]["ip"] != result["text"]["ip"]


@pytest_twisted.ensureDeferred
async def test_an_existing_instance_is_not_created_again(lab_service: RunningService) -> None:
    [existing] = await _instances(lab_service, "dev-linux64-ec2-lab5")
    code, result = await create(
        lab_service, "dev-linux64-ec2-lab5", email="x@example.com", bug="1", instance_type="build"
    )
    assert (code, result["state"]) == (200, 3)
    assert result["text"] == (
        "Checking that dev-linux64-ec2-lab5 is not taken...Failed: Instance 'dev-linux64-ec2-lab5' already exists "
        f"({existing['InstanceId']}, running).\n"
        "Instance 'dev-linux64-ec2-lab5' was not created."
    )
    assert len(await _instances(lab_service, "dev-linux64-ec2-lab5")) == 1


@pytest_twisted.ensureDeferred
async def test_a_name_already_in_dns_is_not_taken(lab_service: RunningService) -> None:
    domain = lab_service.lab.domain
    lab_service.lab.dns.add_address(f"dev-linux64-ec2-taken.{domain}", "127.0.1.1")
    try:
        code, result = await create(
            lab_service, "dev-linux64-ec2-taken", email="x@example.com", bug="1", instance_type="build"
        )
    finally:
        lab_service.lab.dns.remove_address(f"dev-linux64-ec2-taken.{domain}", "127.0.1.1")
    assert (code, result["state"]) == (200, 3)
    assert result["text"] == (
        f"Checking that dev-linux64-ec2-taken is not taken...Failed: dev-linux64-ec2-taken.{domain} already resolves "
        "to 127.0.1.1; remove its DNS records or pick another name (disambig).\n"
        "Instance 'dev-linux64-ec2-taken' was not created."
    )
    assert await _instances(lab_service, "dev-linux64-ec2-taken") == []


@pytest_twisted.ensureDeferred
async def test_only_loaner_names_of_the_asked_type_are_created(lab_service: RunningService) -> None:
    code, body = await create(lab_service, "bld-linux64-lab-001", email="x@example.com", bug="1", instance_type="build")
    assert (code, body["error"]) == (404, "not_found"), body
    assert body["msg"].startswith("slave: bld-linux64-lab-001 is not a loaner name")
    code, result = await create(
        lab_service, "dev-linux64-ec2-typo", email="x@example.com", bug="1", instance_type="test"
    )
    assert (code, result["state"]) == (200, 3)
    assert result["text"] == (
        "dev-linux64-ec2-typo is a build loaner name; instance_type=test expects one matching "
        "tst-linux32-ec2-*, tst-linux64-ec2-*"
    )
    assert await _instances(lab_service, "bld-linux64-lab-001") == []
    assert await _instances(lab_service, "dev-linux64-ec2-typo") == []


@pytest_twisted.ensureDeferred
async def test_a_failed_launch_surfaces_the_ec2_code_and_removes_the_dns_records(lab_service: RunningService) -> None:
    lab = lab_service.lab
    assert lab.ec2 is not None
    ec2 = _ec2(lab_service)
    await deferToThread(ec2.delete_launch_template, LaunchTemplateName=lab.ec2.test_launch_template)
    try:
        code, result = await create(lab_service, email="cleanup@example.com", bug="9", instance_type="test")
    finally:
        await deferToThread(
            ec2.create_launch_template,
            LaunchTemplateName=lab.ec2.test_launch_template,
            LaunchTemplateData={"ImageId": lab.ec2.test_ami, "InstanceType": "m5.large"},
        )
    assert (code, result["state"]) == (200, 3), result
    fqdn = f"tst-linux64-ec2-cleanup.{lab.domain}"
    lines = result["text"].split("\n")
    match = re.fullmatch(rf"Picking a free IP address in {lab.ec2.subnet_id}\.\.\.(127\.0\.\d+\.\d+)\.", lines[1])
    assert match, lines
    ip = match.group(1)
    assert lines == [
        "Checking that tst-linux64-ec2-cleanup is not taken...OK.",
        f"Picking a free IP address in {lab.ec2.subnet_id}...{ip}.",
        f"Creating DNS records for {fqdn} -> {ip}...A and PTR created.",
        f"Waiting for {fqdn} to resolve...{ip}.",
        f"Launching tst-linux64-ec2-cleanup from launch template {lab.ec2.test_launch_template} with "
        f"{lab.ec2.test_ami}...Failed: EC2 RunInstances failed: InvalidLaunchTemplateName.NotFoundException: "
        "At least one of the launch templates specified in the request does not exist.",
        f"Cleaning up: deleting the PTR record {fqdn} -> {ip}...done.",
        f"Cleaning up: deleting the A record {fqdn} -> {ip}...done.",
        "Instance 'tst-linux64-ec2-cleanup' was not created.",
    ]
    assert await _instances(lab_service, "tst-linux64-ec2-cleanup") == []
    assert lab.inventory_dns.find(fqdn=fqdn) == []
    assert await _resolver(lab_service).lookup_host(fqdn) is None
    # The address is free again: the next loaner may have it.
    code, retry = await create(lab_service, email="cleanup@example.com", bug="9", instance_type="test")
    assert (code, retry["state"], retry["text"]["ip"]) == (200, 2, ip), retry


class _NeverRunning:
    """The lab's AWS client, except that launched instances never get to running."""

    def __init__(self, real: AWSClient) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def wait_for_state(self, instance_id: str, target: str, **kwargs: Any) -> Instance:
        raise AWSTimeout(f"instance {instance_id} is still pending after 30s; expected {target}", "DescribeInstances")


@pytest_twisted.ensureDeferred
async def test_a_launch_that_never_runs_is_terminated_and_its_records_removed(lab_service: RunningService) -> None:
    from twisted.logger import Logger

    holder = next(child for child in lab_service.service if isinstance(child, ContextHolder))
    ctx: Context = holder.context()
    never_running = _NeverRunning(cast(AWSClient, ctx.clients.aws))
    failing = dataclasses.replace(ctx, clients=dataclasses.replace(ctx.clients, aws=never_running))
    shown: list[str] = []
    run = ActionRun(
        failing, "default", 0, "aws_create_instance", ActionLog(Logger(), "default", 0, "test"), shown.append
    )
    with pytest.raises(ActionFailure) as failure:
        await aws_create_instance(run, email="stuck@example.com", bug=11, instance_type="build")
    [instance] = await _instances(lab_service, "dev-linux64-ec2-stuck")
    ident, ip = instance["InstanceId"], instance["PrivateIpAddress"]
    assert instance["State"]["Name"] == "terminated"
    fqdn = f"dev-linux64-ec2-stuck.{lab_service.lab.domain}"
    lines = str(failure.value.payload).split("\n")
    assert lab_service.lab.ec2 is not None
    assert lines[-6:] == [
        f"Launching dev-linux64-ec2-stuck from {lab_service.lab.ec2.build_ami}...{ident}.",
        f"Waiting for {ident} to be running...Failed: instance {ident} is still pending after 30s; expected running.",
        f"Cleaning up: terminating {ident}...shutting-down.",
        f"Cleaning up: deleting the PTR record {fqdn} -> {ip}...done.",
        f"Cleaning up: deleting the A record {fqdn} -> {ip}...done.",
        "Instance 'dev-linux64-ec2-stuck' was not created.",
    ]
    assert shown[-1] == "\n".join(lines[:-1])
    assert lab_service.lab.inventory_dns.find(fqdn=fqdn) == []
    assert ip not in ctx.clients.aws.claimed_ips


@pytest.mark.parametrize(
    "fields, msg",
    [
        (
            {},
            "missing field(s) email, bug, instance_type; required: email, bug, instance_type; received: waittime='60'",
        ),
        (
            {"email": "a@example.com", "bug": "5"},
            "missing field(s) instance_type; required: email, bug, instance_type; "
            "received: bug='5', email='a@example.com', waittime='60'",
        ),
        (
            {"email": "a@example.com", "bug": "5", "instance_type": "prod"},
            "instance_type: expected 'build' or 'test', got 'prod'",
        ),
        (
            {"email": "a@example.com", "bug": "5", "instance_type": "build", "arch": "32"},
            "arch: 32bit instances are not used for building",
        ),
        (
            {"email": "a@example.com", "bug": "5", "instance_type": "test", "arch": "16"},
            "arch: expected 32 or 64, got '16'",
        ),
        (
            {"email": "a@example.com", "bug": "5", "instance_type": "test", "disambig": "x"},
            "disambig: expected a non-negative integer, got 'x'",
        ),
        (
            {"email": "nobody", "bug": "5", "instance_type": "test"},
            "email: expected an email address (user@domain), got 'nobody'",
        ),
        (
            {"email": "...@example.com", "bug": "5", "instance_type": "test"},
            "email: the part before '@' of '...@example.com' gives no host name (letters, digits and '-')",
        ),
        ({"email": "a@example.com", "bug": "abc", "instance_type": "test"}, "bug: expected a bug number, got 'abc'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_create_requests_are_400s(lab_service: RunningService, fields: dict[str, str], msg: str) -> None:
    code, body = await create(lab_service, "loaner-400", **fields)
    assert (code, body) == (400, {"error": "bad_request", "msg": msg})
    code, results = await request_json("GET", f"{lab_service.url}/slaves/loaner-400/actions/aws_create_instance")
    assert (code, results) == (200, {"aws_create_instance": {}})


# --- start, stop, terminate ------------------------------------------------------------


async def _state(service: RunningService, name: str) -> str:
    [instance] = await _instances(service, name)
    return str(instance["State"]["Name"])


@pytest_twisted.ensureDeferred
async def test_stop_start_and_terminate_an_instance(lab_service: RunningService) -> None:
    name = "tst-linux64-ec2-011"
    assert await _state(lab_service, name) == "running"
    steps = [
        ("stop", "Instance 'tst-linux64-ec2-011' stopping (state: stopped)", "stopped"),
        ("stop", "Instance 'tst-linux64-ec2-011' stopping (state: stopped)", "stopped"),
        ("start", "Instance 'tst-linux64-ec2-011' starting (state: running)", "running"),
        ("terminate", "Instance 'tst-linux64-ec2-011' has been terminated (state: terminated)", "terminated"),
    ]
    ids: dict[str, list[str]] = {}
    for action, text, state in steps:
        code, result = await post(lab_service, name, action)
        assert (code, result["state"], result["text"]) == (200, 2, text), result
        assert await _state(lab_service, name) == state
        ids.setdefault(action, []).append(str(result["requestid"]))
    # Terminated instances are not found any more.
    for action in ("start", "stop", "terminate"):
        code, result = await post(lab_service, name, action)
        assert (code, result["state"], result["text"]) == (
            200, 3, "Instance 'tst-linux64-ec2-011' could not be found. Does it exist?"
        )
    # Results are filed under the aws_* action names.
    code, stops = await request_json("GET", f"{lab_service.url}/slaves/{name}/actions/stop")
    assert code == 200 and list(stops) == ["aws_stop_instance"]
    assert set(ids["stop"]) <= set(stops["aws_stop_instance"])
    code, everything = await request_json("GET", f"{lab_service.url}/results")
    assert {"aws_start_instance", "aws_stop_instance", "aws_terminate_instance"} <= set(everything[name])


@pytest_twisted.ensureDeferred
async def test_an_unknown_instance_is_not_found(lab_service: RunningService) -> None:
    for action in ("start", "stop", "terminate"):
        # A loaner name with no instance.
        code, result = await post(lab_service, "tst-linux64-ec2-nosuch", action)
        assert (code, result["state"], result["text"]) == (
            200, 3, "Instance 'tst-linux64-ec2-nosuch' could not be found. Does it exist?"
        )
        # A name SlaveAPI does not know at all.
        code, body = await post(lab_service, "nosuch-ec2-001", action)
        assert (code, body["error"]) == (404, "not_found")


@pytest_twisted.ensureDeferred
async def test_an_instance_slaveapi_does_not_manage_is_left_alone(lab_service: RunningService) -> None:
    """An instance named like a known machine, but neither a loaner's name nor loan tags."""
    lab = lab_service.lab
    assert lab.ec2 is not None
    name = "bld-linux64-lab-010"
    ec2 = _ec2(lab_service)
    launched = await deferToThread(
        ec2.run_instances, ImageId=lab.ec2.build_ami, MinCount=1, MaxCount=1, SubnetId=lab.ec2.subnet_id,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
    )
    ident = launched["Instances"][0]["InstanceId"]
    try:
        for action in ("stop", "terminate"):
            code, result = await post(lab_service, name, action)
            assert (code, result["state"]) == (200, 3), result
            assert result["text"] == (
                f"Instance '{name}' ({ident}) is not managed by SlaveAPI: its name matches no [aws] loaner names "
                "and it has no loan tags (moz-loaned-to, moz-bug). Nothing was changed."
            )
            assert await _state(lab_service, name) == "running"
        # Loan tags make it SlaveAPI's.
        await deferToThread(
            ec2.create_tags, Resources=[ident],
            Tags=[{"Key": "moz-loaned-to", "Value": "x@example.com"}, {"Key": "moz-bug", "Value": "1"}],
        )
        code, result = await post(lab_service, name, "terminate")
        assert (code, result["state"]) == (200, 2), result
    finally:
        await deferToThread(ec2.terminate_instances, InstanceIds=[ident])


@pytest_twisted.ensureDeferred
async def test_an_ec2_refusal_is_a_failure_quoting_its_code(lab_service: RunningService) -> None:
    name = "tst-linux64-ec2-012"
    [instance] = await _instances(lab_service, name)
    ident = instance["InstanceId"]
    ec2 = _ec2(lab_service)
    await deferToThread(ec2.modify_instance_attribute, InstanceId=ident, DisableApiTermination={"Value": True})
    try:
        code, result = await post(lab_service, name, "terminate")
    finally:
        await deferToThread(ec2.modify_instance_attribute, InstanceId=ident, DisableApiTermination={"Value": False})
    assert (code, result["state"]) == (200, 3)
    assert result["text"] == (
        f"Instance '{name}' ({ident}) could not be terminated: EC2 TerminateInstances failed: "
        f"OperationNotPermitted: The instance '{ident}' may not be terminated. Modify its "
        "'disableApiTermination' instance attribute and try again."
    )
    assert await _state(lab_service, name) == "running"
