"""The fleet mix, its logs and jobs, the shell's output formats, and the power state changes."""

from __future__ import annotations

import datetime

import pytest

from slaveapi.lab import LINUX, MACOS, SSH_REFUSE_LOGIN, WINDOWS, build_fleet, logs, shell
from slaveapi.lab.machines import posix_path
from slaveapi.twistdlog import last_activity, parse_log_line
from slaveapi.uptime import parse_net_statistics, parse_proc_uptime, parse_uptime_output

from .conftest import NOW

DOMAIN = "build.scl3.slaveapi.test"
UTC = datetime.UTC
MINUTE, HOUR, DAY = 60, 3600, 86400


def _state(machine, now=NOW):
    moment = datetime.datetime.fromtimestamp(now, UTC)
    return last_activity(machine.twistd_log_1 + machine.twistd_log, moment, machine.uptime(now)).last_state


@pytest.mark.parametrize("count", [8, 12])
def test_the_mix_is_complete(count: int) -> None:
    fleet = build_fleet(count, DOMAIN, NOW)
    assert len(fleet) == count
    names = [m.name for m in fleet]
    assert names[:8] == [
        "bld-linux64-lab-001",
        "tst-linux64-lab-002",
        "t-yosemite-r7-lab-003",
        "t-w864-lab-004",
        "dev-linux64-ec2-lab5",
        "bld-linux64-lab-006",
        "t-linux64-lab-007",
        "panda-0008",
    ]
    healthy = fleet["bld-linux64-lab-001"]
    assert (healthy.os, healthy.purpose, healthy.log_style, healthy.bmc, healthy.enabled) == (
        LINUX, "build", "4.x", True, True)
    assert _state(healthy) == "ready"
    assert "worker is ready" not in healthy.twistd_log[-1]  # ready because its last command finished
    busy = fleet["tst-linux64-lab-002"]
    assert busy.log_style == "0.8" and busy.tz_offset == "-0800"
    started = logs.timestamp(busy.recent_jobs[0].starttime, "-0800")
    assert busy.twistd_log[-2:] == [
        f"{started} [Broker,client]   closing stdin",
        f"{started} [Broker,client]  using PTY: False",
    ]
    assert _state(busy) == "running_command"
    assert busy.recent_jobs[0].endtime is None
    mac = fleet["t-yosemite-r7-lab-003"]
    assert (mac.os, mac.uptime(NOW), _state(mac)) == (MACOS, 100, "booting")
    assert mac.twistd_log[-1] == "2026-11-27 16:21:56-0700 [Broker,client] Connected to buildmaster; worker is ready"
    windows = fleet["t-w864-lab-004"]
    assert (windows.os, windows.basedir, windows.posix_basedir) == (WINDOWS, "C:\\slave", "/c/slave")
    loaner = fleet["dev-linux64-ec2-lab5"]
    assert (loaner.is_aws, loaner.enabled, loaner.master, loaner.recent_jobs) == (True, False, None, [])
    assert loaner.twistd_log[-1].endswith("[-] Server Shut Down.") and _state(loaner) == "stopped"
    refusing = fleet["bld-linux64-lab-006"]
    assert (refusing.ssh, refusing.bmc, refusing.bug_alias) == (SSH_REFUSE_LOGIN, True, "bld-linux64-lab-006")
    dead = fleet["t-linux64-lab-007"]
    assert (dead.powered, dead.up, dead.comes_back, dead.bmc, dead.pdu) == (
        False, False, False, False, f"pdu1.{DOMAIN}:AA3")
    device = fleet["panda-0008"]
    assert (device.ssh, device.foopy, device.imaging_server) == (
        SSH_REFUSE_LOGIN,
        "foopy01",
        f"mobile-imaging-001.{DOMAIN}",
    )
    assert [m.name for m in fleet.foopies] == ["foopy01"]
    assert fleet["foopy01"].files().keys() == {"/builds/panda-0008/twistd.log", "/builds/panda-0008/twistd.log.1"}
    # The cases folded into the eight.
    mix = fleet.machines[:8]
    assert [m.name for m in mix if m.pdu and not m.bmc and m.up] == [
        "tst-linux64-lab-002", "t-yosemite-r7-lab-003", "panda-0008"]
    assert [m.name for m in mix if m.master is None] == ["dev-linux64-ec2-lab5"]
    assert [m.name for m in fleet if not m.enabled] == ["dev-linux64-ec2-lab5"]
    assert [m.name for m in fleet if m.uptime(NOW) < 180] == ["t-yosemite-r7-lab-003"]
    assert [m.name for m in mix if "-ec2-" in m.name and m.is_aws] == ["dev-linux64-ec2-lab5"]
    assert sum(1 for m in fleet if m.recent_jobs) >= count - 2


