"""
shutdown_buildslave and disable end to end: POSTs over HTTP to SlaveAPI serving its lab
in this process, so the tests can also look at the lab (twistd.logs, slavealloc,
Bugzilla, the masters' shutdown requests) and prepare it between requests.

The lab's masters are Buildbot 0.8 web statuses (SlaveAPI's default flavour
"auto" finds that out); a lab buildbot running a command finishes it one
second after the shutdown request, then logs its shutdown.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet.defer import ensureDeferred

from slaveapi.lab.bugzilla import LabBug
from slaveapi.lab.buildbot import running_command
from slaveapi.lab.machines import LabMachine
from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

#: Long enough for any path in the lab (commands finish after 1 s, reboots take 1 s).
WAIT = "60"
REBOOT_BUG = ("Infrastructure & Operations", "DCOps")
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[+-]\d{4}) \[[^\]]*\] (.*)$")


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("shutdown")), slaves=15, boot_time=1.0)
    yield running
    await running.stop()


async def post(service: RunningService, slave: str, action: str, **fields: str) -> tuple[int, Any]:
    return await request_json(
        "POST", f"{service.url}/slaves/{slave}/actions/{action}", data={"waittime": WAIT, **fields}
    )


def stamp(line: str) -> str:
    """The timestamp a twistd.log line starts with."""
    match = _STAMP.match(line)
    assert match, line
    return match.group(1)


def moment(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp(line), "%Y-%m-%d %H:%M:%S%z")


def messages(lines: list[str]) -> list[str]:
    """The messages of timestamped lines (continuation lines dropped)."""
    return [match.group(2) for match in map(_STAMP.match, lines) if match]


def requests_for(service: RunningService, name: str) -> list[str]:
    return [request.master for request in service.lab.buildbots.requests if request.slave == name]


def confirmed(machine: LabMachine) -> str:
    return (
        "Waiting for the buildbot to shut down...Confirmed: it shut down gracefully on command from its master "
        f"at {stamp(machine.twistd_log[-1])}."
    )


def reboot_bugs(service: RunningService) -> list[LabBug]:
    return [bug for bug in service.lab.bugzilla.bugs.values() if (bug.product, bug.component) == REBOOT_BUG]


# --- shutdown_buildslave ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_idle_buildbot_shuts_down_gracefully_through_its_master(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("bld-linux64-lab-001")
    before = len(machine.twistd_log)
    asked_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    code, result = await post(lab_service, machine.name, "shutdown_buildslave")

    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == (
        "Requesting graceful shutdown from master bm01-build1...Accepted (Buildbot 0.8, HTTP 302).\n"
        + confirmed(machine)
    )
    assert requests_for(lab_service, machine.name) == ["bm01-build1"]
    added = machine.twistd_log[before:]
    assert messages(added) == [
        "worker shutting down on command from master",
        "Main loop terminated.",
        "Server Shut Down.",
    ]
    assert all(moment(line) >= asked_at for line in added)

    code, listing = await request_json("GET", f"{lab_service.url}/slaves/{machine.name}/actions/shutdown_buildslave")
    assert code == 200 and list(listing["shutdown_buildslave"]) == [str(result["requestid"])]

    # Its buildbot is stopped now: a second request leaves it, and the master, alone.
    code, again = await post(lab_service, machine.name, "shutdown_buildslave")
    assert (code, again["state"]) == (200, 2), again
    assert again["text"] == (
        f"Buildbot is not running (its twistd.log ends with 'Server Shut Down.' at {stamp(machine.twistd_log[-1])}),"
        " nothing to do!"
    )
    assert requests_for(lab_service, machine.name) == ["bm01-build1"]
    assert len(machine.twistd_log) == before + 3


@pytest_twisted.ensureDeferred
async def test_a_running_command_finishes_before_the_buildbot_shuts_down(lab_service: RunningService) -> None:
    # One 0.8 slave logging at -0800, one 4.x worker at +0000.
    for name, master, who in (
        ("tst-linux64-lab-002", "bm02-tests1", "slave"),
        ("tst-linux64-ec2-014", "bm04-build-aws", "worker"),
    ):
        machine = lab_service.lab.machine(name)
        running = running_command(machine.twistd_log)
        assert running is not None and machine.recent_jobs[0].endtime is None
        before = len(machine.twistd_log)
        asked_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

        code, result = await post(lab_service, name, "shutdown_buildslave")

        assert (code, result["state"]) == (200, 2), result
        assert result["text"] == (
            f"Requesting graceful shutdown from master {master}...Accepted (Buildbot 0.8, HTTP 302).\n"
            + confirmed(machine)
        )
        added = machine.twistd_log[before:]
        said = messages(added)
        assert "command finished with signal None, exit code 0" in said[0]
        assert said[2:] == [f"{who} shutting down on command from master", "Main loop terminated.", "Server Shut Down."]
        assert all(stamp(line).endswith(machine.tz_offset) for line in added)
        # The command ran on for the lab's second after the request; the shutdown came after it.
        finished = moment(added[0])
        assert finished >= asked_at and moment(added[2]) >= finished
        assert running_command(machine.twistd_log) is None
        assert machine.recent_jobs[0].endtime == int(finished.timestamp()) and machine.recent_jobs[0].result == 0


@pytest_twisted.ensureDeferred
async def test_a_slave_without_master_has_nothing_to_shut_down(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("tst-linux64-ec2-012")
    assert machine.master is None
    log_before = list(machine.twistd_log)
    code, result = await post(lab_service, machine.name, "shutdown_buildslave")
    assert (code, result["state"], result["text"]) == (200, 2, "No master set, nothing to do!")
    assert machine.twistd_log == log_before
    assert requests_for(lab_service, machine.name) == []


@pytest_twisted.ensureDeferred
async def test_an_offline_machine_has_nothing_to_shut_down(lab_service: RunningService) -> None:
    for name in ("t-linux64-lab-007", "t-linux64-lab-009"):  # dead, and hung
        machine = lab_service.lab.machine(name)
        assert machine.master is not None and not machine.up
        code, result = await post(lab_service, name, "shutdown_buildslave")
        assert (code, result["state"], result["text"]) == (200, 2, "Slave is offline, nothing to do!")
        assert requests_for(lab_service, name) == []


@pytest_twisted.ensureDeferred
async def test_a_device_shutdown_is_confirmed_from_the_log_on_its_foopy(lab_service: RunningService) -> None:
    device = lab_service.lab.machine("panda-0008")
    assert device.foopy is not None
    code, result = await post(lab_service, device.name, "shutdown_buildslave")
    assert (code, result["state"]) == (200, 2), result
    assert result["text"] == (
        "Requesting graceful shutdown from master bm03-tests2...Accepted (Buildbot 0.8, HTTP 302).\n"
        + confirmed(device)
    )
    assert messages(device.twistd_log[-3:])[0] == "slave shutting down on command from master"


@pytest_twisted.ensureDeferred
async def test_an_unconfirmed_shutdown_fails_before_the_action_time_limit(lab_service: RunningService) -> None:
    lab = lab_service.lab
    machine = lab.machine("bld-linux64-lab-015")
    holder = next(child for child in lab_service.service if isinstance(child, ContextHolder))
    ini = holder.context().config.path
    with open(ini, encoding="utf-8") as handle:
        original = handle.read()
    # This buildbot takes its time, and the action may only run 8 seconds: the wait
    # ([buildbot] max_wait 30 s) is cut to fit, and the action says so itself. The
    # margin before the limit (a tenth of it) leaves room for a last look at the log
    # on a loaded machine.
    lab.buildbots.shutdown_delay = 60
    with open(ini, "a", encoding="utf-8") as handle:
        handle.write("\n[timeouts]\nshutdown_buildslave = 8\n")
    assert holder.reload()
    try:
        code, result = await post(lab_service, machine.name, "shutdown_buildslave")
        assert (code, result["state"]) == (200, 3), result
        assert result["text"] == (
            "Requesting graceful shutdown from master bm01-build1...Accepted (Buildbot 0.8, HTTP 302).\n"
            "Waiting for the buildbot to shut down...Couldn't confirm shutdown within 7.2 seconds."
        )
        assert lab.buildbots.pending(machine.name)
        assert not machine.twistd_log[-1].endswith("Server Shut Down.")
    finally:
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(original)
        assert holder.reload()
        lab.buildbots.stop()
        lab.buildbots.shutdown_delay = 0.05


@pytest_twisted.ensureDeferred
async def test_a_shutdown_waiting_for_a_device_leaves_ssh_to_its_foopy_free(lab_service: RunningService) -> None:
    # A device's twistd.log is on its foopy, which serves many devices. With one SSH
    # place per host, a shutdown that held its session through the wait (up to
    # [buildbot] max_wait, hours in production) would keep every other action on the
    # foopy out; between its reads it must hold none.
    from twisted.internet import reactor

    lab = lab_service.lab
    device = lab.machine("panda-0008")
    assert device.foopy is not None
    if device.twistd_log[-1].endswith("Server Shut Down."):
        # Stopped by an earlier test: its buildbot runs again. The lab logs the
        # connection a second after the start; booting two seconds ago keeps every
        # line in the past, so the shutdown's lines come after them.
        device.boot(reactor.seconds() - 2)
    holder = next(child for child in lab_service.service if isinstance(child, ContextHolder))
    ini = holder.context().config.path
    with open(ini, encoding="utf-8") as handle:
        original = handle.read()
    limited = original.replace("[ssh]\n", "[ssh]\nper_host = 1\nconnect_timeout = 5\n", 1)
    assert limited != original
    with open(ini, "w", encoding="utf-8") as handle:
        handle.write(limited)
    assert holder.reload()
    lab.buildbots.shutdown_delay = 600  # the buildbot takes its time: the action waits
    try:
        asked = lab.buildbots.next_request(device.name)
        asked.addTimeout(30, reactor)
        shutting = ensureDeferred(post(lab_service, device.name, "shutdown_buildslave"))
        await asked

        code, uptime = await post(lab_service, device.name, "buildslave_uptime")
        assert (code, uptime["state"]) == (200, 2), uptime
        assert isinstance(uptime["text"], int)
        assert lab.buildbots.pending(device.name) and not shutting.called

        # Now let the buildbot stop: the waiting shutdown sees it and succeeds.
        lab.buildbots.stop()
        lab.buildbots.shutdown_delay = 0.05
        lab.buildbots.request_shutdown(device)
        code, result = await shutting
        assert (code, result["state"]) == (200, 2), result
        assert result["text"] == (
            "Requesting graceful shutdown from master bm03-tests2...Accepted (Buildbot 0.8, HTTP 302).\n"
            + confirmed(device)
        )
    finally:
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(original)
        assert holder.reload()
        lab.buildbots.stop()
        lab.buildbots.shutdown_delay = 0.05


# --- disable ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_disable_turns_the_slave_off_shuts_it_down_and_comments_on_a_new_tracking_bug(
    lab_service: RunningService,
) -> None:
    lab = lab_service.lab
    machine = lab.machine("t-w864-lab-004")  # Windows: its basedir is C:\slave
    assert machine.enabled and lab.bugzilla.find(machine.name) is None

    code, result = await post(lab_service, machine.name, "disable", reason="flaky disk, bug 1234567")

    assert (code, result["state"]) == (200, 2), result
    tracking = lab.bugzilla.find(machine.name)
    assert tracking is not None
    steps = [
        "Disabling in slavealloc...Success!",
        "Requesting graceful shutdown from master bm02-tests1...Accepted (Buildbot 0.8, HTTP 302).",
        confirmed(machine),
    ]
    assert result["text"].split("\n") == [*steps, f"Commenting on problem tracking bug {tracking.id}...Success!"]
    assert machine.enabled is False
    code, record = await request_json("GET", f"{lab_service.url}/slaves/{machine.name}")
    assert record["enabled"] is False
    assert (tracking.product, tracking.component, tracking.summary, tracking.alias) == (
        "Release Engineering",
        "Buildduty",
        f"{machine.name} problem tracking",
        [machine.name],
    )
    assert tracking.comments[-1].text == (
        "\n".join(steps)
        + '\nReason given by an anonymous client (authentication is off): "flaky disk, bug 1234567"'
        + f"\n\n(SlaveAPI disable request {result['requestid']}, "
        + "requested by an anonymous client (authentication is off).)"
    )
    assert messages(machine.twistd_log[-3:]) == [
        "slave shutting down on command from master",
        "Main loop terminated.",
        "Server Shut Down.",
    ]


@pytest_twisted.ensureDeferred
async def test_forced_disable_reboots_and_files_no_reboot_bug(lab_service: RunningService) -> None:
    lab = lab_service.lab
    machine = lab.machine("bld-linux64-lab-010")
    booted_before = machine.booted_at
    reboot_bugs_before = reboot_bugs(lab_service)

    code, result = await post(lab_service, machine.name, "disable", reason="reimage", force="YeS")

    assert (code, result["state"]) == (200, 2), result
    tracking = lab.bugzilla.find(machine.name)
    assert tracking is not None
    steps = [
        "Disabling in slavealloc...Success!",
        "Forcing a reboot instead of a graceful shutdown:",
        "Attempting SSH reboot...Success!",
    ]
    assert result["text"].split("\n") == [*steps, f"Commenting on problem tracking bug {tracking.id}...Success!"]
    assert machine.enabled is False
    assert machine.up and machine.booted_at > booted_before
    assert reboot_bugs(lab_service) == reboot_bugs_before
    assert requests_for(lab_service, machine.name) == []
    assert tracking.comments[-1].text == (
        "\n".join(steps)
        + '\nReason given by an anonymous client (authentication is off): "reimage"'
        + f"\n\n(SlaveAPI disable request {result['requestid']}, "
        + "requested by an anonymous client (authentication is off).)"
    )
    said = messages(machine.twistd_log)
    assert "Received SIGTERM, shutting down." in said
    assert "slave shutting down on command from master" not in said


@pytest_twisted.ensureDeferred
async def test_disabling_a_disabled_slave_files_its_missing_tracking_bug_and_does_nothing_else(
    lab_service: RunningService,
) -> None:
    machine = lab_service.lab.machine("dev-linux64-ec2-lab5")
    assert machine.enabled is False and lab_service.lab.bugzilla.find(machine.name) is None
    log_before = list(machine.twistd_log)
    code, result = await post(lab_service, machine.name, "disable", reason="again")
    assert (code, result["state"], result["text"]) == (200, 2, "Slave is already disabled. Nothing to do.")
    assert machine.enabled is False
    # As in the reference, the tracking bug is loaded (here filed) first; it gets no comment.
    tracking = lab_service.lab.bugzilla.find(machine.name)
    assert tracking is not None and len(tracking.comments) == 1
    assert tracking.summary == f"{machine.name} problem tracking"
    # Nothing else: no shutdown asked of a master, nothing logged by its buildbot.
    assert requests_for(lab_service, machine.name) == []
    assert machine.twistd_log == log_before


@pytest_twisted.ensureDeferred
async def test_a_bad_force_value_is_a_400_naming_the_accepted_values(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("tst-linux64-ec2-013")
    code, body = await post(lab_service, machine.name, "disable", reason="x", force="maybe")
    assert code == 400
    assert body["msg"] == "force: expected one of 1, y, yes, true, on, 0, n, no, false, off (any case), got 'maybe'"
    assert machine.enabled is True
    code, listing = await request_json("GET", f"{lab_service.url}/slaves/{machine.name}/actions/disable")
    assert (code, listing) == (200, {"disable": {}})


@pytest_twisted.ensureDeferred
async def test_disable_reopens_a_closed_tracking_bug(lab_service: RunningService) -> None:
    lab = lab_service.lab
    machine = lab.machine("t-yosemite-r7-lab-003")
    tracking = lab.bugzilla.file(
        summary=f"{machine.name} problem tracking",
        product="Release Engineering",
        component="Buildduty",
        alias=[machine.name],
        status="RESOLVED",
        resolution="FIXED",
    )

    code, result = await post(lab_service, machine.name, "disable", reason="kernel panics")

    assert (code, result["state"]) == (200, 2), result
    last_line = result["text"].split("\n")[-1]
    assert last_line == f"Reopening and commenting on problem tracking bug {tracking.id}...Success!"
    assert tracking.status == "REOPENED" and tracking.is_open
    assert tracking.comments[-1].text.endswith(
        '\nReason given by an anonymous client (authentication is off): "kernel panics"'
        + f"\n\n(SlaveAPI disable request {result['requestid']}, "
        + "requested by an anonymous client (authentication is off).)"
    )
    assert tracking.comments[-1].text.startswith("Disabling in slavealloc...Success!\n")


@pytest_twisted.ensureDeferred
async def test_a_failed_shutdown_fails_the_disable_but_still_comments(lab_service: RunningService) -> None:
    lab = lab_service.lab
    machine = lab.machine("bld-linux64-lab-006")  # its SSH refuses every login
    tracking = lab.bugzilla.find(machine.name)
    assert tracking is not None
    comments_before = len(tracking.comments)

    code, result = await post(lab_service, machine.name, "disable")

    assert (code, result["state"]) == (200, 3), result
    lines = result["text"].split("\n")
    assert lines[0] == "Disabling in slavealloc...Success!"
    assert lines[1].startswith(f"Could not log in to {machine.name} over SSH: ")
    assert lines[2:] == [f"Commenting on problem tracking bug {tracking.id}...Success!"]
    assert machine.enabled is False
    assert len(tracking.comments) == comments_before + 1
    assert tracking.comments[-1].text == (
        "\n".join(lines[:2])
        + "\nNo reason given by an anonymous client (authentication is off)."
        + f"\n\n(SlaveAPI disable request {result['requestid']}, "
        + "requested by an anonymous client (authentication is off).)"
    )
    assert requests_for(lab_service, machine.name) == []
