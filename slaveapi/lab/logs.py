"""
The lines a simulated slave's buildbot writes to its C{twistd.log}.

Real slaves run either a Buildbot 0.8 C{buildslave} (2015) or a Buildbot
4.x C{buildbot-worker}; both log through twistd, one line per event, as
C{2026-11-27 23:23:05+0000 [context] message} in the machine's local time
with its UTC offset. This module writes those lines for the events the
fleet simulates (start-up, commands, shutdown) in either flavour, with the
markers SlaveAPI reads (L{slaveapi.twistdlog}): "slave is ready" (0.8) or
"Connected to buildmaster; worker is ready" (4.x), "RunProcess._startCommand",
"commandComplete" (0.8) or "ProtocolCommandBase.command_complete" (4.x), and
"Server Shut Down.". It only formats text; which events happen when is
decided in L{slaveapi.lab.fleet}.
"""

from __future__ import annotations

import datetime

#: Buildbot 0.8 C{buildslave}: "slave is ready", "commandComplete".
STYLE_08 = "0.8"
#: Buildbot 4.x C{buildbot-worker}: "worker is ready", "command_complete".
STYLE_4X = "4.x"

_VERSIONS = {STYLE_08: "0.8.2-hg-41f0fbee10f4-production-0.8", STYLE_4X: "4.3.0"}


def local_time(epoch: float, tz_offset: str) -> datetime.datetime:
    """
    C{epoch} (whole seconds) as an aware time at the UTC offset C{tz_offset}.

    @param tz_offset: C{"+0000"}, C{"-0800"} and the like.
    """
    sign = -1 if tz_offset.startswith("-") else 1
    minutes = sign * (int(tz_offset[1:3]) * 60 + int(tz_offset[3:5]))
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone(datetime.timedelta(minutes=minutes)))


def timestamp(epoch: float, tz_offset: str) -> str:
    """Format C{epoch} the way twistd does, in the local time of C{tz_offset}."""
    return local_time(epoch, tz_offset).strftime("%Y-%m-%d %H:%M:%S") + tz_offset


def _line(epoch: float, tz_offset: str, context: str, message: str) -> str:
    return f"{timestamp(epoch, tz_offset)} [{context}] {message}"


def boot_lines(style: str, at: float, tz_offset: str, master: str) -> list[str]:
    """
    What a freshly started buildbot logs until it is connected and ready.

    @param at: when twistd started (Unix seconds); the connection to
        C{master} (C{host:port}) is logged a second later.
    """
    if style == STYLE_08:
        python, reactor = "/tools/buildbot/bin/python 2.7.3", "selectreactor.SelectReactor"
        starting = f"Starting BuildSlave -- version: {_VERSIONS[style]}"
        factory = "<buildslave.bot.BotFactory instance at 0x2b1c6d0>"
        ready = f"Connected to {master}; slave is ready"
        twistd = "twistd 10.2.0"
    else:
        python, reactor = "/usr/bin/python3 3.11.2", "epollreactor.EPollReactor"
        starting = f"Starting Worker -- version: {_VERSIONS[style]}"
        factory = "<buildbot_worker.pb.BotFactory object at 0x7f3a2c1e4d10>"
        ready = "Connected to buildmaster; worker is ready"
        twistd = "twistd 24.11.0"
    return [
        _line(at, tz_offset, "-", "Log opened."),
        _line(at, tz_offset, "-", f"{twistd} ({python}) starting up."),
        _line(at, tz_offset, "-", f"reactor class: twisted.internet.{reactor}."),
        _line(at, tz_offset, "-", starting),
        _line(at, tz_offset, "-", "recording hostname in twistd.hostname"),
        _line(at, tz_offset, "-", f"Starting factory {factory}"),
        _line(at, tz_offset, "-", f"Connecting to {master}"),
        _line(at + 1, tz_offset, "Broker,client", "message from master: attached"),
        _line(at + 1, tz_offset, "Broker,client", ready),
    ]


