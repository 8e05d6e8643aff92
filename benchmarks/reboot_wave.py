"""
A reboot wave: every machine of a lab rebooted at once, through SlaveAPI's HTTP API.

Starts the standalone lab (C{python -m slaveapi.lab}) and SlaveAPI (twistd)
as two processes on loopback, so the server's memory is measured without
the lab's. Then:

  1. reboots one SSH machine and one IPMI machine alone (single-machine time);
  2. POSTs a reboot for every other machine at once;
  3. polls C{GET /results} while the wave runs, timing each answer;
  4. prints the wave's wall time, how each reboot ended, the p50/p99 of
     the C{/results} latency, and the server's peak RSS (and its IPMI
     worker processes').

Usage: C{.venv/bin/python benchmarks/reboot_wave.py [--slaves 200] [--boot-time 3]}
Everything is bounded: the wave gives up after C{--limit} seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

_PORT = re.compile(r"Site starting on (\d+)")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slaves", type=int, default=200)
    parser.add_argument("--boot-time", type=float, default=3.0)
    parser.add_argument("--ipmi-share", type=float, default=0.5, help="share of BMC machines refusing SSH logins")
    parser.add_argument("--limit", type=float, default=900.0, help="give up on the wave after this many seconds")
    return parser.parse_args()


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def _start_lab(args: argparse.Namespace, workdir: str) -> tuple[subprocess.Popen[str], str]:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "lab.log"), "w") as log:
        lab = subprocess.Popen(
            [
                sys.executable, "-m", "slaveapi.lab", "--slaves", str(args.slaves), "--boot-time", str(args.boot_time),
                "--workdir", workdir, "--refuse-ssh-share", str(args.ipmi_share),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert lab.stdout is not None
    return lab, lab.stdout.readline().strip()


def _start_server(ini: str, data: str) -> tuple[subprocess.Popen[bytes], int]:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log_path = os.path.join(data, "server.log")
    os.makedirs(data, exist_ok=True)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [twistd, "-n", "-r", "asyncio", "--pidfile=", "slaveapi", "--config", ini, "--data", data,
             "--listen", "tcp:0:interface=127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            match = _PORT.search(handle.read())
        if match:
            return server, int(match.group(1))
        time.sleep(0.1)
    server.kill()
    raise SystemExit("SlaveAPI did not start; see " + log_path)


async def _wave(args: argparse.Namespace, url: str, names: list[str], server_pid: int) -> dict[str, Any]:
    import treq
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import deferLater
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 50

    async def post(name: str, waittime: float) -> dict[str, Any]:
        response = await treq.post(
            f"{url}/slaves/{name}/actions/reboot", data={"waittime": str(waittime)}, pool=pool, timeout=args.limit
        )
        return await response.json()

    async def single(name: str) -> tuple[float, str]:
        started = time.monotonic()
        result = await post(name, args.limit)
        return time.monotonic() - started, result["text"].split("\n")[-1]

    ssh_name, ipmi_name = names[0], names[1]
    single_ssh = await single(ssh_name)
    single_ipmi = await single(ipmi_name)

    wave_names = names[2:]
    started = time.monotonic()
    queued = await gatherResults([Deferred.fromCoroutine(post(name, 0)) for name in wave_names])
    pending = {(name, str(result["requestid"])) for name, result in zip(wave_names, queued, strict=True)}
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    while pending and time.monotonic() - started < args.limit:
        asked = time.monotonic()
        response = await treq.get(f"{url}/results", pool=pool, timeout=60)
        results = await response.json()
        latencies.append(time.monotonic() - asked)
        for name, requestid in list(pending):
            result = results.get(name, {}).get("reboot", {}).get(requestid)
            if result and result["state"] in (2, 3):
                pending.discard((name, requestid))
                last = result["text"].split("\n")[-1]
                outcomes[re.sub(r"\d+", "N", last.split("(")[0]).strip()] += 1
        await deferLater(reactor, 0.25, lambda: None)
    wall = time.monotonic() - started
    await pool.closeCachedConnections()
    return {
        "single_ssh": single_ssh,
        "single_ipmi": single_ipmi,
        "wave_size": len(wave_names),
        "wave_wall": wall,
        "unfinished": len(pending),
        "outcomes": outcomes,
        "latencies": latencies,
        "server_rss_kib": _peak_rss_kib(server_pid),
        "workers_rss_kib": sum(_peak_rss_kib(child) for child in _children(server_pid)),
    }


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> int:
    args = _arguments()
    workdir = tempfile.mkdtemp(prefix="reboot-wave-")
    lab, ini = _start_lab(args, os.path.join(workdir, "lab"))
    server = None
    try:
        server, port = _start_server(ini, os.path.join(workdir, "data"))
        with open(os.path.join(workdir, "lab", "reboot-paths.json"), encoding="utf-8") as handle:
            roles = json.load(handle)
        ssh_names = [name for name, role in roles.items() if role == "ssh"]
        ipmi_names = [name for name, role in roles.items() if role == "ipmi"]
        others = [name for name in roles if name not in (ssh_names[0], ipmi_names[0])]
        names = [ssh_names[0], ipmi_names[0], *others]

        from twisted.internet import asyncioreactor

        asyncioreactor.install()
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        outcome: dict[str, Any] = {}

        def run() -> Deferred[None]:
            async def go() -> None:
                try:
                    outcome.update(await _wave(args, f"http://127.0.0.1:{port}", names, server.pid))
                finally:
                    reactor.stop()

            return Deferred.fromCoroutine(go())

        reactor.callWhenRunning(run)
        reactor.run()
    finally:
        for process in (server, lab):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()

    latencies = outcome["latencies"]
    print(f"reboot wave: {args.slaves} lab machines, boot time {args.boot_time:g} s, "
          f"{args.ipmi_share:.0%} of BMC machines refuse SSH (IPMI path)")
    print(f"single-machine reboot: SSH {outcome['single_ssh'][0]:.2f} s ({outcome['single_ssh'][1]}), "
          f"IPMI {outcome['single_ipmi'][0]:.2f} s ({outcome['single_ipmi'][1]})")
    print(f"wave of {outcome['wave_size']} reboots: {outcome['wave_wall']:.1f} s wall, "
          f"{outcome['unfinished']} unfinished")
    for line, count in outcome["outcomes"].most_common():
        print(f"  {count:4d}  {line}")
    print(f"GET /results during the wave: {len(latencies)} polls, p50 {_percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
          if latencies else "GET /results: no polls")
    print(f"peak RSS: server {outcome['server_rss_kib'] / 1024:.1f} MiB, "
          f"IPMI workers {outcome['workers_rss_kib'] / 1024:.1f} MiB in all")
    return 0 if outcome["unfinished"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
