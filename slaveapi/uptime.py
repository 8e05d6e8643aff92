"""Turn the text printed by a machine's uptime commands into seconds.

SlaveAPI asks a build machine how long it has been up (to tell a machine that
is still booting from one whose build slave is hung) by running a command over
SSH and reading what it prints.  Which command works depends on the OS:

* Linux: ``cat /proc/uptime`` -> :func:`parse_proc_uptime`
* Linux (procps), BSD and macOS: ``uptime`` -> :func:`parse_uptime_output`
* Windows: ``net statistics server`` -> :func:`parse_net_statistics`

Each parser returns whole seconds as an ``int`` and raises
:class:`UptimeParseError` when it cannot understand the text, so the caller
never acts on a guessed value.  The module only parses text: it runs nothing
and depends on nothing outside the standard library.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

__all__ = [
    "UptimeParseError",
    "parse_net_statistics",
    "parse_proc_uptime",
    "parse_uptime_output",
]

_EXCERPT_LIMIT = 80

_SECONDS_PER_MINUTE = 60
_SECONDS_PER_HOUR = 60 * _SECONDS_PER_MINUTE
_SECONDS_PER_DAY = 24 * _SECONDS_PER_HOUR
_SECONDS_PER_YEAR = 365 * _SECONDS_PER_DAY  # what procps-ng `uptime -p` uses

# Every unit word that procps (plain and ``-p``), BSD and macOS print.
_UNIT_SECONDS: dict[str, int] = {
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "min": _SECONDS_PER_MINUTE,
    "mins": _SECONDS_PER_MINUTE,
    "minute": _SECONDS_PER_MINUTE,
    "minutes": _SECONDS_PER_MINUTE,
    "hr": _SECONDS_PER_HOUR,
    "hrs": _SECONDS_PER_HOUR,
    "hour": _SECONDS_PER_HOUR,
    "hours": _SECONDS_PER_HOUR,
    "day": _SECONDS_PER_DAY,
    "days": _SECONDS_PER_DAY,
    "week": 7 * _SECONDS_PER_DAY,
    "weeks": 7 * _SECONDS_PER_DAY,
    "year": _SECONDS_PER_YEAR,
    "years": _SECONDS_PER_YEAR,
    "decade": 10 * _SECONDS_PER_YEAR,
    "decades": 10 * _SECONDS_PER_YEAR,
}

# Words that end the duration part of an `uptime` line ("2 users").
_USER_WORDS: tuple[str, ...] = ("user", "users")

# "350735.47 234388.90": seconds up, then seconds idle (summed over CPUs).
_PROC_UPTIME_RE = re.compile(r"\s*(\d+)(?:\.\d*)?(?:\s+\d+(?:\.\d*)?)?\s*")

# The word "up" that starts the duration in `uptime` output.
_UP_RE = re.compile(r"\bup\b\s*", re.IGNORECASE)
_CLOCK_RE = re.compile(r"(\d+):(\d{2})")
_AMOUNT_RE = re.compile(r"(\d+)\s+([a-z]+)")

_STATISTICS_SINCE_RE = re.compile(r"^\s*statistics since\s+(.*?)\s*$", re.IGNORECASE)
# 11/27/2026 9:58:01 PM, 11/27/2026 21:58:01, 11/27/2026 9:58 p.m.
_US_DATE_RE = re.compile(
    r"(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})\s+"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"(?:\s*(?P<ampm>[ap])\.?m\.?)?",
    re.IGNORECASE,
)
# 2026-11-27 21:58:01
_ISO_DATE_RE = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})[ T]"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
)


class UptimeParseError(ValueError):
    """Raised when command output does not say how long a machine has been up.

    ``text`` keeps the full text that was not understood; the message quotes
    at most about 80 characters of it so log lines stay readable.
    """

    def __init__(self, text: str, what: str = "uptime output") -> None:
        self.text = text
        super().__init__(f"could not understand {what}: {_excerpt(text)!r}")


@dataclass(frozen=True)
class _Clock:
    """A wall-clock date and time as printed by Windows, before validation."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int


