"""Tests for slaveapi.twistdlog: a slave's state from the tail of its twistd.log."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator

import pytest

from slaveapi.twistdlog import (
    BOOT_GRACE_SECONDS,
    BOOTING,
    READY,
    RUNNING_COMMAND,
    STATES,
    STOPPED,
    UNKNOWN,
    LastActivity,
    LogEvent,
    last_activity,
    parse_log_line,
)

UTC = datetime.UTC
PST = datetime.timezone(datetime.timedelta(hours=-8))
DAY = 86400

# "now" for every scenario; the machine has been up for a day unless a test says otherwise.
NOW = datetime.datetime(2026, 11, 27, 23, 30, 0, tzinfo=UTC)
UPTIME = DAY


def _log(text: str) -> list[str]:
    """Split a dedented log excerpt into lines, as read from a file."""
    return text.strip("\n").splitlines(keepends=True)


# --- parse_log_line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "2026-11-27 23:23:05+0000 [Broker,client] Connected to buildmaster; worker is ready\n",
            LogEvent(
                datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC),
                "Connected to buildmaster; worker is ready",
            ),
        ),
        (
            "2014-02-13 10:14:25-0800 [-] Server Shut Down.",
            LogEvent(datetime.datetime(2014, 2, 13, 10, 14, 25, tzinfo=PST), "Server Shut Down."),
        ),
        (
            "2026-11-27 23:23:05+0000 [-]   using PTY: False\r\n",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC), "using PTY: False"),
        ),
        (
            "2026-11-27 23:23:05+0530 [HTTPChannel,0,127.0.0.1] x",
            LogEvent(
                datetime.datetime(
                    2026, 11, 27, 23, 23, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
                ),
                "x",
            ),
        ),
        (
            "2026-11-27 23:23:05.250+00:00 [-] fractional",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, 250000, tzinfo=UTC), "fractional"),
        ),
        (
            "2026-11-27T23:23:05Z [-] iso",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC), "iso"),
        ),
        (
            "2026-11-27 23:23:05+0000 no context here",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC), "no context here"),
        ),
        (
            "2026-11-27 23:23:05+0000 [-]",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC), ""),
        ),
        (
            "\ufeff2026-11-27 23:23:05+0000 [-] Log opened.",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC), "Log opened."),
        ),
        (
            "2026-11-27 23:23:05+0000 [-] caf\u00e9 \u2603 done",
            LogEvent(datetime.datetime(2026, 11, 27, 23, 23, 5, tzinfo=UTC), "caf\u00e9 \u2603 done"),
        ),
    ],
)
def test_parse_log_line(line: str, expected: LogEvent) -> None:
    assert parse_log_line(line) == expected


def test_parse_log_line_keeps_offset() -> None:
    event = parse_log_line("2014-02-13 10:14:25-0800 [-] Server Shut Down.")
    assert event is not None
    assert event.timestamp.utcoffset() == datetime.timedelta(hours=-8)
    assert event.timestamp == datetime.datetime(2014, 2, 13, 18, 14, 25, tzinfo=UTC)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "   \r\n",
        "  PATH=/usr/local/bin:/usr/bin:/bin",
        " 'HOME': '/home/cltbld',",
        "\tFile \"/usr/lib/python3/dist-packages/twisted/internet/defer.py\", line 1",
        "Traceback (most recent call last):",
        "==> twistd.log.1 <==",
        "2026-11-27 23:23:05 [-] no offset",
        "2026-11-27 23:23 +0000 [-] no seconds",
        "2026-13-27 23:23:05+0000 [-] month 13",
        "2026-11-27 24:23:05+0000 [-] hour 24",
        "2026-11-27 23:23:05+2400 [-] offset too big",
        "2026-11-27 23:23:05+00001 [-] offset too long",
        " 2026-11-27 23:23:05+0000 [-] indented",
        "garbage \x00\xff 2026-11-27 23:23:05+0000",
    ],
)
def test_parse_log_line_rejects_non_events(line: str) -> None:
    assert parse_log_line(line) is None


def test_records_are_frozen() -> None:
    event = LogEvent(NOW, "x")
    activity = LastActivity(READY, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.message = "y"  # type: ignore[misc]  # checks it is frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        activity.last_state = STOPPED  # type: ignore[misc]  # checks it is frozen


def test_state_names() -> None:
    assert (UNKNOWN, BOOTING, STOPPED, READY, RUNNING_COMMAND) == (
        "unknown",
        "booting",
        "stopped",
        "ready",
        "running_command",
    )
    assert STATES == ("unknown", "booting", "stopped", "ready", "running_command")
    assert BOOT_GRACE_SECONDS == 180


# --- last_activity: Buildbot 0.8 slave --------------------------------------

SLAVE_08_BOOT = """
2026-11-27 22:00:00+0000 [-] Log opened.
2026-11-27 22:00:00+0000 [-] twistd 12.3.0 (/tools/buildbot/bin/python 2.7.3) starting up.
2026-11-27 22:00:00+0000 [-] reactor class: twisted.internet.epollreactor.EPollReactor.
2026-11-27 22:00:01+0000 [-] Starting factory <buildslave.bot.BotFactory instance at 0x1>
2026-11-27 22:00:01+0000 [-] Connecting to buildbot-master01:9001
"""

SLAVE_08_READY = SLAVE_08_BOOT + """
2026-11-27 22:00:02+0000 [Broker,client] message from master: attached
2026-11-27 22:00:02+0000 [Broker,client] SlaveBuilder.remote_print(b2g_try): message from master: attached
2026-11-27 22:00:03+0000 [Broker,client] Connected to buildbot-master01:9001; slave is ready
"""

SLAVE_08_RUNNING = SLAVE_08_READY + """
2026-11-27 23:10:00+0000 [Broker,client] SlaveBuilder.remote_startCommand: shell
2026-11-27 23:10:00+0000 [Broker,client] RunProcess._startCommand
2026-11-27 23:10:00+0000 [Broker,client]  python scripts/scripts/b2g_build.py
2026-11-27 23:10:00+0000 [Broker,client]   in dir /builds/slave/b2g_try/build (timeout 3600 secs)
2026-11-27 23:10:00+0000 [Broker,client]   watching logfiles {}
2026-11-27 23:10:00+0000 [Broker,client]   argv: ['python', 'scripts/scripts/b2g_build.py']
2026-11-27 23:10:00+0000 [Broker,client]  environment:
  HOME=/home/cltbld
  PATH=/usr/local/bin:/usr/bin:/bin
