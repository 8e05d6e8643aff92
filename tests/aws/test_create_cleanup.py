"""aws_create_instance's clean-up when the launch's answer never came."""

from __future__ import annotations

import pytest_twisted
from twisted.logger import Logger

from slaveapi.actions import ActionLog, ActionRun
from slaveapi.actions.aws import _Creation
from slaveapi.testing import make_fakes


@pytest_twisted.ensureDeferred
async def test_an_unanswered_launch_is_found_by_name_and_terminated() -> None:
    fakes = make_fakes()
    launched = fakes.aws.add_instance("dev-linux64-ec2-jdoe", state="pending", instance_id="i-0123")
    shown: list[str] = []
    log = ActionLog(Logger(), "default", 7, "aws_create_instance")
    run = ActionRun(fakes.context(), "default", 7, "aws_create_instance", log, shown.append)
    creation = _Creation(run)
    creation.launching = "dev-linux64-ec2-jdoe"
    await creation.undo()
    assert fakes.aws.calls == [
        ("DescribeInstances", "dev-linux64-ec2-jdoe"),
        ("TerminateInstances", launched.instance_id),
    ]
    assert fakes.aws.instances["i-0123"].state == "terminated"
    assert creation.lines == ["Cleaning up: terminating i-0123...shutting-down."]