def _excerpt(text: str, limit: int = _EXCERPT_LIMIT) -> str:
    """Shorten ``text`` to at most ``limit`` characters for an error message."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def parse_proc_uptime(text: str) -> int:
    """Return the whole seconds of uptime in Linux ``cat /proc/uptime`` output.

    The first number is the uptime; the fraction is dropped (floor), since a
    partial second never matters to the callers and ints are easier to compare.
    Lines that are not ``/proc/uptime`` content (such as an SSH banner) are
    skipped; if no line fits, :class:`UptimeParseError` is raised.
    """
    for line in text.splitlines():
        match = _PROC_UPTIME_RE.fullmatch(line)
        if match:
            return int(match.group(1))
    raise UptimeParseError(text, "/proc/uptime output")


def parse_uptime_output(text: str) -> int:
    """Return the seconds of uptime in the output of the ``uptime`` command.

    Understands procps (Linux), BSD and macOS layouts, e.g.
    ``10:14:25 up 78 days, 21:57,  2 users,  load average: ...``,
    ``10:14  up 12 secs, 1 user, load averages: ...``, ``up 1 day, 2 hrs,``
    and procps ``uptime -p`` (``up 2 weeks, 3 days, 4 hours, 5 minutes``).
    The first line that reads as an uptime wins, so stray lines such as an
    SSH banner are harmless.  The result is only minute-accurate for most
    layouts because that is all ``uptime`` prints.

    Raises :class:`UptimeParseError` if no line states a duration (a user
    count alone, as in ``up 1 user``, is not a duration).
    """
    for line in text.splitlines():
        seconds = _parse_uptime_line(line)
        if seconds is not None:
            return seconds
    raise UptimeParseError(text, "uptime output")


def _parse_uptime_line(line: str) -> int | None:
    """Return the seconds stated after ``up`` on one line, or None if none are."""
    match = _UP_RE.search(line)
    if match is None:
        return None
    total = 0
    found_duration = False
    for piece in line[match.end() :].lower().split(","):
        piece = piece.strip()
        if not piece:
            continue
        if _ends_duration(piece):
            break
        seconds = _piece_seconds(piece)
        if seconds is None:
            return None
        total += seconds
        found_duration = True
    return total if found_duration else None


def _ends_duration(piece: str) -> bool:
    """Tell whether a comma-separated piece is past the duration ("2 users")."""
    if piece.startswith("load average"):
        return True
    amount = _AMOUNT_RE.fullmatch(piece)
    return amount is not None and amount.group(2) in _USER_WORDS


def _piece_seconds(piece: str) -> int | None:
    """Return the seconds in one piece such as ``2:00`` or ``3 hrs``, else None."""
    clock = _CLOCK_RE.fullmatch(piece)
    if clock is not None:
        hours, minutes = int(clock.group(1)), int(clock.group(2))
        if minutes >= 60:
            return None
        return hours * _SECONDS_PER_HOUR + minutes * _SECONDS_PER_MINUTE
    amount = _AMOUNT_RE.fullmatch(piece)
    if amount is not None and amount.group(2) in _UNIT_SECONDS:
        return int(amount.group(1)) * _UNIT_SECONDS[amount.group(2)]
    return None


def parse_net_statistics(text: str, now: datetime.datetime) -> int:
    """Return seconds since the "Statistics since" date in ``net statistics server``.

    Windows prints when the Server service started, which is boot time for
    practical purposes, as local wall-clock time with no zone, e.g.
    ``Statistics since 11/27/2026 9:58:01 PM`` (US 12- or 24-hour forms and
    ``2026-11-27 21:58:01`` are accepted).  That date is taken to be in the
    time zone of ``now`` (naive if ``now`` is naive); aware values are
    compared as instants, so a DST change in between is counted correctly.
    A date in the future (clock skew) gives 0 rather than a negative uptime.

    Raises :class:`UptimeParseError` if the line is missing or its date is
    not understood.
    """
    for line in text.splitlines():
        match = _STATISTICS_SINCE_RE.match(line)
        if match is None:
            continue
        since = _parse_windows_date(match.group(1), now.tzinfo)
        if since is None:
            raise UptimeParseError(line, "net statistics date")
        return max(0, int(_elapsed_seconds(since, now)))
    raise UptimeParseError(text, "net statistics output")


def _parse_windows_date(
    text: str, tzinfo: datetime.tzinfo | None
) -> datetime.datetime | None:
    """Return the date in ``text`` placed in ``tzinfo``, or None if unreadable."""
    clock = _read_us_date(text) or _read_iso_date(text)
    if clock is None:
        return None
    try:
        return datetime.datetime(
            clock.year,
            clock.month,
            clock.day,
            clock.hour,
            clock.minute,
            clock.second,
            tzinfo=tzinfo,
        )
    except ValueError:  # e.g. 13/45/2026 or 25:00
        return None


def _read_us_date(text: str) -> _Clock | None:
    """Read ``M/D/YYYY H:MM[:SS] [AM|PM]``, converting 12-hour times to 24-hour."""
    match = _US_DATE_RE.fullmatch(text)
    if match is None:
        return None
    hour = int(match.group("hour"))
    ampm = match.group("ampm")
    if ampm is not None:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.lower() == "p" else 0)
    return _clock_from(match, hour)


def _read_iso_date(text: str) -> _Clock | None:
    """Read ``YYYY-MM-DD HH:MM[:SS]``."""
    match = _ISO_DATE_RE.fullmatch(text)
    if match is None:
        return None
    return _clock_from(match, int(match.group("hour")))


def _clock_from(match: re.Match[str], hour: int) -> _Clock:
    """Build a :class:`_Clock` from a date match and an already-converted hour."""
    second = match.group("second")
    return _Clock(
        year=int(match.group("year")),
        month=int(match.group("month")),
        day=int(match.group("day")),
        hour=hour,
        minute=int(match.group("minute")),
        second=int(second) if second is not None else 0,
    )


def _elapsed_seconds(since: datetime.datetime, now: datetime.datetime) -> float:
    """Return real seconds from ``since`` to ``now``.

    Aware values go through UTC first: subtracting two datetimes that share a
    tzinfo would otherwise ignore a DST change between them.
    """
    if now.tzinfo is None:
        return (now - since).total_seconds()
    utc = datetime.UTC
    return (now.astimezone(utc) - since.astimezone(utc)).total_seconds()
