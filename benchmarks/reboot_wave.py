"""
A reboot wave: every machine of a lab rebooted at once, through SlaveAPI's HTTP API.

Starts the standalone lab (C{python -m slaveapi.lab}) and SlaveAPI (twistd)
as two processes on loopback, so the server's memory is measured without
the lab's. Then:

  1. reboots one SSH machine and one IPMI machine alone (single-machine time);
  2. POSTs a reboot for every other machine at once;
  3. while the wave runs, times what a dashboard asks (one result by its
     requestid, a 100-result page of C{/results}), follows every result
     through C{/results} pages, and samples the server's RSS;
  4. prints the wave's wall time (first POST to last result finished), how
     each reboot ended, the latencies' p50/p99, the server's CPU seconds
     per reboot, its RSS at the peak with the number of actions then in
     flight, and, last, C{wave/single: R}: the time until every machine
     that came back was back, over the slower single-machine reboot. (The
     lab has a few machines no method brings back; their escalation to a
     bug is bounded by its own timeouts, not by the wave, and is shown on
     its own line.)

With C{--instances N} (N > 1), N SlaveAPI processes share one throwaway
PostgreSQL database (started for the run, stopped at its end), each with
its own C{--data} and a copy of the lab's ini naming the database in
C{[store]}; the wave's POSTs and the dashboard's reads go to them in turn
(as a load balancer would send them), and the servers' CPU and RSS are
summed over the N processes. C{--store postgresql} runs one instance on
PostgreSQL, to compare with SQLite (the default for one instance). The
PostgreSQL server's own CPU is shown on a line of its own.

Usage: C{.venv/bin/python benchmarks/reboot_wave.py [--slaves 1000] [--boot-time 30]
[--instances N] [--store sqlite|postgresql]}
Everything is bounded: the wave gives up after C{--limit} seconds. The
working directory (lab, server data and logs) is removed at the end unless
C{KEEP_WORKDIR} is set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from _procfs import children, cpu_seconds, memory_kib

_PORT = re.compile(r"GatedSite starting on (\d+)")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slaves", type=int, default=1000)
    parser.add_argument("--boot-time", type=float, default=30.0)
    parser.add_argument("--ipmi-share", type=float, default=0.5, help="share of BMC machines refusing SSH logins")
    parser.add_argument("--limit", type=float, default=900.0, help="give up on the wave after this many seconds")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="[server] concurrency for SlaveAPI (default: its default, 50)"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=1.0,
        help="[probes] interval for SlaveAPI (the default is 1 s; the lab's own config polls every 0.2 s for tests)",
    )
    parser.add_argument(
        "--instances", type=int, default=1, help="SlaveAPI processes sharing one PostgreSQL database (default 1)"
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default=None,
        help="where results are kept (default: sqlite for one instance; several need postgresql)",
    )
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    if args.store is None:
        args.store = "sqlite" if args.instances == 1 else "postgresql"
    if args.store == "sqlite" and args.instances > 1:
        parser.error("several instances share results only on PostgreSQL: --store postgresql")
    return args


def _start_lab(args: argparse.Namespace, workdir: str) -> tuple[subprocess.Popen[str], str]:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "lab.log"), "w") as log:
        lab = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slaveapi.lab",
                "--slaves",
                str(args.slaves),
                "--boot-time",
                str(args.boot_time),
                "--health-interval",
                "0",
                "--workdir",
                workdir,
                "--refuse-ssh-share",
                str(args.ipmi_share),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert lab.stdout is not None
    return lab, lab.stdout.readline().strip()


def _set(ini: str, section: str, key: str, value: str) -> None:
    """Set C{key} in C{section} of the lab's ini (the benchmark's own copy)."""
    with open(ini, encoding="utf-8") as handle:
        text = handle.read()
    pattern = rf"(?m)^(\[{section}\][^\[]*?)^{key} = .*$"
    if re.search(pattern, text):
        text = re.sub(pattern, rf"\g<1>{key} = {value}", text)
    else:
        text = re.sub(rf"(?m)^\[{section}\]\n", f"[{section}]\n{key} = {value}\n", text)
    with open(ini, "w", encoding="utf-8") as handle:
        handle.write(text)


def _instance_ini(ini: str, url: str, instance: str) -> str:
    """
    A copy of the lab's ini (beside it, so that its relative paths hold) for
    C{instance} on the PostgreSQL database at C{url}: the URL without its
    password, which goes into a copy of the lab's credentials.
    """
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    directory = os.path.dirname(ini)
    with open(ini, encoding="utf-8") as handle:
        text = handle.read()
    named = re.search(r"(?m)^credentials_file = (.+)$", text)
    assert named is not None
    with open(os.path.join(directory, named.group(1).strip()), encoding="utf-8") as handle:
        credentials = json.load(handle)
    credentials["postgresql_password"] = unquote(parts.password or "")
    own = f"credentials-{instance}.json"
    descriptor = os.open(os.path.join(directory, own), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(credentials, handle)
    text = text.replace(named.group(0), f"credentials_file = {own}")
    bare = urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))
    text += f"\n[store]\nurl = {bare}\ninstance = {instance}\n"
    path = os.path.join(directory, f"slaveapi-{instance}.ini")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _start_server(ini: str, data: str) -> tuple[subprocess.Popen[bytes], int]:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log_path = os.path.join(data, "server.log")
    os.makedirs(data, exist_ok=True)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                twistd,
                "-n",
                "-r",
                "asyncio",
                "--pidfile=",
                "slaveapi",
                "--config",
                ini,
                "--data",
                data,
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
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


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of C{pid} and its children so far (the lab: its BMC processes, its EC2 server)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def _postgres_cpu_seconds(pid: int) -> float:
    """CPU time of the PostgreSQL server: its postmaster, its backends, and the backends that have ended."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return _tree_cpu_seconds(pid) + reaped


