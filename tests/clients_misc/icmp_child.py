"""
Run in a network namespace of its own by test_icmp.py: set the namespace up
as asked, run one in-process ICMP probe, print what it found as JSON.

Usage: icmp_child.py <setup> <address> <ping_deadline>, where setup is
C{lo-down} (the new namespace as it comes: sending fails), C{ignore} (lo up,
the kernel ignores echo requests: nothing answers) or C{datagram} (lo up,
ping_group_range admits every group: a datagram ICMP socket may be opened).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from slaveapi.clients.probe import Prober  # noqa: E402
from slaveapi.config import ProbeConfig  # noqa: E402


def _sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/net/ipv4/{name}", "w") as knob:
        knob.write(value)


def _set_up(setup: str) -> None:
    if setup == "lo-down":
        return
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if setup == "ignore":
        _sysctl("icmp_echo_ignore_all", "1")
    elif setup == "datagram":
        _sysctl("ping_group_range", "0 2147483647")


async def _probe(reactor: Any, address: str, deadline: float) -> None:
    prober = Prober(reactor, ProbeConfig(method="icmp", ping_count=2, ping_deadline=deadline), 22)

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the probe spawned a process")

    reactor.spawnProcess = no_process
    try:
        alive = await prober.alive(address)
        print(json.dumps({"alive": alive, "method": prober.icmp_method}))
    finally:
        await prober.close()


def main() -> None:
    setup, address, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3])
    _set_up(setup)
    task.react(lambda reactor: Deferred.fromCoroutine(_probe(reactor, address, deadline)))


if __name__ == "__main__":
    main()
