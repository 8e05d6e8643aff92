"""
A lab machine's past: the recent jobs it ran and the twistd.log telling the same story.

L{write_history} fills in a machine that L{slaveapi.lab.fleet} has just
made, so that uptime, last activity and recent jobs agree from the start.
"""

from __future__ import annotations

import random

from slaveapi.lab import logs
from slaveapi.lab.machines import (
    _DAY,
    _HOUR,
    _MINUTE,
    _TWISTD_START_DELAY,
    LINUX,
    MACOS,
    WINDOWS,
    LabJob,
    LabMachine,
    LabMaster,
)

_HOMES = {LINUX: "/home/cltbld", MACOS: "/Users/cltbld", WINDOWS: "C:\\Users\\cltbld"}

_BUILDERS = {
    "build": ("Linux x86-64 mozilla-central build", "Linux x86-64 mozilla-inbound build", "Linux x86-64 try build"),
    "tests-linux": (
        "Ubuntu VM 12.04 x64 mozilla-central opt test mochitest-1",
        "Ubuntu VM 12.04 x64 mozilla-inbound opt test xpcshell",
    ),
    "tests-macos": (
        "Rev7 MacOSX Yosemite 10.10.5 mozilla-central opt test mochitest-1",
        "Rev7 MacOSX Yosemite 10.10.5 try opt test reftest",
    ),
    "tests-windows": (
        "Windows 8 64-bit mozilla-central opt test reftest",
        "Windows 8 64-bit mozilla-inbound opt test mochitest-2",
    ),
    "tests-device": ("Android 4.0 armv7 API 15+ mozilla-central opt test robocop-1",),
}

_ARGV = {
    "build": ("/bin/bash", "-c", "python2.7 scripts/scripts/fx_desktop_build.py --config releng_linux_64.py"),
    "tests-linux": ("/tools/buildbot/bin/python", "scripts/scripts/desktop_unittest.py", "--mochitest-suite", "plain1"),
    "tests-macos": ("/tools/buildbot/bin/python", "scripts/scripts/desktop_unittest.py", "--reftest-suite", "reftest"),
    "tests-windows": ("c:/mozilla-build/python27/python", "-u", "scripts/scripts/desktop_unittest.py"),
    "tests-device": ("/tools/buildbot/bin/python", "scripts/scripts/android_panda.py", "--robocop-suite", "1"),
}


def _job_kind(machine: LabMachine) -> str:
    if machine.purpose == "build":
        return "build"
    if machine.imaging_server:
        return "tests-device"
    return {LINUX: "tests-linux", MACOS: "tests-macos", WINDOWS: "tests-windows"}[machine.os]


def write_history(
    machine: LabMachine, scenario: str, now: float, masters: list[LabMaster], rng: random.Random
) -> None:
    """
    Give the machine recent jobs and a twistd.log telling the same story.

    Jobs run while the machine is up, or before its last boot when it came
    up recently (that boot then follows a SIGTERM in the log). Events go
    oldest first; the older half lands in twistd.log.1 (absent when there is
    only one event).
    """
    now = float(int(now))
    recently_booted = scenario in ("booting", "device") or (scenario == "idle" and machine.uptime(now) < 6 * _HOUR)
    jobs = _plan_jobs(machine, scenario, now, recently_booted, rng)
    events = _job_events(machine, jobs, masters, rng)
    events += _boot_events(machine, scenario, jobs, now, recently_booted)
    events.sort(key=lambda event: event[0])
    half = len(events) // 2
    for _, lines in events[:half]:
        machine.twistd_log_1.extend(lines)
    for _, lines in events[half:]:
        machine.twistd_log.extend(lines)


