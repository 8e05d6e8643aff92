"""
AWS client: EC2 instances through boto3, run in a bounded thread pool.

boto3 blocks, so every EC2 call runs in a thread pool of C{[aws] threads}
threads of our own (never the reactor's), and the reactor only awaits a
Deferred. Each call is bounded three ways: botocore's connect and read
timeouts (C{[aws] timeout}), its retries (C{[aws] retries} more attempts in
"standard" mode, with backoff), and an outer deadline covering all of that,
after which we stop waiting (the thread finishes on its own).

Everything that can go wrong becomes one L{AWSError} whose message is a
single line naming the EC2 operation: C{ClientError}s quote AWS's error code
and message (C{InvalidInstanceID.NotFound: The instance ID 'i-1' does not
exist}); an endpoint answering something that is not an EC2 response (moto
answers some conflicts with an HTML 500 page, which botocore raises as
C{ResponseParserError}) says so; unreachable endpoints, timeouts and missing
credentials each have their own sentence. Credentials come from the
credentials file (C{aws_access_key_id}, C{aws_secret_access_key}) or boto3's
standard chain; they are revealed only to build the boto3 session and are
scrubbed from any message that might echo them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from slaveapi.clients._bounded import poll_until, within
from slaveapi.clients._errors import ClientError, ClientTimeout
from slaveapi.config import AWSConfig, Secret
from slaveapi.interfaces import IAWS

T = TypeVar("T")

#: Every state an instance can be in but terminated.
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")

#: States from which an instance will not reach the wanted one by itself.
_DEAD_ENDS = {
    "running": ("shutting-down", "terminated"),
    "stopped": ("shutting-down", "terminated"),
    "terminated": (),
}

#: botocore's longest backoff between two attempts in "standard" mode.
_MAX_BACKOFF = 20.0

#: The most characters of an AWS error message we quote.
_MAX_MESSAGE = 300


class AWSError(ClientError):
    """
    An EC2 call failed; C{str()} is one line saying which and why, with no secret in it.

    @ivar operation: the EC2 operation, e.g. C{"RunInstances"}.
    @ivar code: AWS's error code (C{"InvalidInstanceID.NotFound"}) when AWS
        answered with one, else C{None}.
    """

    def __init__(self, message: str, operation: str, code: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.operation = operation
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


class AWSTimeout(AWSError, ClientTimeout):
    """An EC2 call got no answer in time, or an instance did not reach the wanted state in time."""


@dataclass(frozen=True)
class Instance:
    """
    One EC2 instance, as DescribeInstances shows it.

    @ivar state: C{pending}, C{running}, C{shutting-down}, C{terminated},
        C{stopping} or C{stopped}.
    @ivar private_ip: its primary private IPv4 address, if it has one.
    @ivar tags: its tags, key to value.
    """

    instance_id: str
    state: str
    private_ip: str | None
    instance_type: str
    subnet_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str | None:
        """Its C{Name} tag."""
        return self.tags.get("Name")


@dataclass(frozen=True)
class SubnetUsage:
    """
    A subnet and the private addresses already taken in it.

    @ivar cidr: the subnet's IPv4 CIDR block, e.g. C{"10.132.50.0/24"}.
    @ivar used: addresses held by an instance (in any state: a terminated
        instance may keep its address for a while) or a network interface.
    """

    subnet_id: str
    cidr: str
    used: frozenset[str]


@dataclass(frozen=True)
class LaunchSpec:
    """
    What to launch: one instance, from an AMI or a launch template or both.

    @ivar launch_template: a launch template's name, or its id (C{lt-...}).
    @ivar image_id: the AMI; with a launch template it overrides the template's.
    @ivar instance_type: sent only when there is no launch template (the
        template's type wins otherwise).
    @ivar tags: put on the instance as it is created.
    """

    subnet_id: str
    private_ip: str
    tags: Mapping[str, str]
    image_id: str | None = None
    launch_template: str | None = None
    instance_type: str | None = None
    key_name: str | None = None
    #: Makes the launch idempotent: a retried RunInstances cannot launch twice.
    client_token: str | None = None


@implementer(IAWS)
class AWSClient:
    """
    EC2 through boto3, every call in a bounded thread pool with a deadline.

    @param reactor: the deadlines and polls run on it.
    @param config: C{[aws]}: region, endpoint, timeouts, retries, threads,
        poll interval and state timeout.
    @param access_key_id: from the credentials file; with C{secret_access_key}.
        Neither means boto3's standard chain (environment, profile, instance role).
    @param deadline: the outer bound of one call in seconds; by default
        long enough for every attempt botocore makes and its backoffs.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: AWSConfig,
        access_key_id: Secret | None,
        secret_access_key: Secret | None,
        *,
        deadline: float | None = None,
    ) -> None:
        self._reactor = reactor
        self.config = config
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        if deadline is None:
            deadline = (config.retries + 1) * 2 * config.timeout + config.retries * _MAX_BACKOFF + 5
        self.deadline = deadline
        self._pool = ThreadPool(minthreads=0, maxthreads=config.threads, name="slaveapi-aws")
        self._pool.start()
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._closed = False
        self._closing: defer.Deferred[None] | None = None
        #: Private addresses picked for instances being created right now, so
        #: that two creations at once do not pick the same one.
        self.claimed_ips: set[str] = set()

    def __repr__(self) -> str:
        return f"<AWSClient region={self.config.region!r} endpoint={self.config.endpoint_url!r}>"

    # --- the calls --------------------------------------------------------------

    async def find_instances(self, name: str) -> list[Instance]:
        """
        The instances not terminated whose C{Name} tag is C{name}'s first label.

        When C{name} is a fully qualified name, instances whose C{FQDN} tag
        names another host are left out (those without the tag stay in).
        """
        short = name.split(".", 1)[0]
        filters = [
            {"Name": "tag:Name", "Values": [short]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]

        def work(ec2: Any) -> list[Instance]:
            return _instances(_paginate(ec2, "describe_instances", "Reservations", Filters=filters))

        found = await self._call("DescribeInstances", work)
        if "." in name:
            wanted = name.rstrip(".").lower()
            found = [i for i in found if i.tags.get("FQDN", wanted).rstrip(".").lower() == wanted]
        return found

    async def describe_instance(self, instance_id: str) -> Instance:
        """
        One instance by id.

        @raise AWSError: with code C{InvalidInstanceID.NotFound} when EC2 does not know it.
        """

        def work(ec2: Any) -> list[Instance]:
            return _instances(ec2.describe_instances(InstanceIds=[instance_id]).get("Reservations", []))

        found = await self._call("DescribeInstances", work)
        for instance in found:
            if instance.instance_id == instance_id:
                return instance
        raise AWSError(
            f"EC2 DescribeInstances failed: InvalidInstanceID.NotFound: the instance ID '{instance_id}' "
            "is not in the answer",
            "DescribeInstances",
            "InvalidInstanceID.NotFound",
        )

    async def start(self, instance_id: str) -> str:
        """Ask EC2 to start the instance; returns the state it answered (e.g. C{pending})."""
        return await self._state_change("StartInstances", "start_instances", "StartingInstances", instance_id)

    async def stop(self, instance_id: str) -> str:
        """Ask EC2 to stop the instance; returns the state it answered (e.g. C{stopping})."""
        return await self._state_change("StopInstances", "stop_instances", "StoppingInstances", instance_id)

    async def terminate(self, instance_id: str) -> str:
        """Ask EC2 to terminate the instance; returns the state it answered (e.g. C{shutting-down})."""
        return await self._state_change(
            "TerminateInstances", "terminate_instances", "TerminatingInstances", instance_id
        )

    async def _state_change(self, operation: str, method: str, key: str, instance_id: str) -> str:
        def work(ec2: Any) -> str:
            answer = getattr(ec2, method)(InstanceIds=[instance_id])
            for change in answer.get(key, []):
                if change.get("InstanceId") == instance_id:
                    return str(change["CurrentState"]["Name"])
            raise _Malformed(f"no state change for {instance_id} in the answer")

        state = await self._call(operation, work)
        self._log.info(
            "EC2 {operation} {instance_id}: {state}", operation=operation, instance_id=instance_id, state=state
        )
        return state

    async def wait_for_state(
        self,
        instance_id: str,
        target: str,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> Instance:
        """
        Poll the instance until its state is C{target}; return it then.

        An instance EC2 does not know yet (it may take a moment to show up
        after launching) is polled for like one in another state.

        @param timeout: seconds before giving up; C{[aws] state_timeout} by default.
        @param poll_interval: seconds between looks; C{[aws] poll_interval} by default.
        @raise AWSTimeout: still not there after C{timeout} seconds.
        @raise AWSError: the instance went into a state it will not leave for
            C{target} (e.g. C{terminated} while waiting for C{running}), or a call failed.
        """
        timeout = self.config.state_timeout if timeout is None else timeout
        poll_interval = self.config.poll_interval if poll_interval is None else poll_interval
        state = "unknown"

        async def arrived() -> Instance | None:
            nonlocal state
            try:
                instance = await self.describe_instance(instance_id)
            except AWSError as error:
                if error.code != "InvalidInstanceID.NotFound":
                    raise
                return None
            state = instance.state
            if state in _DEAD_ENDS.get(target, ()):
                raise AWSError(f"instance {instance_id} is {state}; it will not become {target}", "DescribeInstances")
            return instance if state == target else None

        def late() -> AWSTimeout:
            return AWSTimeout(
                f"instance {instance_id} is still {state} after {timeout:g}s; expected {target}", "DescribeInstances"
            )

        what = f"EC2 instance {instance_id} to be {target}"
        return await poll_until(self._reactor, arrived, poll_interval, timeout, what, timeout_error=late)

    async def subnet_usage(self, subnet_id: str) -> SubnetUsage:
        """The subnet's CIDR block and every private address in use in it."""
        by_subnet = [{"Name": "subnet-id", "Values": [subnet_id]}]

        def work(ec2: Any) -> SubnetUsage:
            subnets = ec2.describe_subnets(SubnetIds=[subnet_id]).get("Subnets", [])
            if not subnets or "CidrBlock" not in subnets[0]:
                raise _Malformed(f"no CIDR block for {subnet_id} in the answer")
            used: set[str] = set()
            for interface in _paginate(ec2, "describe_network_interfaces", "NetworkInterfaces", Filters=by_subnet):
                used.update(_interface_addresses(interface))
            for reservation in _paginate(ec2, "describe_instances", "Reservations", Filters=by_subnet):
                for instance in reservation.get("Instances", []):
                    if instance.get("PrivateIpAddress"):
                        used.add(instance["PrivateIpAddress"])
                    for interface in instance.get("NetworkInterfaces", []):
                        used.update(_interface_addresses(interface))
            return SubnetUsage(subnet_id=subnet_id, cidr=str(subnets[0]["CidrBlock"]), used=frozenset(used))

        return await self._call("DescribeSubnets", work)

    async def run_instance(self, spec: LaunchSpec) -> Instance:
        """
        Launch one instance as C{spec} says, tagged as it is created.

        @raise AWSError: EC2 refused (the message quotes its code), or neither
            an AMI nor a launch template was given.
        """
        if not spec.image_id and not spec.launch_template:
            raise AWSError("EC2 RunInstances not attempted: no AMI and no launch template", "RunInstances")
        arguments: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "SubnetId": spec.subnet_id,
            "PrivateIpAddress": spec.private_ip,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in spec.tags.items()]}
            ],
        }
        if spec.image_id:
            arguments["ImageId"] = spec.image_id
        if spec.launch_template:
            kind = "LaunchTemplateId" if spec.launch_template.startswith("lt-") else "LaunchTemplateName"
            arguments["LaunchTemplate"] = {kind: spec.launch_template}
        elif spec.instance_type:
            arguments["InstanceType"] = spec.instance_type
        if spec.key_name:
            arguments["KeyName"] = spec.key_name
        if spec.client_token:
            arguments["ClientToken"] = spec.client_token[:64]

        def work(ec2: Any) -> Instance:
            answer = ec2.run_instances(**arguments)
            instances = _instances([answer])
            if not instances:
                raise _Malformed("no instance in the answer")
            return instances[0]

        instance = await self._call("RunInstances", work)
        self._log.info(
            "EC2 launched {instance_id} at {ip} ({name})",
            instance_id=instance.instance_id,
            ip=instance.private_ip,
            name=instance.name,
        )
        return instance

    # --- plumbing ----------------------------------------------------------------

    async def _call(self, operation: str, work: Callable[[Any], T]) -> T:
        """Run C{work(ec2 client)} in the pool, bounded by the deadline; errors become L{AWSError}."""
        if self._closed:
            raise AWSError(f"EC2 {operation} not attempted: the AWS client is closed", operation)
        started = time.monotonic()
        call: defer.Deferred[T] = deferToThreadPool(self._reactor, self._pool, self._in_thread, operation, work)

        def late() -> AWSTimeout:
            return AWSTimeout(f"EC2 {operation} failed: no answer within {self.deadline:g}s", operation)

        try:
            result = await within(self._reactor, self.deadline, call, f"EC2 {operation}", timeout_error=late)
        except AWSTimeout:
            self._log.warn("EC2 {operation} got no answer in {deadline}s", operation=operation, deadline=self.deadline)
            raise
        self._log.debug(
            "EC2 {operation} answered in {elapsed:.3f}s", operation=operation, elapsed=time.monotonic() - started
        )
        return result

    def _in_thread(self, operation: str, work: Callable[[Any], T]) -> T:
        """In a pool thread: the call itself, and the translation of its errors."""
        try:
            return work(self._ec2())
        except AWSError:
            raise
        except Exception as error:
            raise self._translate(operation, error) from None

    def _ec2(self) -> Any:
        """The boto3 EC2 client of the configured region, made on first use (in a pool thread)."""
        region = self.config.region
        with self._clients_lock:
            client = self._clients.get(region)
            if client is None:
                client = self._make_client(region)
                self._clients[region] = client
            return client

    def _make_client(self, region: str) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        if (self._access_key_id is None) != (self._secret_access_key is None):
            raise AWSError(
                "EC2 not attempted: the credentials file has only one of aws_access_key_id and "
                "aws_secret_access_key",
                "",
            )
        if self._access_key_id is not None and self._secret_access_key is not None:
            session = boto3.session.Session(
                aws_access_key_id=self._access_key_id.reveal(),
                aws_secret_access_key=self._secret_access_key.reveal(),
                region_name=region,
            )
        else:
            session = boto3.session.Session(region_name=region)
        boto_config = BotoConfig(
            connect_timeout=self.config.timeout,
            read_timeout=self.config.timeout,
            # botocore's "max_attempts" counts retries only; "total_max_attempts" counts the first try too.
            retries={"total_max_attempts": self.config.retries + 1, "mode": "standard"},
        )
        return session.client("ec2", endpoint_url=self.config.endpoint_url, config=boto_config)

    def _translate(self, operation: str, error: Exception) -> AWSError:
        """One L{AWSError} for whatever boto3 raised, with any credential scrubbed."""
        from botocore import exceptions as boto
        from botocore.parsers import ResponseParserError

        code = None
        if isinstance(error, boto.ClientError):
            details = error.response.get("Error", {}) if isinstance(error.response, dict) else {}
            code = str(details.get("Code") or "Unknown")
            message = str(details.get("Message") or "no message")[:_MAX_MESSAGE]
            operation = getattr(error, "operation_name", None) or operation
            text = f"EC2 {operation} failed: {code}: {message}"
        elif isinstance(error, ResponseParserError):
            kind = "an HTML page" if "<html" in str(error).lower() else "something unreadable"
            text = (
                f"EC2 {operation} failed: the endpoint answered {kind} instead of an EC2 response "
                "(the endpoint failed or is not EC2)"
            )
        elif isinstance(error, boto.EndpointConnectionError):
            text = f"EC2 {operation} failed: could not connect to {self._endpoint_text()}"
        elif isinstance(error, (boto.ConnectTimeoutError, boto.ReadTimeoutError)):
            text = f"EC2 {operation} failed: {self._endpoint_text()} did not answer within {self.config.timeout:g}s"
        elif isinstance(error, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            text = (
                f"EC2 {operation} not attempted: no AWS credentials (set aws_access_key_id and "
                "aws_secret_access_key in the credentials file, or configure boto3's standard chain)"
            )
        elif isinstance(error, _Malformed):
            text = f"EC2 {operation} failed: unexpected answer: {error}"
        elif isinstance(error, boto.BotoCoreError):
            text = f"EC2 {operation} failed: {type(error).__name__}: {_first_line(error)}"
        else:
            self._log.failure("EC2 {operation} raised an unexpected error", operation=operation)
            text = f"EC2 {operation} failed: {type(error).__name__}: {_first_line(error)}"
        return AWSError(self._scrub(text), operation, code)

    def _endpoint_text(self) -> str:
        return self.config.endpoint_url or f"EC2 in {self.config.region}"

    def _scrub(self, text: str) -> str:
        """C{text} with any configured credential replaced by asterisks."""
        for secret in (self._secret_access_key, self._access_key_id):
            if secret is not None and secret.reveal():
                text = text.replace(secret.reveal(), "********")
        return text

    async def close(self) -> None:
        """Stop the thread pool (waiting, off the reactor, for calls in flight) and the boto3 clients."""
        if self._closing is None:
            self._closed = True
            self._closing = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._shut_down)
        await self._closing

    def _shut_down(self) -> None:
        self._pool.stop()
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class _Malformed(Exception):
    """EC2 answered, but not with what the operation promises."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:_MAX_MESSAGE] if lines else ""


def _paginate(ec2: Any, method: str, key: str, **arguments: Any) -> Iterable[Any]:
    """Every item under C{key} of every page of C{method}."""
    for page in ec2.get_paginator(method).paginate(**arguments):
        yield from page.get(key, [])


def _interface_addresses(interface: Mapping[str, Any]) -> set[str]:
    found = set()
    if interface.get("PrivateIpAddress"):
        found.add(str(interface["PrivateIpAddress"]))
    for address in interface.get("PrivateIpAddresses", []):
        if address.get("PrivateIpAddress"):
            found.add(str(address["PrivateIpAddress"]))
    return found


def _instances(reservations: Iterable[Mapping[str, Any]]) -> list[Instance]:
    """The instances of DescribeInstances reservations (or of one RunInstances answer)."""
    found = []
    for reservation in reservations:
        for data in reservation.get("Instances", []):
            try:
                found.append(
                    Instance(
                        instance_id=str(data["InstanceId"]),
                        state=str(data["State"]["Name"]),
                        private_ip=data.get("PrivateIpAddress"),
                        instance_type=str(data.get("InstanceType", "")),
                        subnet_id=data.get("SubnetId"),
                        tags=MappingProxyType({str(t["Key"]): str(t["Value"]) for t in data.get("Tags", [])}),
                    )
                )
            except (KeyError, TypeError) as error:
                raise _Malformed(f"an instance without {error}") from None
    return found
