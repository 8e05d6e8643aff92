"""
The AWS client against moto's EC2 server (in this process, on loopback), and
against endpoints that misbehave: garbage, refused connections, silence.

Every boto3 call the tests make themselves runs in a thread, as the client's do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from slaveapi.clients.aws import AWSClient, AWSError, AWSTimeout, Instance, LaunchSpec, SubnetUsage
from slaveapi.config import AWSConfig, Secret

REGION = "eu-west-1"
CIDR = "10.20.1.0/24"
AMI = "ami-0a1b2c3d4e5f60718"
KEY = "testing"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's EC2 server in a thread of this process, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class World:
    """What the module's tests share: the endpoint, a subnet, and a raw boto3 client."""

    url: str
    subnet_id: str
    ec2: Any

    def config(self, **changes: Any) -> AWSConfig:
        settings: dict[str, Any] = dict(
            region=REGION, endpoint_url=self.url, timeout=10, retries=0, threads=3, poll_interval=0.05,
            state_timeout=10,
        )
        settings.update(changes)
        return AWSConfig(**settings)

    def client(self, **changes: Any) -> AWSClient:
        return AWSClient(_reactor(), self.config(**changes), Secret(KEY), Secret(KEY))

    async def launch(self, name: str, ip: str, fqdn: str | None = None) -> str:
        """A running instance (made behind the client's back)."""
        tags = [{"Key": "Name", "Value": name}] + ([{"Key": "FQDN", "Value": fqdn}] if fqdn else [])

        def run() -> str:
            answer = self.ec2.run_instances(
                ImageId=AMI, MinCount=1, MaxCount=1, SubnetId=self.subnet_id, PrivateIpAddress=ip,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
            return str(answer["Instances"][0]["InstanceId"])

        return await deferToThread(run)

    async def state(self, instance_id: str) -> str:
        def look() -> str:
            answer = self.ec2.describe_instances(InstanceIds=[instance_id])
            return str(answer["Reservations"][0]["Instances"][0]["State"]["Name"])

        return await deferToThread(look)


@pytest_twisted.async_yield_fixture(scope="module")
async def world(moto_url: str) -> AsyncIterator[World]:
    ec2 = boto3.client(
        "ec2", region_name=REGION, endpoint_url=moto_url, aws_access_key_id=KEY, aws_secret_access_key=KEY
    )

    def seed() -> str:
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        return str(ec2.create_subnet(VpcId=vpc, CidrBlock=CIDR)["Subnet"]["SubnetId"])

    subnet_id = await deferToThread(seed)
    yield World(moto_url, subnet_id, ec2)
    ec2.close()


@pytest_twisted.async_yield_fixture
async def aws(world: World) -> AsyncIterator[AWSClient]:
    client = world.client()
    yield client
    await client.close()


@pytest_twisted.ensureDeferred
async def test_instances_are_found_by_name_tag_and_terminated_ones_are_not(world: World, aws: AWSClient) -> None:
    kept = await world.launch("find-me", "10.20.1.10", fqdn="find-me.build.example")
    gone = await world.launch("find-me", "10.20.1.11")
    await deferToThread(world.ec2.terminate_instances, InstanceIds=[gone])
    found = await aws.find_instances("find-me")
    assert found == [
        Instance(
            instance_id=kept,
            state="running",
            private_ip="10.20.1.10",
            instance_type="m1.small",
            subnet_id=world.subnet_id,
            tags={"Name": "find-me", "FQDN": "find-me.build.example"},
        )
    ]
    assert dict(found[0].tags) == {"Name": "find-me", "FQDN": "find-me.build.example"}
    # A fully qualified name: the FQDN tag, where present, must agree.
    assert [i.instance_id for i in await aws.find_instances("find-me.build.example")] == [kept]
    assert await aws.find_instances("find-me.test.example") == []
    assert await aws.find_instances("nobody-by-that-name") == []


@pytest_twisted.ensureDeferred
async def test_stop_start_terminate_and_wait_for_each_state(world: World, aws: AWSClient) -> None:
    ident = await world.launch("cycle-me", "10.20.1.20")
    assert await aws.stop(ident) == "stopping"
    assert (await aws.wait_for_state(ident, "stopped")).state == "stopped"
    assert await world.state(ident) == "stopped"
    assert await aws.start(ident) == "pending"
    assert (await aws.wait_for_state(ident, "running")).state == "running"
    assert await world.state(ident) == "running"
    assert await aws.terminate(ident) == "shutting-down"
    assert (await aws.wait_for_state(ident, "terminated")).state == "terminated"
    assert await world.state(ident) == "terminated"


@pytest_twisted.ensureDeferred
async def test_waiting_is_bounded_and_stops_at_a_dead_end(world: World, aws: AWSClient) -> None:
    ident = await world.launch("wait-for-me", "10.20.1.21")
    with pytest.raises(AWSTimeout) as timeout:
        await aws.wait_for_state(ident, "stopped", timeout=0.2, poll_interval=0.05)
    assert str(timeout.value) == f"instance {ident} is still running after 0.2s; expected stopped"
    await aws.terminate(ident)
    with pytest.raises(AWSError) as dead:
        await aws.wait_for_state(ident, "running")
    assert str(dead.value) == f"instance {ident} is terminated; it will not become running"


@pytest_twisted.ensureDeferred
async def test_launch_with_tags_address_ami_and_type(world: World, aws: AWSClient) -> None:
    spec = LaunchSpec(
        subnet_id=world.subnet_id,
        private_ip="10.20.1.30",
        tags={"Name": "launched", "moz-bug": "42"},
        image_id=AMI,
        instance_type="c5.2xlarge",
    )
    instance = await aws.run_instance(spec)
    assert (instance.state, instance.private_ip, instance.instance_type, instance.subnet_id) == (
        "pending", "10.20.1.30", "c5.2xlarge", world.subnet_id,
    )
    assert dict(instance.tags) == {"Name": "launched", "moz-bug": "42"}
    running = await aws.wait_for_state(instance.instance_id, "running")
    assert dict(running.tags) == {"Name": "launched", "moz-bug": "42"}

    def image_of() -> str:
        answer = world.ec2.describe_instances(InstanceIds=[instance.instance_id])
        return str(answer["Reservations"][0]["Instances"][0]["ImageId"])

    assert await deferToThread(image_of) == AMI


@pytest_twisted.ensureDeferred
async def test_launch_from_a_launch_template_by_name(world: World, aws: AWSClient) -> None:
    await deferToThread(
        world.ec2.create_launch_template,
        LaunchTemplateName="unit-template",
        LaunchTemplateData={"ImageId": AMI, "InstanceType": "m5.large"},
    )
    spec = LaunchSpec(
        subnet_id=world.subnet_id, private_ip="10.20.1.31", tags={"Name": "templated"},
        launch_template="unit-template", instance_type="c5.2xlarge",
    )
    instance = await aws.run_instance(spec)
    # The template's type wins: the instance type is only sent without a template.
    assert (instance.instance_type, instance.private_ip) == ("m5.large", "10.20.1.31")


@pytest_twisted.ensureDeferred
async def test_subnet_usage_counts_every_address_in_use_even_terminated(world: World, aws: AWSClient) -> None:
    ident = await world.launch("usage", "10.20.1.40")
    await aws.terminate(ident)
    usage = await aws.subnet_usage(world.subnet_id)
    assert (usage.subnet_id, usage.cidr) == (world.subnet_id, CIDR)
    assert "10.20.1.40" in usage.used
    assert "10.20.1.41" not in usage.used

    def addresses() -> set[str]:
        interfaces = world.ec2.describe_network_interfaces(
            Filters=[{"Name": "subnet-id", "Values": [world.subnet_id]}]
        )["NetworkInterfaces"]
        return {i["PrivateIpAddress"] for i in interfaces}

    assert usage == SubnetUsage(world.subnet_id, CIDR, frozenset(await deferToThread(addresses)))


@pytest_twisted.ensureDeferred
async def test_an_ec2_error_quotes_its_code_and_message(aws: AWSClient) -> None:
    with pytest.raises(AWSError) as error:
        await aws.start("i-0123456789abcdef0")
    assert (error.value.operation, error.value.code) == ("StartInstances", "InvalidInstanceID.NotFound")
    assert str(error.value) == (
        "EC2 StartInstances failed: InvalidInstanceID.NotFound: "
        "The instance ID 'i-0123456789abcdef0' does not exist"
    )
    with pytest.raises(AWSError) as subnet:
        await aws.subnet_usage("subnet-00000000")
    assert subnet.value.code == "InvalidSubnetID.NotFound"
    assert str(subnet.value).startswith("EC2 DescribeSubnets failed: InvalidSubnetID.NotFound: ")


@pytest_twisted.ensureDeferred
async def test_an_html_error_page_is_a_clear_failure(world: World, aws: AWSClient) -> None:
    await world.launch("occupant", "10.20.1.50")
    spec = LaunchSpec(subnet_id=world.subnet_id, private_ip="10.20.1.50", tags={"Name": "intruder"}, image_id=AMI)
    with pytest.raises(AWSError) as error:
        await aws.run_instance(spec)
    # moto answers an address already in use with an HTML 500 page.
    assert str(error.value) == (
        "EC2 RunInstances failed: the endpoint answered an HTML page instead of an EC2 response "
        "(the endpoint failed or is not EC2)"
    )
    assert error.value.code is None


@pytest_twisted.ensureDeferred
async def test_no_launch_without_an_ami_or_a_template(world: World, aws: AWSClient) -> None:
    with pytest.raises(AWSError) as error:
        await aws.run_instance(LaunchSpec(subnet_id=world.subnet_id, private_ip="10.20.1.60", tags={}))
    assert str(error.value) == "EC2 RunInstances not attempted: no AMI and no launch template"


@pytest_twisted.ensureDeferred
async def test_calls_run_in_a_bounded_pool_off_the_reactor(world: World) -> None:
    from twisted.internet.defer import Deferred, gatherResults

    client = world.client(threads=2)
    try:
        results = await gatherResults([Deferred.fromCoroutine(client.find_instances(f"nobody-{n}")) for n in range(6)])
        assert results == [[]] * 6
        assert client._pool.max == 2 and len(client._pool.threads) <= 2
    finally:
        await client.close()
    assert client._pool.joined and not any(thread.is_alive() for thread in client._pool.threads)
    with pytest.raises(AWSError) as closed:
        await client.find_instances("anyone")
    assert str(closed.value) == "EC2 DescribeInstances not attempted: the AWS client is closed"


# --- endpoints that misbehave -----------------------------------------------------------


class _Garbage(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"hello, I am not EC2"


class _Overloaded(Resource):
    """Answers every request with an HTML 503, counting them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render(self, request: Any) -> bytes:
        self.requests += 1
        request.setResponseCode(503)
        return b"<html><body>Service Unavailable</body></html>"


class _Silent(Protocol):
    """Accepts the connection and never answers."""


@pytest_twisted.async_yield_fixture
async def garbage_url() -> AsyncIterator[str]:
    listener = _reactor().listenTCP(0, Site(_Garbage()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{listener.getHost().port}"
    await listener.stopListening()


@pytest_twisted.async_yield_fixture
async def silent_url() -> AsyncIterator[str]:
    factory = Factory.forProtocol(_Silent)
    listener = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    yield f"http://127.0.0.1:{listener.getHost().port}"
    await listener.stopListening()


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def _odd_client(url: str, **changes: Any) -> AWSClient:
    settings: dict[str, Any] = dict(region=REGION, endpoint_url=url, timeout=5, retries=0, threads=2)
    settings.update(changes)
    deadline = settings.pop("deadline", None)
    return AWSClient(_reactor(), AWSConfig(**settings), Secret(KEY_ID), Secret(SECRET), deadline=deadline)


@pytest_twisted.ensureDeferred
async def test_garbage_from_the_endpoint_is_a_clear_failure_without_secrets(garbage_url: str) -> None:
    client = _odd_client(garbage_url)
    try:
        with pytest.raises(AWSError) as error:
            await client.find_instances("anything")
    finally:
        await client.close()
    assert str(error.value) == (
        "EC2 DescribeInstances failed: the endpoint answered something unreadable instead of an EC2 "
        "response (the endpoint failed or is not EC2)"
    )
    assert SECRET not in repr(client) and KEY_ID not in repr(client)


@pytest_twisted.ensureDeferred
async def test_a_failing_endpoint_is_retried_as_configured_then_reported() -> None:
    overloaded = _Overloaded()
    listener = _reactor().listenTCP(0, Site(overloaded), interface="127.0.0.1")
    url = f"http://127.0.0.1:{listener.getHost().port}"
    client = _odd_client(url, retries=1)
    try:
        with pytest.raises(AWSError) as error:
            await client.find_instances("anything")
    finally:
        await client.close()
        await listener.stopListening()
    assert overloaded.requests == 2
    assert str(error.value) == "EC2 DescribeInstances failed: 503: Service Unavailable"


@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_refuses_connections(garbage_url: str) -> None:
    listener_gone = garbage_url.rsplit(":", 1)[0] + ":1"
    client = _odd_client(listener_gone)
    try:
        with pytest.raises(AWSError) as error:
            await client.stop("i-1")
    finally:
        await client.close()
    assert str(error.value) == f"EC2 StopInstances failed: could not connect to {listener_gone}"


@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_never_answers_times_out(silent_url: str) -> None:
    client = _odd_client(silent_url, timeout=0.3)
    try:
        with pytest.raises(AWSError) as error:
            await client.terminate("i-1")
    finally:
        await client.close()
    assert str(error.value) == f"EC2 TerminateInstances failed: {silent_url} did not answer within 0.3s"


@pytest_twisted.ensureDeferred
async def test_the_outer_deadline_bounds_every_call(silent_url: str) -> None:
    client = _odd_client(silent_url, timeout=1, deadline=0.2)
    try:
        with pytest.raises(AWSError) as error:
            await client.describe_instance("i-1")
    finally:
        await client.close()
    assert str(error.value) == "EC2 DescribeInstances failed: no answer within 0.2s"


@pytest_twisted.ensureDeferred
async def test_half_configured_credentials_are_refused(moto_url: str) -> None:
    client = AWSClient(_reactor(), AWSConfig(region=REGION, endpoint_url=moto_url), Secret(KEY_ID), None)
    try:
        with pytest.raises(AWSError) as error:
            await client.find_instances("anything")
    finally:
        await client.close()
    assert str(error.value) == (
        "EC2 not attempted: the credentials file has only one of aws_access_key_id and aws_secret_access_key"
    )


def test_the_default_deadline_covers_every_attempt_and_backoff() -> None:
    client = AWSClient(_reactor(), AWSConfig(timeout=30, retries=3), None, None)
    try:
        assert client.deadline == 4 * 60 + 3 * 20 + 5
    finally:
        client._pool.stop()
