"""
An in-memory EC2: instances by id, whose state changes take effect at once;
L{FakeAWS.wait_for_state} polls on the reactor like the real client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from twisted.internet.task import deferLater
from zope.interface import implementer

from slaveapi.clients.aws import (
    LIVE_STATES,
    AWSError,
    AWSTimeout,
    Instance,
    LaunchSpec,
    SubnetUsage,
)
from slaveapi.interfaces import IAWS

#: What EC2 answers a state change with, and the state the instance ends in.
_CHANGES = MappingProxyType(
    {"start": ("pending", "running"), "stop": ("stopping", "stopped"), "terminate": ("shutting-down", "terminated")}
)


@implementer(IAWS)
class FakeAWS:
    """
    EC2 as C{instances} (by id) and C{subnets} (by id) say; C{errors} makes
    the operation named (C{"RunInstances"}, C{"TerminateInstances"}, ...) fail.

    @ivar calls: C{(operation, argument)} for every call.
    """

    def __init__(self, reactor: Any, subnets: Mapping[str, SubnetUsage] | None = None) -> None:
        self._reactor = reactor
        self.instances: dict[str, Instance] = {}
        self.subnets = dict(subnets or {})
        self.errors: dict[str, AWSError] = {}
        self.calls: list[tuple[str, str]] = []
        self.claimed_ips: set[str] = set()
        self.closed = False

    def _call(self, operation: str, argument: str) -> None:
        self.calls.append((operation, argument))
        if operation in self.errors:
            raise self.errors[operation]

    def add_instance(self, name: str, state: str = "running", **fields: Any) -> Instance:
        """Put an instance named C{name} in; returns it."""
        instance = Instance(
            instance_id=fields.pop("instance_id", f"i-{len(self.instances) + 1:017x}"),
            state=state,
            private_ip=fields.pop("private_ip", None),
            instance_type=fields.pop("instance_type", "m5.large"),
            subnet_id=fields.pop("subnet_id", None),
            tags={"Name": name, **fields.pop("tags", {})},
        )
        if fields:
            raise TypeError(f"unknown instance fields: {', '.join(fields)}")
        self.instances[instance.instance_id] = instance
        return instance

    async def find_instances(self, name: str) -> list[Instance]:
        self._call("DescribeInstances", name)
        short = name.split(".", 1)[0]
        found = [i for i in self.instances.values() if i.tags.get("Name") == short and i.state in LIVE_STATES]
        if "." in name:
            wanted = name.rstrip(".").lower()
            found = [i for i in found if i.tags.get("FQDN", wanted).rstrip(".").lower() == wanted]
        return found

    async def _change(self, verb: str, operation: str, instance_id: str) -> str:
        self._call(operation, instance_id)
        if instance_id not in self.instances:
            raise AWSError(
                f"EC2 {operation} failed: InvalidInstanceID.NotFound", operation, "InvalidInstanceID.NotFound"
            )
        answered, final = _CHANGES[verb]
        self.instances[instance_id] = dataclasses.replace(self.instances[instance_id], state=final)
        return answered

    async def start(self, instance_id: str) -> str:
        return await self._change("start", "StartInstances", instance_id)

    async def stop(self, instance_id: str) -> str:
        return await self._change("stop", "StopInstances", instance_id)

    async def terminate(self, instance_id: str) -> str:
        return await self._change("terminate", "TerminateInstances", instance_id)

    async def wait_for_state(
        self, instance_id: str, target: str, *, timeout: float | None = None, poll_interval: float | None = None
    ) -> Instance:
        timeout = 600.0 if timeout is None else timeout
        give_up = self._reactor.seconds() + timeout
        while True:
            self._call("DescribeInstances", instance_id)
            instance = self.instances.get(instance_id)
            if instance is not None and instance.state == target:
                return instance
            if self._reactor.seconds() >= give_up:
                state = instance.state if instance is not None else "unknown"
                raise AWSTimeout(
                    f"instance {instance_id} is still {state} after {timeout:g}s; expected {target}",
                    "DescribeInstances",
                )
            await deferLater(self._reactor, 5.0 if poll_interval is None else poll_interval, lambda: None)

    async def subnet_usage(self, subnet_id: str) -> SubnetUsage:
        self._call("DescribeSubnets", subnet_id)
        if subnet_id not in self.subnets:
            raise AWSError(f"EC2 DescribeSubnets failed: no subnet {subnet_id}", "DescribeSubnets")
        return self.subnets[subnet_id]

    async def run_instance(self, spec: LaunchSpec) -> Instance:
        self._call("RunInstances", spec.tags.get("Name", ""))
        fields = dict(spec.tags)
        name = fields.pop("Name", "")
        return self.add_instance(
            name,
            private_ip=spec.private_ip,
            subnet_id=spec.subnet_id,
            instance_type=spec.instance_type or "m5.large",
            tags=fields,
        )

    async def close(self) -> None:
        self.closed = True