2026-11-27 23:10:00+0000 [Broker,client]   closing stdin
2026-11-27 23:10:00+0000 [Broker,client]   using PTY: False
"""

SLAVE_08_FINISHED = SLAVE_08_RUNNING + """
2026-11-27 23:20:00+0000 [-] command finished with signal None, exit code 0, elapsedTime: 600.0
2026-11-27 23:20:00+0000 [-] SlaveBuilder.commandComplete <buildslave.commands.shell.SlaveShellCommand>
"""

SLAVE_08_INTERRUPTED = SLAVE_08_RUNNING + """
2026-11-27 23:20:00+0000 [Broker,client] SlaveBuilder.remote_interruptCommand
2026-11-27 23:20:00+0000 [Broker,client] SlaveBuilder.stopCommand
"""

SLAVE_08_SHUTDOWN = SLAVE_08_FINISHED + """
2026-11-27 23:25:00+0000 [Broker,client] Received remote_shutdown
2026-11-27 23:25:00+0000 [-] Main loop terminated.
2026-11-27 23:25:01+0000 [-] Server Shut Down.
"""


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (SLAVE_08_BOOT, LastActivity(BOOTING, 5399)),
        (SLAVE_08_READY, LastActivity(READY, 5397)),
        (SLAVE_08_RUNNING, LastActivity(RUNNING_COMMAND, 1200)),
        (SLAVE_08_FINISHED, LastActivity(READY, 600)),
        (SLAVE_08_INTERRUPTED, LastActivity(READY, 600)),
        (SLAVE_08_SHUTDOWN, LastActivity(STOPPED, 299)),
    ],
    ids=["boot", "ready", "running", "finished", "interrupted", "shutdown"],
)
def test_last_activity_buildbot_08(log: str, expected: LastActivity) -> None:
    assert last_activity(_log(log), NOW, UPTIME) == expected


def test_last_activity_08_starting_buildslave_line_is_booting() -> None:
    lines = ["2026-11-27 23:00:00+0000 [-] Starting BuildSlave -- version: 0.8.4-pre-moz2\n"]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(BOOTING, 1800)


def test_last_activity_08_pty_line_alone_means_running() -> None:
    lines = _log(SLAVE_08_READY) + ["2026-11-27 23:29:00+0000 [-]  using PTY: True\n"]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(RUNNING_COMMAND, 60)


def test_last_activity_08_leftover_directory_line_keeps_the_state_but_counts_as_activity() -> None:
    lines = _log(SLAVE_08_FINISHED) + [
        "2026-11-27 23:29:30+0000 [Broker,client] I have a leftover directory 'old' that is not being used\n"
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(READY, 30)


# --- last_activity: buildbot-worker 4.x -------------------------------------

WORKER_4_BOOT = """
2026-11-27 22:00:00+0000 [-] Loading buildbot.tac...
2026-11-27 22:00:00+0000 [-] Loaded.
2026-11-27 22:00:00+0000 [-] twistd 24.11.0 (/builds/worker/venv/bin/python 3.11.7) starting up.
2026-11-27 22:00:00+0000 [-] reactor class: twisted.internet.epollreactor.EPollReactor.
2026-11-27 22:00:00+0000 [-] Starting Worker -- version: 4.2.1
2026-11-27 22:00:00+0000 [-] recording hostname in twistd.hostname
2026-11-27 22:00:00+0000 [-] Starting factory <buildbot_worker.pb.BotFactory object at 0x7f>
2026-11-27 22:00:00+0000 [-] Connecting to buildmaster:9989
"""

WORKER_4_READY = WORKER_4_BOOT + """
2026-11-27 22:00:01+0000 [Broker,client] message from master: attached
2026-11-27 22:00:01+0000 [Broker,client] Connected to buildmaster; worker is ready
"""

WORKER_4_RUNNING = WORKER_4_READY + """
2026-11-27 23:00:00+0000 [Broker,client] (command 42): RunProcess._startCommand
2026-11-27 23:00:00+0000 [Broker,client] (command 42):  make test
2026-11-27 23:00:00+0000 [Broker,client] (command 42):   in dir /builds/worker/linux/build
2026-11-27 23:00:00+0000 [Broker,client] (command 42):   watching logfiles {}
2026-11-27 23:00:00+0000 [Broker,client] (command 42):   argv: [b'make', b'test']
2026-11-27 23:00:00+0000 [Broker,client] (command 42):  environment:
  HOME=/builds/worker
  LANG=C.UTF-8
  PATH=/usr/bin:/bin
  PWD=/builds/worker/linux/build
