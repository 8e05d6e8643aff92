"""Work out what a buildbot slave/worker is doing from the tail of its twistd.log.

SlaveAPI decides whether a build machine is idle, busy, stopped or still
coming up by reading the last lines of the slave's ``twistd.log`` (and
``twistd.log.1``, for when the log has just rotated).  This module turns
those lines into a :class:`LastActivity`: a state plus how long ago the
slave last logged anything.  It understands the vocabulary of Buildbot 0.8
slaves and of current buildbot-worker (4.x) releases.

It only parses text: fetching the log and the machine's uptime is the
caller's job (see :mod:`slaveapi.uptime`).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "BOOTING",
    "BOOT_GRACE_SECONDS",
    "READY",
    "RUNNING_COMMAND",
    "STATES",
    "STOPPED",
    "UNKNOWN",
    "LastActivity",
    "LogEvent",
    "last_activity",
    "parse_log_line",
]

# The states a slave can be reported in (the values the 2015 API returned).
UNKNOWN = "unknown"
BOOTING = "booting"
STOPPED = "stopped"
READY = "ready"
RUNNING_COMMAND = "running_command"
STATES: tuple[str, ...] = (UNKNOWN, BOOTING, STOPPED, READY, RUNNING_COMMAND)

# A machine up for less than this is assumed to be booting, whatever its log says.
BOOT_GRACE_SECONDS = 180

# Substrings of a log message that mark a state change.  0.8 slave and 4.x
# worker wordings are listed together; matching is case-sensitive, as the
# messages are fixed strings in the slave's source.
_STOPPED_MARKERS: tuple[str, ...] = ("Server Shut Down.",)
_READY_MARKERS: tuple[str, ...] = (
    "slave is ready",  # 0.8
    "Connected to buildmaster; worker is ready",  # 4.x
)
_COMMAND_END_MARKERS: tuple[str, ...] = (
    "commandComplete",  # 0.8
    "stopCommand",  # 0.8
    "command finished with",  # 4.x
    "ProtocolCommandBase.command_complete",  # 4.x
)
_COMMAND_START_MARKERS: tuple[str, ...] = (
    "RunProcess._startCommand",  # 0.8 and 4.x
    "using PTY:",  # 0.8 " using PTY: True", 4.x "  using PTY: False"
)
_BOOT_MARKERS: tuple[str, ...] = (
    "Starting BuildSlave",  # 0.8
    "Starting Worker",  # 4.x
    "Log opened.",  # twistd, first line of a new process
)
# "twistd 22.10.0 (/usr/bin/python3 3.11.2) starting up."
_TWISTD_STARTING_RE = re.compile(r"\btwistd\b.*\bstarting up\b")
# Means "stopped" only when it is the last thing logged; normally
# "Server Shut Down." follows it anyway.
_MAIN_LOOP_TERMINATED = "Main loop terminated."

# "2026-11-27 23:23:05+0000 [Broker,client] message"; also accepts a
# fractional second, a "T" separator, "+05:30" and "Z".
_LINE_RE = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[ T]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?"
    r"\s?(?P<offset>Z|[+-]\d{2}:?\d{2})(?=\s|$)"
    r"(?:\s+\[(?P<context>[^\]]*)\])?"
    r"(?P<message>.*)",
    re.DOTALL,
)
_OFFSET_RE = re.compile(r"(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2})")


@dataclass(frozen=True)
class LogEvent:
    """One timestamped twistd.log line.

    ``timestamp`` is aware, with the UTC offset written in the line, so events
    logged under different offsets compare correctly.  ``message`` is the text
    after the ``[context]`` part, without surrounding whitespace.
    """

    timestamp: datetime.datetime
    message: str


@dataclass(frozen=True)
class LastActivity:
    """What a slave was last seen doing, and how many seconds ago.

    ``last_state`` is one of :data:`STATES`.
    """

    last_state: str
    last_activity_seconds: int


@dataclass(frozen=True)
class _Marker:
    """The state an event implies and when it was logged."""

    state: str
    timestamp: datetime.datetime


def parse_log_line(line: str) -> LogEvent | None:
    """Return the event on a twistd.log line, or None if it is not one.

    Only lines that start with a timestamp carrying a UTC offset are events;
    continuation lines (tracebacks, a 4.x worker's environment dump), blank
    lines and garbage give None rather than raising, since a log tail is
    routinely cut mid-entry.
    """
    match = _LINE_RE.fullmatch(line.lstrip("\ufeff").rstrip("\r\n"))
    if match is None:
        return None
    timestamp = _timestamp_from(match)
    if timestamp is None:
        return None
    return LogEvent(timestamp=timestamp, message=match.group("message").strip())


def _timestamp_from(match: re.Match[str]) -> datetime.datetime | None:
    """Build the aware timestamp of a matched line, or None if it is impossible."""
    tzinfo = _tzinfo_from(match.group("offset"))
    if tzinfo is None:
        return None
    fraction = match.group("fraction") or "0"
    try:
        return datetime.datetime(
            int(match.group("year")),
            int(match.group("month")),
            int(match.group("day")),
            int(match.group("hour")),
            int(match.group("minute")),
            int(match.group("second")),
            int(fraction.ljust(6, "0")),
            tzinfo=tzinfo,
        )
    except ValueError:  # e.g. month 13 or second 61
        return None


def _tzinfo_from(offset: str) -> datetime.timezone | None:
    """Turn ``+0000``, ``-08:00`` or ``Z`` into a fixed-offset timezone."""
    if offset == "Z":
        return datetime.UTC
    match = _OFFSET_RE.fullmatch(offset)
    if match is None:
        return None
    hours, minutes = int(match.group("hours")), int(match.group("minutes"))
    if hours > 23 or minutes > 59:
        return None
    delta = datetime.timedelta(hours=hours, minutes=minutes)
    return datetime.timezone(-delta if match.group("sign") == "-" else delta)


def last_activity(
    lines: Iterable[str], now: datetime.datetime, uptime: int
) -> LastActivity:
    """Decide a slave's state and idle time from its twistd.log lines.

    ``lines`` must run oldest to newest (``twistd.log.1`` then ``twistd.log``);
    ``now`` is the current time (a naive value is taken as UTC, because log
    timestamps are aware); ``uptime`` is the machine's uptime in seconds.

    The rules follow SlaveAPI's 2015 ``buildslave_last_activity``:

    * A machine up for under :data:`BOOT_GRACE_SECONDS` is ``booting``, with
      ``uptime`` as its idle time; the log is not read.
    * Otherwise the newest state-changing message decides: a command start
      with no end after it is ``running_command``; a finished command or the
      ready message is ``ready``; ``Server Shut Down.`` (or ``Main loop
      terminated.`` as the very last event) is ``stopped``; process start-up
      lines with nothing after them are ``booting``.  With no such message
      the state is ``unknown``.
    * If that message was logged before the machine last booted
      (``now - uptime``), it describes a previous boot: the slave has not
      logged anything since the machine came up, so the state is ``booting``.
    * ``last_activity_seconds`` is the time from the newest event to ``now``
      (never negative), or ``uptime`` when the log has no events at all.
    """
    if uptime < BOOT_GRACE_SECONDS:
        return LastActivity(BOOTING, max(0, uptime))
    events = list(_events(lines))
    if not events:
        return LastActivity(UNKNOWN, max(0, uptime))
    aware_now = _as_aware(now)
    marker = _decisive_marker(events)
    booted_at = aware_now - datetime.timedelta(seconds=uptime)
    if marker is None:
        state = UNKNOWN
    elif marker.timestamp < booted_at:
        state = BOOTING
    else:
        state = marker.state
    return LastActivity(state, _seconds_since(events[-1].timestamp, aware_now))


def _events(lines: Iterable[str]) -> Iterator[LogEvent]:
    """Yield the events in ``lines``, oldest first.

    A single string (a whole log) is split into lines rather than read one
    character at a time, and any item holding several lines is split too.
    """
    chunks: Iterable[str] = [lines] if isinstance(lines, str) else lines
    for chunk in chunks:
        for line in chunk.splitlines():
            event = parse_log_line(line)
            if event is not None:
                yield event


def _decisive_marker(events: Sequence[LogEvent]) -> _Marker | None:
    """Return the newest event that implies a state, as a :class:`_Marker`."""
    decisive: _Marker | None = None
    last_index = len(events) - 1
    for index, event in enumerate(events):
        state = _state_implied_by(event.message, is_last=index == last_index)
        if state is not None:
            decisive = _Marker(state, event.timestamp)
    return decisive


def _state_implied_by(message: str, is_last: bool) -> str | None:
    """Return the state a log message implies, or None if it implies none.

    ``is_last`` says whether nothing was logged after the message, which is
    what lets ``Main loop terminated.`` count as a stop.
    """
    if _contains_any(message, _STOPPED_MARKERS):
        return STOPPED
    if _contains_any(message, _READY_MARKERS):
        return READY
    if _contains_any(message, _COMMAND_END_MARKERS):
        return READY
    if _contains_any(message, _COMMAND_START_MARKERS):
        return RUNNING_COMMAND
    if _contains_any(message, _BOOT_MARKERS) or _TWISTD_STARTING_RE.search(message):
        return BOOTING
    if is_last and _MAIN_LOOP_TERMINATED in message:
        return STOPPED
    return None


def _contains_any(message: str, markers: tuple[str, ...]) -> bool:
    """Tell whether any of ``markers`` occurs in ``message``."""
    return any(marker in message for marker in markers)


def _as_aware(moment: datetime.datetime) -> datetime.datetime:
    """Return ``moment`` as an aware datetime, reading a naive one as UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment


def _seconds_since(then: datetime.datetime, now: datetime.datetime) -> int:
    """Return whole seconds from ``then`` to ``now``; 0 if ``then`` is later."""
    utc = datetime.UTC
    elapsed = (now.astimezone(utc) - then.astimezone(utc)).total_seconds()
    return max(0, int(elapsed))
