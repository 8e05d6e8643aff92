"""
Run the lab on its own: C{python -m slaveapi.lab --slaves N [--workdir DIR] [--boot-time S]}.

Starts the simulated fleet on the asyncio reactor, writes C{slaveapi.ini}
and C{credentials.json} (and C{reboot-paths.json}, the reboot method each
machine should need) into the work directory, prints the ini's path and
text, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m slaveapi.lab", description="Run SlaveAPI's simulated fleet.")
    parser.add_argument("--slaves", type=int, default=12, help="number of machines (default 12)")
    parser.add_argument("--workdir", default=None, help="where to write the config (default: a new temp dir)")
    parser.add_argument("--boot-time", type=float, default=3.0, help="seconds a reboot takes (default 3)")
    parser.add_argument(
        "--refuse-ssh-share", type=float, default=0.0,
        help="share of ordinary machines with a BMC whose SSH refuses logins (their reboots go to IPMI)",
    )
    parser.add_argument(
        "--redfish-share", type=float, default=None,
        help="share of machines with a BMC whose BMC speaks Redfish instead of IPMI (default 0.25)",
    )
    parser.add_argument(
        "--health-interval", type=float, default=None,
        help="seconds between SlaveAPI's health sweeps written into the ini (default 20; 0: no health loop)",
    )
    parser.add_argument("--listen", default="tcp:9999:interface=127.0.0.1", help="SlaveAPI's endpoint in the ini")
    arguments = parser.parse_args(argv)
    if arguments.slaves < 0:
        parser.error("--slaves must be >= 0")
    if arguments.boot_time < 0:
        parser.error("--boot-time must be >= 0")
    if arguments.health_interval is not None and not _health_interval_ok(arguments.health_interval):
        parser.error(f"--health-interval must be 0 (no health loop) or at least 1, got {arguments.health_interval:g}")
    if arguments.redfish_share is not None and not 0 <= arguments.redfish_share <= 1:
        parser.error("--redfish-share must be between 0 and 1")
    return arguments


def _health_interval_ok(seconds: float) -> bool:
    """Whether C{[health] interval} can take C{seconds}: at least 1, or 0 for no health loop."""
    return seconds == 0 or seconds >= 1


def main(argv: list[str] | None = None) -> int:
    """Run the lab until interrupted."""
    arguments = _arguments(argv)
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from slaveapi.lab import Lab

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    workdir = arguments.workdir or tempfile.mkdtemp(prefix="slaveapi-lab-")
    lab = Lab.start(
        reactor,
        slaves=arguments.slaves,
        workdir=workdir,
        boot_time=arguments.boot_time,
        refuse_ssh_share=arguments.refuse_ssh_share,
        **({} if arguments.redfish_share is None else {"redfish_share": arguments.redfish_share}),
        **({} if arguments.health_interval is None else {"health_interval": arguments.health_interval}),
    )
    ini = lab.write_config(workdir, listen=arguments.listen)
    with open(os.path.join(workdir, "reboot-paths.json"), "w", encoding="utf-8") as handle:
        json.dump(lab.reboot_paths(), handle, indent=1)
    with open(ini, encoding="utf-8") as handle:
        text = handle.read()

    def announce(_: object) -> None:
        # Printed once every part answers, so a reader of the first line can start at once.
        print(ini)
        print(text, flush=True)

    def failed(failure: Any) -> None:
        print(f"slaveapi.lab: the lab did not start: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    lab.ready().addCallbacks(announce, failed)
    reactor.addSystemEventTrigger("before", "shutdown", lab.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
