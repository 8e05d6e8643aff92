"""Tests for slaveapi.uptime: parsing uptime command output into seconds."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest

from slaveapi.uptime import (
    UptimeParseError,
    parse_net_statistics,
    parse_proc_uptime,
    parse_uptime_output,
)

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

UTC = datetime.UTC
PACIFIC_STANDARD = datetime.timezone(datetime.timedelta(hours=-8))


# --- /proc/uptime -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("350735.47 234388.90\n", 350735),
        ("350735.99 234388.90", 350735),
        ("0.01 0.00\n", 0),
        ("59.00 100.00\r\n", 59),
        ("  12345.6   7.8  \n", 12345),
        ("350735 234388\n", 350735),
        ("350735.47\n", 350735),
        ("Warning: Permanently added 'host' (RSA)\n350735.47 234388.90\n", 350735),
    ],
)
def test_parse_proc_uptime(text: str, expected: int) -> None:
    assert parse_proc_uptime(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "\n", "cat: /proc/uptime: No such file", "-5.0 1.0", "abc def", "1.0 2.0 3.0"],
)
def test_parse_proc_uptime_rejects(text: str) -> None:
    with pytest.raises(UptimeParseError):
        parse_proc_uptime(text)


# --- uptime -----------------------------------------------------------------

UPTIME_FORMS = [
    # procps (Linux)
    (
        " 10:14:25 up 78 days, 21:57,  2 users,  load average: 0.00, 0.01, 0.05",
        78 * DAY + 21 * HOUR + 57 * MINUTE,
    ),
    (" 10:37:00 up 1 day, 12:02,  7 users,  load average: 0.62, 0.47, 0.45", DAY + 12 * HOUR + 2 * MINUTE),
    ("up 1 day, 12:02,", DAY + 12 * HOUR + 2 * MINUTE),
    (" 07:38:12 up 33 min,  1 user,  load average: 4.26, 4.24, 3.51", 33 * MINUTE),
    ("up 33 min,", 33 * MINUTE),
    (" 08:18:28 up 0 min,  2 users,  load average: 1.52, 0.40, 0.13", 0),
    (" 10:18:11 up  2:00,  2 users,  load average: 0.07, 0.02, 0.00", 2 * HOUR),
    ("up 2:00,", 2 * HOUR),
    ("up  2:00", 2 * HOUR),
    ("up 2 days, 10 min,", 2 * DAY + 10 * MINUTE),
    ("up 2 days, 0 min,  1 user", 2 * DAY),
    ("up 1 day, 1 min", DAY + MINUTE),
    # BSD / macOS
    ("up 5 mins,", 5 * MINUTE),
    ("up 1 min,", MINUTE),
    ("up 3 hrs,", 3 * HOUR),
    ("up 1 hr,", HOUR),
    ("up 1 day, 2 hrs,", DAY + 2 * HOUR),
    ("up 12 secs,", 12),
    ("10:14  up 1 sec, 1 user, load averages: 0.10 0.10 0.10", 1),
    (
        "10:14  up 3 days, 4:02, 2 users, load averages: 1.00 1.10 1.20",
        3 * DAY + 4 * HOUR + 2 * MINUTE,
    ),
    ("10:37  up 1 day, 12:02, 7 users, load averages: 0.62 0.47 0.45", DAY + 12 * HOUR + 2 * MINUTE),
    ("up 2 days, 3 users", 2 * DAY),
    ("10:14  up 2 days, 3 users, load averages: 1.00 1.10 1.20", 2 * DAY),
    ("up 1 day, 1 user", DAY),
    ("up 14 days, 0 users,  load average: 0.00, 0.00, 0.00", 14 * DAY),
    # BusyBox (no user count)
    ("10:14:25 up 5 min,  load average: 0.00, 0.01, 0.05", 5 * MINUTE),
    # procps `uptime -p`
    ("up 2 weeks, 3 days, 4 hours, 5 minutes", 2 * WEEK + 3 * DAY + 4 * HOUR + 5 * MINUTE),
    ("up 1 week, 1 day, 1 hour, 1 minute", WEEK + DAY + HOUR + MINUTE),
    ("up 1 year, 2 weeks", 365 * DAY + 2 * WEEK),
    ("up 0 minutes", 0),
    ("up 45 seconds", 45),
    # noise and line endings
    ("UP 3 HRS,", 3 * HOUR),
    (" 10:14:25 up 78 days, 21:57,  2 users,  load average: 0.00, 0.01, 0.05\r\n", 78 * DAY + 21 * HOUR + 57 * MINUTE),
    ("Setting things up-to-date\n 10:14:25 up 33 min,  1 user\n", 33 * MINUTE),
    ("\n\n 10:14:25 up  1:05,  1 user\n", HOUR + 5 * MINUTE),
]


@pytest.mark.parametrize(("text", "expected"), UPTIME_FORMS)
def test_parse_uptime_output(text: str, expected: int) -> None:
    assert parse_uptime_output(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "up 1 user",
        " 10:14:25 up  1 user,  load average: 0.00, 0.01, 0.05",
        "up",
        "up ,",
        "no uptime here",
        "10:14:25 load average: 0.00, 0.01, 0.05",
        "up 3 fortnights,",
        "up 2:75,",
        "up five minutes",
        "backup 3 days,",
        "bash: uptime: command not found",
    ],
)
def test_parse_uptime_output_rejects(text: str) -> None:
    with pytest.raises(UptimeParseError):
        parse_uptime_output(text)


def test_uptime_parse_error_is_value_error_and_quotes_text() -> None:
    with pytest.raises(ValueError) as caught:
        parse_uptime_output("bash: uptime: command not found")
    assert isinstance(caught.value, UptimeParseError)
    assert str(caught.value) == "could not understand uptime output: 'bash: uptime: command not found'"
    assert caught.value.text == "bash: uptime: command not found"


def test_uptime_parse_error_truncates_long_text() -> None:
    text = "x" * 500
    error = UptimeParseError(text)
    quoted = "x" * 77 + "..."
    assert str(error) == f"could not understand uptime output: {quoted!r}"
    assert error.text == text


# --- net statistics server --------------------------------------------------

NET_STATISTICS_TEMPLATE = """\
Server Statistics for \\\\W-2008-SLAVE


