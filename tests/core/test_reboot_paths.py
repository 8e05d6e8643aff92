"""
The reboot escalation's decisions, with every remote system faked: what the
lab cannot stage (a reboot faster than the probe's polls, a probe that cannot
run, a caller that asks for no bug).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import pytest
import pytest_twisted

from slaveapi.actions import ActionFailure, ActionLog, ActionRun
from slaveapi.actions.reboot import BUSY_PAUSE, BUSY_TRIES, reboot
from slaveapi.clients.dns import HostInfo
from slaveapi.clients.probe import RebootWait
from slaveapi.clients.ssh import CommandResult, SSHBusy
from slaveapi.config import AWSConfig, ProbeConfig, RebootConfig, SlavesConfig
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
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


def _run(
    prober: Any, session: _Session, bugzilla: Any, clock: Any = None, **overrides: Any
) -> tuple[ActionRun, list[str]]:
    """
    A reboot run of C{bld-1} on fakes; C{overrides} replace clients by name,
    C{clock} (default the reactor) is the context's reactor.
    """
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
    for name, client in overrides.items():
        setattr(clients, name, client)
    config = SimpleNamespace(
        probes=ProbeConfig(up_timeout=1), reboot=RebootConfig(), slaves=SlavesConfig("example.test"), aws=AWSConfig()
    )
    ctx = SimpleNamespace(clients=clients, config=config, reactor=clock or reactor)
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


class _PowerControl:
    """
    Mozpool, IPMI and a PDU that would all apply to bld-1 (an imaging server
    and an outlet in inventory, a -mgmt name whose BMC answers); C{calls}
    lists every power control asked of them.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def clients(self) -> dict[str, Any]:
        async def get_system(fqdn: str) -> Any:
            return SimpleNamespace(pdu="pdu1.example.test:AA1", imaging_server="mobile-imaging-001.example.test")

        async def ipmi_name(name: str) -> str:
            return f"{name}-mgmt.example.test"

        async def available(address: str) -> bool:
            return True

        def record(what: str) -> Any:
            async def call(*args: Any, **kwargs: Any) -> None:
                self.calls.append(what)

            return call

        host = HostInfo("bld-1", "bld-1.example.test", "example.test", "127.0.9.1", None)

        async def lookup_host(name: str) -> HostInfo | None:
            return host if name.startswith("bld-1") else None

        return {
            "inventory": SimpleNamespace(get_system=get_system),
            "dns": SimpleNamespace(lookup_host=lookup_host, ipmi_name=ipmi_name, qualify=lambda n: n + ".example.test"),
            "mozpool": SimpleNamespace(power_cycle=record("mozpool")),
            "ipmi": SimpleNamespace(available=available, powercycle=record("ipmi")),
            "pdu": SimpleNamespace(powercycle=record("pdu")),
        }


class _BusySSH:
    """
    An SSH client whose places to the machine may all be taken: the calls
    (counted from 1) for which C{busy} is true fail with L{SSHBusy}, the
    others get C{session}. C{asked} counts the calls.
    """

    def __init__(self, session: _Session, busy: Callable[[int], bool]) -> None:
        self._session = session
        self._busy = busy
        self.asked = 0

    async def session(self, address: str, **kwargs: Any) -> _Session:
        self.asked += 1
        if self._busy(self.asked):
            raise SSHBusy(
                f"ssh {address}:22: no SSH session came free within 30s"
                " (2 already open to this host, the [ssh] per_host limit)"
            )
        return self._session


async def _failure_after_the_busy_waits(clock: Clock, action: Deferred[Any]) -> str:
    """Let the pauses between busy tries pass on C{clock}; the action's failure text."""
    for _ in range(BUSY_TRIES - 1):
        assert not action.called
        clock.advance(BUSY_PAUSE)
    assert action.called
    with pytest.raises(ActionFailure) as failed:
        await action
    return str(failed.value.payload)


@pytest_twisted.ensureDeferred
async def test_busy_ssh_is_retried_then_stops_the_reboot_without_power_control() -> None:
    clock, power = Clock(), _PowerControl()
    ssh = _BusySSH(_Session("1 1"), busy=lambda call: True)
    run, _ = _run(_Prober(), _Session("1 1"), _untouchable_bugzilla(), clock, ssh=ssh, **power.clients())

    text = await _failure_after_the_busy_waits(clock, ensureDeferred(reboot(run)))

    assert ssh.asked == BUSY_TRIES
    assert power.calls == []
    assert text.split("\n") == [
        (
            "Attempting SSH reboot...Stopped while logging in to send the reboot command (ssh 127.0.9.1:22: no SSH"
            " session came free within 30s (2 already open to this host, the [ssh] per_host limit))."
        ),
        (
            "bld-1 answers, but SSH to it stayed busy after 3 tries: no power control was used (Mozpool, IPMI and the"
            " PDU were not tried) and no bug was filed."
        ),
    ]


@pytest_twisted.ensureDeferred
async def test_busy_ssh_after_the_reboot_command_is_not_taken_for_a_machine_that_never_went_down() -> None:
    # The reboot command was accepted, the probe never saw the machine down, and the
    # uptime cannot be read because SSH to it is busy: not known, so no power control.
    clock, power = Clock(), _PowerControl()
    session = _Session("86400.0 1.0\n")
    ssh = _BusySSH(session, busy=lambda call: call > 1)
    run, _ = _run(_Prober(), session, _untouchable_bugzilla(), clock, ssh=ssh, **power.clients())

    text = await _failure_after_the_busy_waits(clock, ensureDeferred(reboot(run)))

    assert session.commands == ["reboot"]
    assert ssh.asked == 1 + BUSY_TRIES
    assert power.calls == []
    lines = text.split("\n")
    assert lines[0].startswith(
        "Attempting SSH reboot...initiated, then stopped while checking its uptime after the reboot command (ssh "
    )
    assert lines[1:] == [
        (
            "bld-1 answers, but SSH to it stayed busy after 3 tries: no power control was used (Mozpool, IPMI and the"
            " PDU were not tried) and no bug was filed."
        )
    ]


@pytest_twisted.ensureDeferred
async def test_ssh_busy_for_a_while_is_waited_for_and_the_ssh_reboot_goes_ahead() -> None:
    clock, power = Clock(), _PowerControl()
    session = _Session("12.5 3.0\n")
    ssh = _BusySSH(session, busy=lambda call: call == 1)
    run, _ = _run(_Prober(), session, _untouchable_bugzilla(), clock, ssh=ssh, **power.clients())
    action = ensureDeferred(reboot(run))
    assert not action.called
    clock.advance(BUSY_PAUSE)
    assert await action == "Attempting SSH reboot...Success!"
    assert ssh.asked == 3  # busy, then the reboot command, then the uptime
    assert session.commands[0] == "reboot" and power.calls == []