async def _wave(
    args: argparse.Namespace,
    urls: list[str],
    names: list[str],
    server_pids: list[int],
    lab_pid: int,
    postgres_pid: int | None,
) -> dict[str, Any]:
    import treq
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import deferLater
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 50
    turns = itertools.count()

    def servers_cpu() -> float:
        return sum(cpu_seconds(pid) for pid in server_pids)

    def workers_cpu_now() -> float:
        return sum(cpu_seconds(child) for pid in server_pids for child in children(pid))

    def servers_rss(field: str = "VmRSS") -> int:
        return sum(memory_kib(pid, field) for pid in server_pids)

    def postgres_cpu() -> float:
        return 0.0 if postgres_pid is None else _postgres_cpu_seconds(postgres_pid)

    async def post(name: str, waittime: float, url: str) -> dict[str, Any]:
        response = await treq.post(
            f"{url}/slaves/{name}/actions/reboot", data={"waittime": str(waittime)}, pool=pool, timeout=args.limit
        )
        return await response.json()

    async def timed_get(path: str) -> tuple[float, Any]:
        url = urls[next(turns) % len(urls)]
        asked = time.monotonic()
        response = await treq.get(url + path, pool=pool, timeout=60)
        body = await response.json()
        return time.monotonic() - asked, body

    async def single(name: str) -> tuple[float, str]:
        started = time.monotonic()
        result = await post(name, args.limit, urls[0])
        return time.monotonic() - started, result["text"].split("\n")[-1]

    ssh_name, ipmi_name = names[0], names[1]
    single_ssh = await single(ssh_name)
    single_ipmi = await single(ipmi_name)

    wave_names = names[2:]
    rss_before = servers_rss()
    cpu_before = servers_cpu()
    workers_cpu_before = workers_cpu_now()
    lab_cpu_before = _tree_cpu_seconds(lab_pid)
    postgres_cpu_before = postgres_cpu()
    own_cpu_before = time.process_time()
    started = time.monotonic()
    queued = await gatherResults(
        [Deferred.fromCoroutine(post(name, 0, urls[index % len(urls)])) for index, name in enumerate(wave_names)]
    )
    posted = time.monotonic() - started
    pending = {int(result["requestid"]): name for name, result in zip(wave_names, queued, strict=True)}
    first = min(pending)
    by_requestid: list[float] = []
    by_page: list[float] = []
    outcomes: Counter[str] = Counter()
    peak = (rss_before, len(pending))
    finished_at = rebooted_at = started
    finish_times: dict[str, list[float]] = {}
    polls = 0
    while pending and time.monotonic() - started < args.limit:
        # What a dashboard asks during the wave: one result, and a page of them.
        requestid = next(iter(pending))
        latency, _ = await timed_get(f"/slaves/{pending[requestid]}/actions/reboot?requestid={requestid}")
        by_requestid.append(latency)
        latency, _ = await timed_get(f"/results?action=reboot&since={first - 1}&limit=100")
        by_page.append(latency)
        polls += 1
        if polls % 2:
            # Following every result costs the server too: twice a second is enough.
            await deferLater(reactor, 0.25, lambda: None)
            continue
        since = first - 1
        while True:
            _, page = await timed_get(f"/results?action=reboot&since={since}&limit=1000")
            for result in page["results"]:
                if result["requestid"] in pending and result["state"] in (2, 3):
                    del pending[result["requestid"]]
                    finished_at = time.monotonic()
                    last = result["text"].split("\n")[-1]
                    outcome = re.sub(r"\d+", "N", last.split("(")[0]).strip()
                    outcomes[outcome] += 1
                    finish_times.setdefault(outcome, []).append(finished_at - started)
                    if result["state"] == 2:
                        rebooted_at = finished_at
            if not page["results"] or not page.get("next"):
                break
            since = page["results"][-1]["requestid"]
        rss = servers_rss()
        if rss > peak[0]:
            peak = (rss, len(pending))
        await deferLater(reactor, 0.25, lambda: None)
    wall = finished_at - started
    rebooted_wall = rebooted_at - started
    cpu = servers_cpu() - cpu_before
    workers_cpu = workers_cpu_now() - workers_cpu_before
    lab_cpu = _tree_cpu_seconds(lab_pid) - lab_cpu_before
    postgres_cpu_used = postgres_cpu() - postgres_cpu_before
    own_cpu = time.process_time() - own_cpu_before
    await pool.closeCachedConnections()
    return {
        "single_ssh": single_ssh,
        "single_ipmi": single_ipmi,
        "wave_size": len(wave_names),
        "posted": posted,
        "wave_wall": wall,
        "rebooted_wall": rebooted_wall,
        "finish_times": finish_times,
        "unfinished": len(pending),
        "outcomes": outcomes,
        "by_requestid": by_requestid,
        "by_page": by_page,
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak[0],
        "in_flight_at_peak": peak[1],
        "cpu": cpu,
        "workers_cpu": workers_cpu,
        "lab_cpu": lab_cpu,
        "postgres_cpu": postgres_cpu_used,
        "own_cpu": own_cpu,
        "server_hwm_kib": servers_rss("VmHWM"),
        "workers_rss_kib": sum(memory_kib(child, "VmHWM") for pid in server_pids for child in children(pid)),
    }


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> int:
    args = _arguments()
    # Before anything imports twisted.internet.reactor (slaveapi.testing does).
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    workdir = tempfile.mkdtemp(prefix="reboot-wave-")
    lab, ini = _start_lab(args, os.path.join(workdir, "lab"))
    # Probe as a production configuration does, not as fast as the lab's tests want.
    _set(ini, "probes", "interval", f"{args.probe_interval:g}")
    if args.concurrency is not None:
        _set(ini, "server", "concurrency", str(args.concurrency))
    servers: list[subprocess.Popen[bytes]] = []
    postgres = None
    try:
        if args.store == "postgresql":
            from slaveapi.testing import ThrowawayPostgres

            postgres = ThrowawayPostgres.start(workdir)
            inis = [_instance_ini(ini, postgres.url(), f"i{number}") for number in range(1, args.instances + 1)]
        else:
            inis = [ini]
        ports = []
        for number, own_ini in enumerate(inis, 1):
            server, port = _start_server(own_ini, os.path.join(workdir, f"data-{number}"))
            servers.append(server)
            ports.append(port)
        with open(os.path.join(workdir, "lab", "reboot-paths.json"), encoding="utf-8") as handle:
            roles = json.load(handle)
        ssh_names = [name for name, role in roles.items() if role == "ssh"]
        ipmi_names = [name for name, role in roles.items() if role == "ipmi"]
        others = [name for name in roles if name not in (ssh_names[0], ipmi_names[0])]
        names = [ssh_names[0], ipmi_names[0], *others]

        outcome: dict[str, Any] = {}

        def run() -> Deferred[None]:
            async def go() -> None:
                try:
                    outcome.update(
                        await _wave(
                            args,
                            [f"http://127.0.0.1:{port}" for port in ports],
                            names,
                            [server.pid for server in servers],
                            lab.pid,
                            None if postgres is None else postgres.pid,
                        )
                    )
                finally:
                    reactor.stop()

            return Deferred.fromCoroutine(go())

        reactor.callWhenRunning(run)
        reactor.run()
    finally:
        processes: list[subprocess.Popen[Any]] = [*servers, lab]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        if postgres is not None:
            postgres.stop()
        if os.environ.get("KEEP_WORKDIR"):
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def latency(values: list[float]) -> str:
        if not values:
            return "no answers"
        return (
            f"{len(values)} asked, p50 {_percentile(values, 0.5) * 1000:.1f} ms, "
            f"p99 {_percentile(values, 0.99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
        )

    size = outcome["wave_size"]
    single = max(outcome["single_ssh"][0], outcome["single_ipmi"][0])
    store = "SQLite" if args.store == "sqlite" else "one PostgreSQL database (throwaway, fsync off)"
    servers_said = "server" if args.instances == 1 else f"{args.instances} servers' (summed)"
    print(
        f"reboot wave: {args.slaves} lab machines, boot time {args.boot_time:g} s, "
        f"{args.ipmi_share:.0%} of BMC machines refuse SSH (IPMI path), probes every {args.probe_interval:g} s, "
        f"[server] concurrency {args.concurrency or 'default (50)'}"
    )
    print(
        f"SlaveAPI: {args.instances} instance{'s' if args.instances > 1 else ''} on {store}"
        + (", POSTs and reads sent to them in turn" if args.instances > 1 else "")
    )
    print(
        f"single-machine reboot: SSH {outcome['single_ssh'][0]:.2f} s ({outcome['single_ssh'][1]}), "
        f"IPMI {outcome['single_ipmi'][0]:.2f} s ({outcome['single_ipmi'][1]})"
    )
    print(
        f"wave of {size} reboots: {outcome['wave_wall']:.1f} s wall (all POSTs answered after "
        f"{outcome['posted']:.1f} s), {outcome['unfinished']} unfinished"
    )
    for line, count in outcome["outcomes"].most_common():
        times = sorted(outcome["finish_times"][line])
        print(
            f"  {count:4d}  {line}  (finished {times[0]:.1f} to {times[-1]:.1f} s after the first POST, "
            f"median {times[len(times) // 2]:.1f} s)"
        )
    print(
        f"every machine that came back was back {outcome['rebooted_wall']:.1f} s after the first POST; the "
        "rest is the machines no method brings back, whose escalation to a bug takes its own timeouts"
    )
    print(f"during the wave: GET ?requestid=N {latency(outcome['by_requestid'])}")
    print(f"during the wave: GET /results 100-result page {latency(outcome['by_page'])}")
    print(
        f"{servers_said} CPU: {outcome['cpu']:.1f} s in all, {outcome['cpu'] / max(size, 1) * 1000:.1f} ms per reboot; "
        f"IPMI workers {outcome['workers_cpu']:.1f} s"
    )
    print(
        f"CPU of the rest on this machine's {os.cpu_count()} cores during the wave: lab {outcome['lab_cpu']:.1f} s, "
        f"this load generator {outcome['own_cpu']:.1f} s"
        + (f", PostgreSQL {outcome['postgres_cpu']:.1f} s" if args.store == "postgresql" else "")
    )
    grown = outcome["peak_rss_kib"] - outcome["rss_before_kib"]
    in_flight = outcome["in_flight_at_peak"]
    per_action = f"{grown / in_flight:.0f} KiB per in-flight action" if in_flight else "no action in flight"
    print(
        f"{servers_said} RSS: {outcome['rss_before_kib'] / 1024:.1f} MiB before the wave, peak "
        f"{outcome['peak_rss_kib'] / 1024:.1f} MiB with {in_flight} actions in flight ({per_action}); "
        f"high-water mark {outcome['server_hwm_kib'] / 1024:.1f} MiB; "
        f"IPMI workers {outcome['workers_rss_kib'] / 1024:.1f} MiB in all"
    )
    print(f"wave/single: {outcome['rebooted_wall'] / single:.2f}")
    return 0 if outcome["unfinished"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
