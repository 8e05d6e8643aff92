"""
What a simulated machine's shell prints for the commands SlaveAPI runs over SSH.

L{run} takes the command line of an SSH exec request and answers with what
the machine's real shell would print: C{uptime} in procps (Linux) or BSD
(macOS) layout, C{cat /proc/uptime}, C{net statistics server} (Windows),
C{tail} of the buildbot's twistd.log, and the reboot commands. Commands may
be joined with C{;}, C{&&} and C{||}. Anything else is "not found", as on a
machine without that program. Pure text: the SSH server in
L{slaveapi.lab.ssh} carries it and carries out reboots.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass

from slaveapi.lab.logs import local_time
from slaveapi.lab.machines import LINUX, MACOS, WINDOWS, LabMachine, posix_path

_REBOOT_COMMANDS = (
    ("reboot",),
    ("sudo", "reboot"),
    ("shutdown", "-f", "-t", "3", "-r"),
    ("shutdown", "-r", "now"),
    ("sudo", "shutdown", "-r", "now"),
)
_OPERATORS = (";", "&&", "||")


@dataclass(frozen=True)
class CommandResult:
    """
    The outcome of one command line.

    @ivar reboot: the command asked the machine to reboot; the caller
        reboots it once the answer is sent.
    """

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    reboot: bool = False


def run(machine: LabMachine, command: str, now: float) -> CommandResult:
    """Run C{command} (an exec request's command line) on C{machine} at C{now}."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return CommandResult(stderr="sh: 1: Syntax error: Unterminated quoted string\n", exit_code=2)
    for token in tokens:
        if token and all(c in lexer.punctuation_chars for c in token) and token not in _OPERATORS:
            return CommandResult(stderr=f"sh: 1: Syntax error: {token!r} is not supported by the lab\n", exit_code=2)

    stdout, stderr, status, reboot = [], [], 0, False
    operator = ";"
    for argv, next_operator in _split(tokens):
        if (operator == "&&" and status != 0) or (operator == "||" and status == 0):
            operator = next_operator
            continue
        result = _run_one(machine, argv, now)
        stdout.append(result.stdout)
        stderr.append(result.stderr)
        status = result.exit_code
        reboot = reboot or result.reboot
        operator = next_operator
    return CommandResult("".join(stdout), "".join(stderr), status, reboot)


def _split(tokens: list[str]) -> list[tuple[list[str], str]]:
    """Cut a token list at the operators: (argv, operator after it)."""
    commands: list[tuple[list[str], str]] = []
    argv: list[str] = []
    for token in tokens:
        if token in _OPERATORS:
            commands.append((argv, token))
            argv = []
        else:
            argv.append(token)
    commands.append((argv, ";"))
    return commands


def _run_one(machine: LabMachine, argv: list[str], now: float) -> CommandResult:
    if not argv:
        return CommandResult()
    program = argv[0]
    if tuple(argv) in _REBOOT_COMMANDS:
        return CommandResult(reboot=True)
    if argv == ["uptime"] and machine.os in (LINUX, MACOS):
        local = local_time(now, machine.tz_offset)
        if machine.os == LINUX:
            return CommandResult(procps_uptime(local, machine.uptime(now), machine.users, machine.load))
        return CommandResult(bsd_uptime(local, machine.uptime(now), machine.users, machine.load))
    if program == "cat":
        return _cat(machine, argv[1:], now)
    if [word.lower() for word in argv] == ["net", "statistics", "server"] and machine.os == WINDOWS:
        return CommandResult(net_statistics_server(machine.name, machine.booted_at))
    if program == "tail":
        return _tail(machine, argv[1:])
    return CommandResult(stderr=f"sh: 1: {program}: not found\n", exit_code=127)


def _cat(machine: LabMachine, paths: list[str], now: float) -> CommandResult:
    out, err, status = [], [], 0
    files = machine.files()
    for path in paths:
        if path == "/proc/uptime" and machine.os == LINUX:
            out.append(proc_uptime(machine.uptime(now)))
        elif posix_path(path) in files:
            out.append("".join(line + "\n" for line in files[posix_path(path)]))
        else:
            err.append(f"cat: {path}: No such file or directory\n")
            status = 1
    return CommandResult("".join(out), "".join(err), status)


def _tail(machine: LabMachine, args: list[str]) -> CommandResult:
    """C{tail [-n N | -N | -nN | --lines=N] FILE}: the last lines of one file."""
    count = "10"
    paths: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-n" and index + 1 < len(args):
            count = args[index + 1]
            index += 1
        elif arg.startswith("--lines="):
            count = arg[len("--lines=") :]
        elif arg.startswith("-n"):
            count = arg[2:]
        elif arg.startswith("-") and arg[1:].isdigit():
            count = arg[1:]
        elif arg.startswith("-") and arg != "-":
            return CommandResult(stderr=f"tail: invalid option -- '{arg[1:2]}'\n", exit_code=1)
        else:
            paths.append(arg)
        index += 1
    if not count.isdigit():
        return CommandResult(stderr=f"tail: invalid number of lines: '{count}'\n", exit_code=1)
    if len(paths) != 1:
        return CommandResult(stderr="tail: the lab reads exactly one file\n", exit_code=1)
    path = paths[0]
    lines = machine.files().get(posix_path(path))
    if lines is None:
        return CommandResult(
            stderr=f"tail: cannot open '{path}' for reading: No such file or directory\n", exit_code=1
        )
    wanted = int(count)
    chosen = lines[-wanted:] if wanted else []
    return CommandResult("".join(line + "\n" for line in chosen))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def procps_uptime(local: datetime.datetime, seconds: int, users: int, load: tuple[float, float, float]) -> str:
    """
    Linux (procps) C{uptime}: C{" 10:14:25 up 78 days, 21:57,  2 users,  load average: 0.00, 0.01, 0.05"}.

    Days if any, then C{H:MM} when there are whole hours, else C{N min}.
    """
    days, rest = divmod(seconds, 86400)
    hours, minutes = (rest // 60) // 60, (rest // 60) % 60
    text = f" {local:%H:%M:%S} up "
    if days:
        text += _plural(days, "day") + ", "
    text += f"{hours:2d}:{minutes:02d}, " if hours else f"{minutes} min, "
    text += f"{users:2d} user{'' if users == 1 else 's'}, "
    text += f" load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}\n"
    return text


def bsd_uptime(local: datetime.datetime, seconds: int, users: int, load: tuple[float, float, float]) -> str:
    """
    macOS (BSD w.c) C{uptime}: C{" 10:14  up 3 days,  4:02, 2 users, load averages: 1.00 1.10 1.20"}.

    Past a minute the uptime is rounded to the nearest minute; then days,
    and C{H:MM}, C{N hrs}, C{N mins} or (under a minute) C{N secs}.
    """
    if seconds > 60:
        seconds += 30
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f" {local:%H:%M}  up"
    if days > 0:
        text += f" {days} day{'s' if days > 1 else ''},"
    if hours > 0 and minutes > 0:
        text += f" {hours:2d}:{minutes:02d},"
    elif hours > 0:
        text += f" {hours} hr{'s' if hours > 1 else ''},"
    elif minutes > 0:
        text += f" {minutes} min{'s' if minutes > 1 else ''},"
    else:
        text += f" {secs} sec{'s' if secs > 1 else ''},"
    text += f" {users} user{'' if users == 1 else 's'},"
    text += f" load averages: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    return text


def proc_uptime(seconds: float) -> str:
    """Linux C{/proc/uptime}: seconds up, then idle seconds summed over (two) CPUs."""
    return f"{seconds:.2f} {seconds * 1.7:.2f}\n"


def net_statistics_server(name: str, booted_at: float) -> str:
    """
    Windows C{net statistics server}, with "Statistics since" the boot time in UTC.

    Lines end in CRLF, as Windows writes them.
    """
    since = datetime.datetime.fromtimestamp(int(booted_at), datetime.UTC)
    hour12 = since.hour % 12 or 12
    stamp = f"{since.month}/{since.day}/{since.year} {hour12}:{since:%M:%S} {'PM' if since.hour >= 12 else 'AM'}"
    counters = [
        ("Sessions accepted", 1),
        ("Sessions timed-out", 0),
        ("Sessions errored-out", 0),
        None,
        ("Kilobytes sent", 12),
        ("Kilobytes received", 31),
        None,
        ("Mean response time (msec)", 0),
        None,
        ("System errors", 0),
        ("Permission violations", 0),
        ("Password violations", 0),
        None,
        ("Files accessed", 4),
        ("Communication devices accessed", 0),
        ("Print jobs spooled", 0),
        None,
        ("Times buffers exhausted", None),
        None,
        ("  Big buffers", 0),
        ("  Request buffers", 0),
    ]
    lines = [f"Server Statistics for \\\\{name.upper()}", "", "", f"Statistics since {stamp}", "", ""]
    for counter in counters:
        if counter is None:
            lines.append("")
        elif counter[1] is None:
            lines.append(counter[0])
        else:
            lines.append(f"{counter[0]:<35}{counter[1]}")
    lines += ["", "The command completed successfully.", "", ""]
    return "\r\n".join(lines)