2026-11-27 23:00:00+0000 [Broker,client] (command 42):   using PTY: False
"""

WORKER_4_FINISHED = WORKER_4_RUNNING + """
2026-11-27 23:10:00+0000 [-] (command 42): command finished with signal None, exit code 0, elapsedTime: 600.0
2026-11-27 23:10:00+0000 [-] (command 42): ProtocolCommandBase.command_complete (success)
"""

WORKER_4_SHUTDOWN = WORKER_4_FINISHED + """
2026-11-27 23:20:00+0000 [Broker,client] worker shutting down on command from master
2026-11-27 23:20:00+0000 [Broker,client] Stopping factory <buildbot_worker.pb.BotFactory object at 0x7f>
2026-11-27 23:20:01+0000 [-] Main loop terminated.
2026-11-27 23:20:01+0000 [-] Server Shut Down.
"""


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (WORKER_4_BOOT, LastActivity(BOOTING, 5400)),
        (WORKER_4_READY, LastActivity(READY, 5399)),
        (WORKER_4_RUNNING, LastActivity(RUNNING_COMMAND, 1800)),
        (WORKER_4_FINISHED, LastActivity(READY, 1200)),
        (WORKER_4_SHUTDOWN, LastActivity(STOPPED, 599)),
    ],
    ids=["boot", "ready", "running", "finished", "shutdown"],
)
def test_last_activity_buildbot_worker_4(log: str, expected: LastActivity) -> None:
    assert last_activity(_log(log), NOW, UPTIME) == expected


def test_last_activity_4x_command_complete_without_finished_line_is_ready() -> None:
    lines = _log(WORKER_4_READY) + [
        "2026-11-27 23:00:00+0000 [Broker,client] (command 7): RunProcess._startCommand\n",
        "2026-11-27 23:00:05+0000 [-] (command 7): ProtocolCommandBase.command_complete (success)\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(READY, 1795)


def test_last_activity_second_command_after_first_finished_is_running() -> None:
    lines = _log(WORKER_4_FINISHED) + [
        "2026-11-27 23:15:00+0000 [Broker,client] (command 43): RunProcess._startCommand\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(RUNNING_COMMAND, 900)


def test_last_activity_restart_after_shutdown_is_booting_then_ready() -> None:
    restarted = _log(WORKER_4_SHUTDOWN) + [
        "2026-11-27 23:25:00+0000 [-] Log opened.\n",
        "2026-11-27 23:25:00+0000 [-] Starting Worker -- version: 4.2.1\n",
    ]
    assert last_activity(restarted, NOW, UPTIME) == LastActivity(BOOTING, 300)
    reconnected = restarted + [
        "2026-11-27 23:25:02+0000 [Broker,client] Connected to buildmaster; worker is ready\n",
    ]
    assert last_activity(reconnected, NOW, UPTIME) == LastActivity(READY, 298)


# --- Main loop terminated ---------------------------------------------------


def test_main_loop_terminated_as_last_event_is_stopped() -> None:
    lines = _log(WORKER_4_READY) + ["2026-11-27 23:20:01+0000 [-] Main loop terminated.\n"]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(STOPPED, 599)


def test_main_loop_terminated_followed_by_more_events_is_not_a_stop() -> None:
    lines = _log(WORKER_4_READY) + [
        "2026-11-27 23:20:01+0000 [-] Main loop terminated.\n",
        "2026-11-27 23:20:02+0000 [-] something else\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(READY, 598)


def test_main_loop_terminated_followed_by_non_event_lines_is_stopped() -> None:
    lines = _log(WORKER_4_READY) + [
        "2026-11-27 23:20:01+0000 [-] Main loop terminated.\n",
        "  a continuation line\n",
        "\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(STOPPED, 599)


# --- no events, uptime and boot ---------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [""],
        ["\n", "\r\n", "   "],
        ["tail: cannot open 'twistd.log.1' for reading: No such file or directory\n"],
        ["  PATH=/usr/bin\n", "garbage \u2603\n"],
    ],
)
def test_last_activity_without_events_is_unknown_with_uptime(lines: list[str]) -> None:
    assert last_activity(lines, NOW, 5000) == LastActivity(UNKNOWN, 5000)


def test_last_activity_events_without_markers_is_unknown() -> None:
    lines = ["2026-11-27 23:29:00+0000 [-] something unremarkable\n"]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(UNKNOWN, 60)


@pytest.mark.parametrize("uptime", [0, 1, 60, 179])
def test_short_uptime_is_booting_even_when_the_log_shows_a_running_command(uptime: int) -> None:
    assert last_activity(_log(WORKER_4_RUNNING), NOW, uptime) == LastActivity(BOOTING, uptime)


class _UnreadableLog:
    """Lines that fail the test if anything iterates over them."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the log was read")