def test_machines_beyond_the_mix_are_ordinary() -> None:
    fleet = build_fleet(200, DOMAIN, NOW)
    extras = fleet.machines[9:]
    assert all(m.os == LINUX and m.purpose in ("build", "tests") for m in extras)
    assert all(m.environment == "prod" and m.enabled and m.up and m.ssh == "ok" for m in extras)
    with_master = sum(1 for m in extras if m.master)
    assert 0.6 * len(extras) < with_master < len(extras)
    assert all(m.recent_jobs for m in extras)
    assert {_state(m) for m in extras} == {"ready", "running_command"}
    assert len({m.ip for m in fleet.all_hosts()}) == 201
    assert fleet.machines[199].ip == "127.0.1.200" and fleet.machines[0].ip == "127.0.1.1"
    assert len({m.name for m in fleet}) == 200


def test_fleet_is_deterministic() -> None:
    assert build_fleet(30, DOMAIN, NOW) == build_fleet(30, DOMAIN, NOW)
    assert build_fleet(30, DOMAIN, NOW, seed=1) != build_fleet(30, DOMAIN, NOW)
    assert build_fleet(5, DOMAIN, NOW).machines == build_fleet(30, DOMAIN, NOW).machines[:5]


def test_every_log_line_is_an_event_or_an_environment_line() -> None:
    for machine in build_fleet(40, DOMAIN, NOW).all_hosts():
        for line in machine.twistd_log_1 + machine.twistd_log:
            event = parse_log_line(line)
            assert event is not None or line.startswith("  "), line
            if event is not None:
                assert event.timestamp.timestamp() <= NOW


def test_jobs_are_newest_first_and_match_the_log() -> None:
    machine = build_fleet(8, DOMAIN, NOW)["bld-linux64-lab-001"]
    starts = [job.starttime for job in machine.recent_jobs]
    assert starts == sorted(starts, reverse=True)
    newest = machine.recent_jobs[0]
    assert newest.master == "bm01-build1" and newest.slave == machine.name and newest.endtime is not None
    stamp = datetime.datetime.fromtimestamp(newest.endtime, UTC).strftime("%Y-%m-%d %H:%M:%S+0000")
    assert machine.twistd_log[-1].startswith(stamp)


def test_mgmt_names_and_domain() -> None:
    fleet = build_fleet(8, "build.mdc1.example.test", NOW)
    machine = fleet["bld-linux64-lab-001"]
    assert machine.fqdn == "bld-linux64-lab-001.build.mdc1.example.test"
    assert machine.mgmt_fqdn == "bld-linux64-lab-001-mgmt.build.mdc1.example.test"
    assert machine.mgmt_ip == "127.1.1.1" and machine.datacenter == "mdc1"
    assert fleet["tst-linux64-lab-002"].mgmt_fqdn is None
    assert [m.fqdn for m in fleet.masters] == [f"bm0{i}.build.mdc1.example.test" for i in (1, 2, 3, 4)]


# --- the shell ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "users", "expected"),
    [
        (
            78 * DAY + 21 * HOUR + 57 * MINUTE + 12,
            2,
            " 10:14:25 up 78 days, 21:57,  2 users,  load average: 0.00, 0.01, 0.05\n",
        ),
        (1 * DAY + 12 * HOUR + 2 * MINUTE, 1, " 10:14:25 up 1 day, 12:02,  1 user,  load average: 0.00, 0.01, 0.05\n"),
        (2 * DAY + 10 * MINUTE + 5, 3, " 10:14:25 up 2 days, 10 min,  3 users,  load average: 0.00, 0.01, 0.05\n"),
        (2 * HOUR + 40, 2, " 10:14:25 up  2:00,  2 users,  load average: 0.00, 0.01, 0.05\n"),
        (33 * MINUTE + 59, 2, " 10:14:25 up 33 min,  2 users,  load average: 0.00, 0.01, 0.05\n"),
        (20, 2, " 10:14:25 up 0 min,  2 users,  load average: 0.00, 0.01, 0.05\n"),
    ],
)
def test_procps_uptime(seconds: int, users: int, expected: str) -> None:
    local = datetime.datetime(2026, 11, 27, 10, 14, 25)
    assert shell.procps_uptime(local, seconds, users, (0.0, 0.01, 0.05)) == expected
    assert parse_uptime_output(expected) == seconds - seconds % 60


