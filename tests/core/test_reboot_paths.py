"""
The reboot escalation's decisions, with every remote system faked: what the
lab cannot stage (a reboot faster than the probe's polls, a probe that cannot
run, a caller that asks for no bug).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted

from slaveapi.actions import ActionFailure, ActionLog, ActionRun
from slaveapi.actions.reboot import reboot
from slaveapi.clients.dns import HostInfo
from slaveapi.clients.probe import RebootWait
from slaveapi.clients.ssh import CommandResult
from slaveapi.config import AWSConfig, ProbeConfig, RebootConfig, SlavesConfig
from twisted.logger import Logger

from fake_fleet import FakeSlavealloc


async def _none(*args: Any, **kwargs: Any) -> None:
    return None


class _Session:
    def __init__(self, uptime: str) -> None:
        self._uptime = uptime
        self.commands: list[str] = []

    async def run(self, command: str, **kwargs: Any) -> CommandResult:
        self.commands.append(command)
        if command == "cat /proc/uptime":
            return CommandResult(0, self._uptime, "")
        return CommandResult(0, "", "")

    def close(self) -> None:
        pass


def _run(prober: Any, session: _Session, bugzilla: Any) -> tuple[ActionRun, list[str]]:
    from twisted.internet import reactor

    host = HostInfo("bld-1", "bld-1.example.test", "example.test", "127.0.9.1", None)

    async def lookup_host(name: str) -> HostInfo | None:
        return host if name.startswith("bld-1") else None

    async def open_session(address: str, **kwargs: Any) -> _Session:
        return session

    async def no_jobs(name: str, count: int = 10) -> list[Any]:
        return []

    clients = SimpleNamespace(
        dns=SimpleNamespace(lookup_host=lookup_host, ipmi_name=_none, qualify=lambda name: name + ".example.test"),
        slavealloc=FakeSlavealloc(("bld-1",)),
        devices=SimpleNamespace(get_device=_none),
        inventory=SimpleNamespace(get_system=_none),
        buildapi=SimpleNamespace(recent_jobs=no_jobs),
        bugzilla=bugzilla,
        prober=prober,
        ssh=SimpleNamespace(session=open_session),
    )
    config = SimpleNamespace(
        probes=ProbeConfig(up_timeout=1), reboot=RebootConfig(), slaves=SlavesConfig("example.test"), aws=AWSConfig()
    )
    ctx = SimpleNamespace(clients=clients, config=config, reactor=reactor)
    shown: list[str] = []
    log = ActionLog(Logger(), "bld-1", 1, "reboot")
    return ActionRun(ctx, "bld-1", 1, "reboot", log, shown.append), shown  # type: ignore[arg-type]


class _Prober:
    """Says the machine is up, and that a reboot never took it down."""

    def __init__(self, alive_error: Exception | None = None) -> None:
        self._alive_error = alive_error

    async def alive(self, host: str) -> bool:
        if self._alive_error is not None:
            raise self._alive_error
        return True

    async def wait_for_reboot(self, host: str, progress: Any = None) -> RebootWait:
        return RebootWait(went_down=False, came_back=False, waited=30.0)

    async def wait_for(self, host: str, up: bool, limit: float) -> bool:
        return False


def _untouchable_bugzilla() -> Any:
    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Bugzilla must not be called")

    return SimpleNamespace(get_bug=_none, search=refuse, create_bug=refuse, add_comment=refuse, update_bug=refuse)


@pytest_twisted.ensureDeferred
async def test_a_reboot_too_fast_for_the_probe_is_seen_in_the_uptime() -> None:
    session = _Session("12.5 3.0\n")
    run, _ = _run(_Prober(), session, _untouchable_bugzilla())
    assert await reboot(run) == "Attempting SSH reboot...Success!"
    assert session.commands[0] == "reboot"


@pytest_twisted.ensureDeferred
async def test_a_machine_that_did_not_reboot_escalates_and_asks_for_no_bug_when_told_not_to() -> None:
    session = _Session("86400.0 1.0\n")
    run, shown = _run(_Prober(), session, _untouchable_bugzilla())
    with pytest.raises(ActionFailure) as failed:
        await reboot(run, update_bug=False)
    assert failed.value.payload.split("\n") == [
        "Attempting SSH reboot...Failed (it never went down).",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Skipping IPMI reboot: no -mgmt interface in DNS.",
        "Skipping PDU reboot: no PDU outlet in inventory.",
        "All reboot methods failed; not filing a bug, as asked.",
    ]
    assert "Attempting SSH reboot...initiated, waiting for it to come back..." in shown[1]


@pytest_twisted.ensureDeferred
async def test_a_probe_that_cannot_run_skips_ssh_with_the_reason() -> None:
    run, _ = _run(_Prober(RuntimeError("no ping command found")), _Session("1 1"), _untouchable_bugzilla())
    with pytest.raises(ActionFailure) as failed:
        await reboot(run, update_bug=False)
    assert failed.value.payload.split("\n")[0] == "Skipping SSH reboot: cannot probe the machine: no ping command found."