def _plan_jobs(
    machine: LabMachine, scenario: str, now: float, recently_booted: bool, rng: random.Random
) -> list[tuple[float, float | None]]:
    """The machine's recent jobs, oldest first: (start, end or None while running)."""
    booted = machine.booted_at
    # Planned backwards from the newest.
    jobs: list[tuple[float, float | None]] = []
    if scenario == "running_command":
        start = now - rng.randint(2 * _MINUTE, 20 * _MINUTE)
        jobs.append((start, None))
        cursor = start - rng.randint(_MINUTE, 10 * _MINUTE)
    elif scenario in ("dead", "hung"):
        cursor = now - 3 * _DAY
    elif recently_booted:
        cursor = booted - 5 * _MINUTE
    else:
        cursor = now - rng.randint(5 * _MINUTE, 40 * _MINUTE)
    earliest = booted - 7 * _DAY if recently_booted else booted + _TWISTD_START_DELAY + _MINUTE
    while scenario != "stopped" and len(jobs) < 6:  # a stopped loaner runs no jobs
        end = cursor
        start = end - rng.randint(10 * _MINUTE, 60 * _MINUTE)
        if start < earliest:
            break
        jobs.append((start, end))
        cursor = start - rng.randint(_MINUTE, 10 * _MINUTE)
    jobs.reverse()
    return jobs


def _job_events(
    machine: LabMachine, jobs: list[tuple[float, float | None]], masters: list[LabMaster], rng: random.Random
) -> list[tuple[float, list[str]]]:
    """Record C{jobs} in buildapi's list (newest first) and return their twistd.log lines."""
    kind = _job_kind(machine)
    argv = list(_ARGV[kind])
    home = _HOMES[machine.os]
    workdir = machine.basedir + ("\\test" if machine.os == WINDOWS else "/test")
    tz, style = machine.tz_offset, machine.log_style
    master = machine.master or masters[0].nickname
    builders = _BUILDERS[kind]
    number = rng.randint(1000, 9000)
    events: list[tuple[float, list[str]]] = []
    for position, (began, ended) in enumerate(jobs):
        machine.recent_jobs.insert(
            0,
            LabJob(
                buildername=builders[position % len(builders)],
                buildnumber=number + position,
                starttime=int(began),
                endtime=int(ended) if ended is not None else None,
                result=(0 if rng.random() < 0.8 else rng.choice((1, 2, 5))) if ended is not None else None,
                master=master,
                slave=machine.name,
                request_ids=[rng.randint(100000, 999999)],
            ),
        )
        events.append((began, logs.command_start_lines(style, began, tz, workdir, argv, home)))
        if ended is not None:
            events.append((ended, logs.command_end_lines(style, ended, tz, ended - began, argv)))
    return events


def _boot_events(
    machine: LabMachine, scenario: str, jobs: list[tuple[float, float | None]], now: float, recently_booted: bool
) -> list[tuple[float, list[str]]]:
    """The twistd.log lines of the buildbot's starts and stops around the last boot."""
    tz, style = machine.tz_offset, machine.log_style
    booted = machine.booted_at
    boot_at = booted + _TWISTD_START_DELAY
    events: list[tuple[float, list[str]]] = []
    if scenario == "booting":
        previous_boot = jobs[0][0] - _HOUR if jobs else booted - _DAY
        events.append((previous_boot, logs.boot_lines(style, previous_boot, tz, machine.master_address)))
    if recently_booted:
        events.append((booted - _MINUTE, logs.sigterm_lines(booted - _MINUTE, tz)))
    if boot_at < now and (machine.uptime(now) < 2 * _DAY or scenario == "stopped" or not (jobs or events)):
        boot = logs.boot_lines(style, boot_at, tz, machine.master_address)
        # Without a master the buildbot never gets past connecting.
        events.append((boot_at, boot if machine.master else boot[:-2]))
    if scenario == "stopped":
        stop_at = boot_at + 5 * _MINUTE
        if machine.master:
            events.append((stop_at, logs.graceful_shutdown_lines(style, stop_at, tz)))
        else:
            events.append((stop_at, logs.sigterm_lines(stop_at, tz)))
    return events