@pytest.mark.parametrize(
    ("seconds", "expected", "parsed"),
    [
        (3 * DAY + 4 * HOUR + 2 * MINUTE + 10, " 10:14  up 3 days,  4:02, 2 users, load averages: 1.00 1.10 1.20\n",
         3 * DAY + 4 * HOUR + 2 * MINUTE),
        (3 * HOUR + 20, " 10:14  up 3 hrs, 2 users, load averages: 1.00 1.10 1.20\n", 3 * HOUR),
        (1 * DAY + 1 * HOUR, " 10:14  up 1 day, 1 hr, 2 users, load averages: 1.00 1.10 1.20\n", DAY + HOUR),
        (100, " 10:14  up 2 mins, 2 users, load averages: 1.00 1.10 1.20\n", 2 * MINUTE),
        (75, " 10:14  up 1 min, 2 users, load averages: 1.00 1.10 1.20\n", MINUTE),
        (12, " 10:14  up 12 secs, 2 users, load averages: 1.00 1.10 1.20\n", 12),
    ],
)
def test_bsd_uptime(seconds: int, expected: str, parsed: int) -> None:
    local = datetime.datetime(2026, 11, 27, 10, 14, 25)
    assert shell.bsd_uptime(local, seconds, 2, (1.0, 1.1, 1.2)) == expected
    assert parse_uptime_output(expected) == parsed


def test_net_statistics_server() -> None:
    booted = datetime.datetime(2026, 11, 27, 21, 58, 1, tzinfo=UTC).timestamp()
    text = shell.net_statistics_server("t-w864-lab-004", booted)
    lines = text.split("\r\n")
    assert lines[:6] == [
        "Server Statistics for \\\\T-W864-LAB-004", "", "", "Statistics since 11/27/2026 9:58:01 PM", "", ""]
    assert lines[-4:] == ["", "The command completed successfully.", "", ""]
    assert "Sessions accepted                  1" in lines
    now = datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC)
    assert parse_net_statistics(text, now) == 85 * MINUTE + 4


def test_shell_commands_per_os() -> None:
    fleet = build_fleet(12, DOMAIN, NOW)
    linux, mac, windows = fleet["bld-linux64-lab-001"], fleet["t-yosemite-r7-lab-003"], fleet["t-w864-lab-004"]
    assert shell.run(linux, "uptime", NOW).stdout == (
        f" 23:23:05 up 78 days, 21:57,  1 user,  load average: {linux.load[0]:.2f}, {linux.load[1]:.2f}, "
        f"{linux.load[2]:.2f}\n")
    assert shell.run(linux, "cat /proc/uptime", NOW) == shell.CommandResult(
        f"{linux.uptime(NOW)}.00 {linux.uptime(NOW) * 1.7:.2f}\n")
    assert parse_proc_uptime(shell.run(linux, "cat /proc/uptime", NOW).stdout) == linux.uptime(NOW)
    assert shell.run(mac, "uptime", NOW).stdout.startswith(" 16:23  up 2 mins, 3 users, load averages: ")
    assert shell.run(mac, "cat /proc/uptime", NOW) == shell.CommandResult(
        stderr="cat: /proc/uptime: No such file or directory\n", exit_code=1)
    assert shell.run(linux, "net statistics server", NOW) == shell.CommandResult(
        stderr="sh: 1: net: not found\n", exit_code=127)
    assert parse_net_statistics(
        shell.run(windows, "net statistics server", NOW).stdout, datetime.datetime.fromtimestamp(NOW, UTC)
    ) == windows.uptime(NOW)
    assert shell.run(windows, "uptime", NOW) == shell.CommandResult(stderr="sh: 1: uptime: not found\n", exit_code=127)
    for machine in (linux, mac, windows):
        for command in ("reboot", "sudo reboot", "shutdown -f -t 3 -r"):
            assert shell.run(machine, command, NOW) == shell.CommandResult(reboot=True)
    assert shell.run(linux, "rm -rf /", NOW) == shell.CommandResult(stderr="sh: 1: rm: not found\n", exit_code=127)
    assert shell.run(linux, "", NOW) == shell.CommandResult()
    assert shell.run(linux, "echo 'oops", NOW).exit_code == 2
    assert shell.run(linux, "uptime | cat", NOW).exit_code == 2