def test_short_uptime_does_not_read_the_log() -> None:
    assert last_activity(_UnreadableLog(), NOW, 10) == LastActivity(BOOTING, 10)


def test_negative_uptime_is_booting_with_zero_seconds() -> None:
    assert last_activity(_UnreadableLog(), NOW, -5) == LastActivity(BOOTING, 0)


def test_uptime_at_grace_boundary_reads_log() -> None:
    lines = ["2026-11-27 23:29:00+0000 [-] Connected to buildmaster; worker is ready\n"]
    assert last_activity(lines, NOW, 180) == LastActivity(READY, 60)


def test_shutdown_before_machine_booted_is_booting() -> None:
    # Booted at 23:21:40; the slave shut down at 23:20:01, before the reboot.
    assert last_activity(_log(WORKER_4_SHUTDOWN), NOW, 500) == LastActivity(BOOTING, 599)


def test_ready_logged_before_machine_booted_is_booting() -> None:
    # Booted at 23:00:00; "ready" at 22:00:01 belongs to the previous boot.
    assert last_activity(_log(WORKER_4_READY), NOW, 1800) == LastActivity(BOOTING, 5399)


def test_marker_logged_at_boot_instant_counts_as_current() -> None:
    # Booted at 23:20:01, the very second "Server Shut Down." was logged.
    assert last_activity(_log(WORKER_4_SHUTDOWN), NOW, 599) == LastActivity(STOPPED, 599)