def command_start_lines(
    style: str, at: float, tz_offset: str, workdir: str, argv: list[str], home: str
) -> list[str]:
    """
    What a buildbot logs when the master starts a shell command on it.

    The 4.x worker dumps the command's environment, one variable a line and
    without timestamps; it holds a token, as real ones do, so that callers
    can check they never echo a log tail unfiltered.
    """
    shown = " ".join(argv)
    if style == STYLE_08:
        return [
            _line(at, tz_offset, "Broker,client", "startCommand:shell [id 1027]"),
            _line(at, tz_offset, "Broker,client", "RunProcess._startCommand"),
            _line(at, tz_offset, "Broker,client", f" {shown}"),
            _line(at, tz_offset, "Broker,client", f"  in dir {workdir} (timeout 1200 secs)"),
            _line(at, tz_offset, "Broker,client", "  watching logfiles {}"),
            _line(at, tz_offset, "Broker,client", f"  argv: {argv!r}"),
            _line(at, tz_offset, "Broker,client", f"  environment: {{'HOME': '{home}', 'PATH': '/usr/bin:/bin'}}"),
            _line(at, tz_offset, "Broker,client", "  closing stdin"),
            _line(at, tz_offset, "Broker,client", " using PTY: False"),
        ]
    prefix = f"(command {argv!r}):"
    return [
        _line(at, tz_offset, "-", f"{prefix} RunProcess._startCommand"),
        _line(at, tz_offset, "-", f"{prefix}  {shown}"),
        _line(at, tz_offset, "-", f"{prefix}  in dir {workdir} (timeout 1200 secs)"),
        _line(at, tz_offset, "-", f"{prefix}  watching logfiles {{}}"),
        _line(at, tz_offset, "-", f"{prefix}  argv: {argv!r}"),
        _line(at, tz_offset, "-", f"{prefix}  environment:"),
        f"  HOME={home}",
        "  PATH=/usr/local/bin:/usr/bin:/bin",
        "  TOOLTOOL_TOKEN=lab-fake-token-never-echo-me",
        f"  PWD={workdir}",
        _line(at, tz_offset, "-", f"{prefix}   using PTY: False"),
    ]


def command_end_lines(style: str, at: float, tz_offset: str, elapsed: float, argv: list[str]) -> list[str]:
    """What a buildbot logs when a command it ran exits with code 0."""
    if style == STYLE_08:
        return [
            _line(at, tz_offset, "-", f"command finished with signal None, exit code 0, elapsedTime: {elapsed:.6f}"),
            _line(
                at,
                tz_offset,
                "-",
                "SlaveBuilder.commandComplete <buildslave.commands.shell.SlaveShellCommand instance at 0x2b4e998>",
            ),
        ]
    prefix = f"(command {argv!r}):"
    return [
        _line(
            at, tz_offset, "-", f"{prefix} command finished with signal None, exit code 0, elapsedTime: {elapsed:.6f}"
        ),
        _line(at, tz_offset, "-", f"{prefix} ProtocolCommandBase.command_complete (success)"),
    ]


def graceful_shutdown_lines(style: str, at: float, tz_offset: str) -> list[str]:
    """What a buildbot logs when its master tells it to shut down."""
    who = "slave" if style == STYLE_08 else "worker"
    return [
        _line(at, tz_offset, "Broker,client", f"{who} shutting down on command from master"),
        _line(at, tz_offset, "-", "Main loop terminated."),
        _line(at, tz_offset, "-", "Server Shut Down."),
    ]


def sigterm_lines(at: float, tz_offset: str) -> list[str]:
    """What a buildbot logs when the OS stops it (a reboot from the shell)."""
    return [
        _line(at, tz_offset, "-", "Received SIGTERM, shutting down."),
        _line(at, tz_offset, "-", "Main loop terminated."),
        _line(at, tz_offset, "-", "Server Shut Down."),
    ]