def test_shell_tail() -> None:
    fleet = build_fleet(12, DOMAIN, NOW)
    linux, windows = fleet["bld-linux64-lab-001"], fleet["t-w864-lab-004"]
    last3 = "".join(line + "\n" for line in linux.twistd_log[-3:])
    for command in (
        "tail -n 3 /builds/slave/twistd.log",
        "tail -3 /builds/slave/twistd.log",
        "tail -n3 /builds/slave/twistd.log",
        "tail --lines=3 /builds/slave/twistd.log",
        "tail -n 3 '/builds/slave/twistd.log'",
    ):
        assert shell.run(linux, command, NOW) == shell.CommandResult(last3), command
    first = "".join(line + "\n" for line in linux.twistd_log_1[-2:])
    assert shell.run(linux, "tail -n 2 /builds/slave/twistd.log.1", NOW).stdout == first
    assert shell.run(linux, "tail -n 0 /builds/slave/twistd.log", NOW) == shell.CommandResult()
    everything = "".join(line + "\n" for line in linux.twistd_log)
    assert shell.run(linux, "tail -n 100000 /builds/slave/twistd.log", NOW).stdout == everything
    win_last = "".join(line + "\n" for line in windows.twistd_log[-5:])
    for path in ("/c/slave/twistd.log", "'C:\\slave\\twistd.log'", "C:/slave/twistd.log"):
        assert shell.run(windows, f"tail -n 5 {path}", NOW).stdout == win_last, path
    assert shell.run(linux, "tail -n 5 /builds/slave/nope.log", NOW) == shell.CommandResult(
        stderr="tail: cannot open '/builds/slave/nope.log' for reading: No such file or directory\n", exit_code=1)
    assert shell.run(windows, "tail -n 5 /builds/slave/twistd.log", NOW).exit_code == 1
    assert shell.run(linux, "tail -n x /builds/slave/twistd.log", NOW) == shell.CommandResult(
        stderr="tail: invalid number of lines: 'x'\n", exit_code=1)
    both = shell.run(linux, "tail -n 1 /builds/slave/twistd.log.1; tail -n 1 /builds/slave/twistd.log", NOW)
    assert both.stdout == linux.twistd_log_1[-1] + "\n" + linux.twistd_log[-1] + "\n"
    failed = shell.run(linux, "tail -n 1 /nope && uptime", NOW)
    assert (failed.stdout, failed.exit_code) == ("", 1)
    assert shell.run(linux, "tail -n 1 /nope || cat /proc/uptime", NOW).exit_code == 0


def test_posix_path() -> None:
    assert posix_path("C:\\slave") == "/c/slave"
    assert posix_path("D:/builds/slave/twistd.log") == "/d/builds/slave/twistd.log"
    assert posix_path("/builds/slave") == "/builds/slave"


# --- power: state changes -------------------------------------------------------


def test_reboot_and_boot_append_log_lines() -> None:
    machine = build_fleet(8, DOMAIN, NOW)["bld-linux64-lab-001"]
    before = list(machine.twistd_log)
    assert machine.reboot(NOW + 10, graceful=True) is True
    assert (machine.up, machine.powered) == (False, True)
    assert machine.twistd_log[len(before):] == [
        "2026-11-27 23:23:15+0000 [-] Received SIGTERM, shutting down.",
        "2026-11-27 23:23:15+0000 [-] Main loop terminated.",
        "2026-11-27 23:23:15+0000 [-] Server Shut Down.",
    ]
    machine.boot(NOW + 40)
    assert (machine.up, machine.booted_at, machine.uptime(NOW + 100)) == (True, NOW + 40, 60)
    boot = machine.twistd_log[len(before) + 3:]
    assert [line[:25] for line in boot] == ["2026-11-27 23:23:45+0000 "] * 7 + ["2026-11-27 23:23:46+0000 "] * 2
    assert boot[0].endswith("[-] Log opened.")
    assert boot[1].endswith("[-] twistd 24.11.0 (/usr/bin/python3 3.11.2) starting up.")
    assert boot[3].endswith("[-] Starting Worker -- version: 4.3.0")
    assert boot[-1].endswith("[Broker,client] Connected to buildmaster; worker is ready")
    assert _state(machine, NOW + 40 + 200) == "ready"


def test_power_off_and_machines_that_never_come_back() -> None:
    fleet = build_fleet(8, DOMAIN, NOW)
    machine = fleet["tst-linux64-lab-002"]
    lines = len(machine.twistd_log)
    machine.power_off()
    assert (machine.up, machine.powered, len(machine.twistd_log)) == (False, False, lines)
    assert machine.power_on() is True and machine.powered
    dead = fleet["t-linux64-lab-007"]
    assert dead.power_on() is False
    assert dead.reboot(NOW, graceful=False) is False


def test_a_machine_without_master_never_gets_ready() -> None:
    loaner = build_fleet(8, DOMAIN, NOW)["dev-linux64-ec2-lab5"]
    loaner.reboot(NOW, graceful=True)
    loaner.boot(NOW + 5)
    assert loaner.twistd_log[-1] == "2026-11-27 23:23:10+0000 [-] Connecting to bm01.build.scl3.slaveapi.test:9001"
