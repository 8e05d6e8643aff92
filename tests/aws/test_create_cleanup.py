"""aws_create_instance's clean-up when the launch's answer never came."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest_twisted
from twisted.logger import Logger

from slaveapi.actions import ActionLog, ActionRun
from slaveapi.actions.aws import _Creation


@pytest_twisted.ensureDeferred
async def test_an_unanswered_launch_is_found_by_name_and_terminated() -> None:
    terminated: list[str] = []
    looked_up: list[str] = []

    async def find_instances(name: str) -> list[Any]:
        looked_up.append(name)
        return [SimpleNamespace(instance_id="i-0123")]

    async def terminate(instance_id: str) -> str:
        terminated.append(instance_id)
        return "shutting-down"

    clients = SimpleNamespace(aws=SimpleNamespace(find_instances=find_instances, terminate=terminate))
    ctx = SimpleNamespace(clients=clients)
    shown: list[str] = []
    run = ActionRun(ctx, "default", 7, "aws_create_instance", ActionLog(Logger(), "default", 7, "x"), shown.append)  # type: ignore[arg-type]  # a two-method fake context
    creation = _Creation(run)
    creation.launching = "dev-linux64-ec2-jdoe"
    await creation.undo()
    assert looked_up == ["dev-linux64-ec2-jdoe"]
    assert terminated == ["i-0123"]
    assert creation.lines == ["Cleaning up: terminating i-0123...shutting-down."]