Statistics since {since}


Sessions accepted                  1
Sessions timed-out                 0
Sessions errored-out               0

The command completed successfully.

"""


def _net_statistics(since: str) -> str:
    return NET_STATISTICS_TEMPLATE.format(since=since).replace("\n", "\r\n")


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("11/27/2026 9:58:01 PM", 2 * HOUR + 1 * MINUTE + 59),
        ("11/27/2026 21:58:01", 2 * HOUR + 1 * MINUTE + 59),
        ("2026-11-27 21:58:01", 2 * HOUR + 1 * MINUTE + 59),
        ("11/27/2026 9:58 PM", 2 * HOUR + 2 * MINUTE),
        ("11/27/2026 12:00:00 AM", 24 * HOUR),
        ("11/27/2026 12:00:00 PM", 12 * HOUR),
        ("11/27/2026 12:30:00 pm", 11 * HOUR + 30 * MINUTE),
        ("11/26/2026 11:59:59 PM", 24 * HOUR + 1),
        ("1/2/2026 3:04:05 AM", 329 * DAY + 20 * HOUR + 55 * MINUTE + 55),
        ("11/28/2026 0:00:00", 0),
        ("11/28/2026 0:00:01", 0),  # future (clock skew) clamps to zero
    ],
)
def test_parse_net_statistics_naive(since: str, expected: int) -> None:
    now = datetime.datetime(2026, 11, 28, 0, 0, 0)
    assert parse_net_statistics(_net_statistics(since), now) == expected


def test_parse_net_statistics_uses_timezone_of_now() -> None:
    # The date is local wall-clock time, read in now's zone, not UTC.
    now = datetime.datetime(2026, 11, 27, 23, 0, 0, tzinfo=PACIFIC_STANDARD)
    assert parse_net_statistics(_net_statistics("11/27/2026 9:58:01 PM"), now) == HOUR + MINUTE + 59


def test_parse_net_statistics_aware_now_in_utc() -> None:
    now = datetime.datetime(2026, 11, 28, 7, 0, 0, tzinfo=UTC)
    assert parse_net_statistics(_net_statistics("11/28/2026 6:00:00 AM"), now) == HOUR


def test_parse_net_statistics_counts_dst_change() -> None:
    # US DST ended at 2026-11-01 02:00 PDT; 00:00 -> 12:00 local is 13 real hours.
    pacific = zoneinfo.ZoneInfo("America/Los_Angeles")
    now = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=pacific)
    assert parse_net_statistics(_net_statistics("11/1/2026 12:00:00 AM"), now) == 13 * HOUR


def test_parse_net_statistics_accepts_bare_line() -> None:
    now = datetime.datetime(2026, 11, 27, 22, 0, 0)
    assert parse_net_statistics("Statistics since 11/27/2026 9:58:01 PM", now) == 119


@pytest.mark.parametrize(
    "text",
    [
        "",
        "System error 1 has occurred.\r\n",
        _net_statistics("yesterday"),
        _net_statistics("13/45/2026 9:58:01 PM"),
        _net_statistics("11/27/2026 13:58:01 PM"),
        _net_statistics("11/27/2026 0:58:01 AM"),
        _net_statistics("11/27/2026 25:00:00"),
        _net_statistics("27.11.2026 21:58:01"),
    ],
)
def test_parse_net_statistics_rejects(text: str) -> None:
    now = datetime.datetime(2026, 11, 28, 0, 0, 0)
    with pytest.raises(UptimeParseError):
        parse_net_statistics(text, now)


def test_parse_net_statistics_error_names_the_line() -> None:
    now = datetime.datetime(2026, 11, 28, 0, 0, 0)
    with pytest.raises(UptimeParseError) as caught:
        parse_net_statistics(_net_statistics("yesterday"), now)
    assert str(caught.value) == "could not understand net statistics date: 'Statistics since yesterday'"