def test_running_command_before_machine_booted_is_booting() -> None:
    # The command cannot still be running: the machine rebooted since it started.
    assert last_activity(_log(SLAVE_08_RUNNING), NOW, 900) == LastActivity(BOOTING, 1200)


def test_ready_after_machine_booted_is_ready() -> None:
    # Booted at 21:59:59, one second before the slave logged anything.
    uptime = 5401
    assert last_activity(_log(SLAVE_08_READY), NOW, uptime) == LastActivity(READY, 5397)


# --- time zones -------------------------------------------------------------


def test_log_in_pacific_time_with_now_in_utc() -> None:
    # 15:20 -0800 is 23:20 UTC, ten minutes before NOW.
    lines = [
        "2026-11-27 15:00:00-0800 [-] Connected to buildbot-master01:9001; slave is ready\n",
        "2026-11-27 15:20:00-0800 [-] RunProcess._startCommand\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(RUNNING_COMMAND, 600)


def test_now_in_pacific_time_with_log_in_utc() -> None:
    now = datetime.datetime(2026, 11, 27, 15, 30, 0, tzinfo=PST)
    lines = ["2026-11-27 23:29:00+0000 [-] Server Shut Down.\n"]
    assert last_activity(lines, now, UPTIME) == LastActivity(STOPPED, 60)


def test_mixed_offsets_across_rotated_logs() -> None:
    # twistd.log.1 written under -0800, twistd.log under +0000 (the zone changed).
    lines = [
        "2026-11-27 14:00:00-0800 [-] Connected to buildmaster; worker is ready\n",
        "2026-11-27 14:05:00-0800 [-] (command 1): RunProcess._startCommand\n",
        "2026-11-27 23:00:00+0000 [-] (command 1): command finished with signal None, exit code 0\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(READY, 1800)


def test_naive_now_is_taken_as_utc() -> None:
    now = datetime.datetime(2026, 11, 27, 23, 30, 0)
    lines = ["2026-11-27 15:29:00-0800 [-] Server Shut Down.\n"]
    assert last_activity(lines, now, UPTIME) == LastActivity(STOPPED, 60)


def test_event_in_the_future_gives_zero_seconds() -> None:
    lines = ["2026-11-27 23:31:00+0000 [-] Connected to buildmaster; worker is ready\n"]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(READY, 0)


def test_fractional_seconds_are_floored() -> None:
    lines = ["2026-11-27 23:28:59.900+0000 [-] Connected to buildmaster; worker is ready\n"]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(READY, 60)


# --- robustness -------------------------------------------------------------


def test_robust_to_crlf_blank_lines_garbage_and_unicode() -> None:
    lines = [
        "\r\n",
        "\x00\x01 binary junk \xff\n",
        "2026-11-27 23:00:00+0000 [-] Connected to buildmaster; worker is ready\r\n",
        "",
        "2026-11-27 23:10:00+0000 [-] (command 1): RunProcess._startCommand\r\n",
        "  GREETING=h\u00e9llo w\u00f6rld \u2603\r\n",
        "2026-11-27 23:10:00+0000 [-] caf\u00e9 \U0001f600\r\n",
    ]
    assert last_activity(lines, NOW, UPTIME) == LastActivity(RUNNING_COMMAND, 1200)


def test_accepts_whole_log_as_one_string() -> None:
    assert last_activity(WORKER_4_FINISHED, NOW, UPTIME) == LastActivity(READY, 1200)


def test_accepts_generator_and_multi_line_chunks() -> None:
    chunks = (chunk for chunk in [WORKER_4_READY, "2026-11-27 23:29:59+0000 [-] Server Shut Down.\n"])
    assert last_activity(chunks, NOW, UPTIME) == LastActivity(STOPPED, 1)


def test_tail_headers_between_rotated_logs_are_ignored() -> None:
    text = (
        "==> /builds/slave/twistd.log.1 <==\n"
        "2026-11-27 23:00:00+0000 [-] RunProcess._startCommand\n"
        "\n"
        "==> /builds/slave/twistd.log <==\n"
        "2026-11-27 23:05:00+0000 [-] SlaveBuilder.commandComplete\n"
    )
    assert last_activity(text.splitlines(), NOW, UPTIME) == LastActivity(READY, 1500)
