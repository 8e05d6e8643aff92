"""
The C{twistd slaveapi} plugin: command-line options and the service they make.

Run it as C{twistd -n -r asyncio slaveapi --config slaveapi.ini} or, against
the built-in simulated fleet, C{twistd -n -r asyncio slaveapi --lab 12}.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


class Options(usage.Options):
    """C{twistd slaveapi} options."""

    optParameters = [
        ["config", "c", None, "The ini configuration file (see examples/slaveapi.ini)."],
        ["listen", "l", None, "Twisted server endpoint to listen on [default: tcp:9999:interface=127.0.0.1]."],
        ["data", "d", ".", "Directory of the results database (and SSH known hosts)."],
        ["lab", None, None, "Start a simulated lab of N machines and use it; needs no config.", _positive_int],
        ["lab-boot-time", None, 5.0, "Seconds a lab machine takes to boot.", float],
        ["lab-health-interval", None, 20.0, "Seconds between health sweeps of the lab; 0: none.", float],
    ]

    def postOptions(self) -> None:
        if self["lab"] is not None and self["config"] is not None:
            raise usage.UsageError("--lab and --config exclude each other: the lab writes its own config")
        if self["lab"] is None and self["config"] is None:
            raise usage.UsageError("give --config PATH, or --lab N for the simulated fleet")
        interval = self["lab-health-interval"]
        # [health] interval takes at least 1 s; 0 writes no health loop into the lab's ini.
        if interval != 0 and not interval >= 1:
            raise usage.UsageError(f"--lab-health-interval must be 0 (no health loop) or at least 1, got {interval:g}")


@implementer(IServiceMaker, IPlugin)
class SlaveAPIServiceMaker:
    """Makes the SlaveAPI service for twistd."""

    tapname = "slaveapi"
    description = "SlaveAPI: look after a fleet of CI build and test machines over HTTP."
    options = Options

    def makeService(self, options: Options) -> Any:
        from twisted.internet import reactor

        from slaveapi.fdlimit import raise_open_files_limit
        from slaveapi.service import ServiceOptions, StartupError, make_service

        # A reboot wave holds a socket per SSH session and probe: more than the usual 1,024.
        raise_open_files_limit()
        try:
            return make_service(
                ServiceOptions(
                    config=options["config"],
                    listen=options["listen"],
                    data=options["data"],
                    lab=options["lab"],
                    lab_boot_time=options["lab-boot-time"],
                    lab_health_interval=options["lab-health-interval"],
                ),
                reactor,
            )
        except StartupError as error:
            sys.stderr.write(f"slaveapi: {error}\n")
            raise SystemExit(1) from None


serviceMaker = SlaveAPIServiceMaker()
