"""
Read load on the results API with 100,000 stored results, against bare Klein.

Not a test: a measurement, printed. It

  1. fills a results store with 100,000 finished results through
     L{slaveapi.store.SQLiteResultStore} (in batches of 1,000, one
     transaction each), in the file the server opens under C{--data};
  2. starts SlaveAPI on it (C{twistd -n -r asyncio slaveapi --lab 10 --data
     ...}, loopback only) and drives it with one load generator, a pure-Python
     asyncio HTTP/1.1 keep-alive client running in a process of its own:
     C{GET /slaves/<s>/actions/<a>?requestid=N} for random N, then
     C{GET /results?limit=100&since=N} pages for random N;
  3. starts a bare Klein app the same way (C{twistd -n -r asyncio web}),
     serving JSON bodies of the same sizes, and drives it with the same
     generator;
  4. starts SlaveAPI on an empty store, and compares the server's RSS
     (C{VmRSS}) with the full and the empty store.

It prints requests/s and p50/p99 latency for each target, then the RSS
comparison, and as its last line C{requestid GET: R of bare Klein}, R being
the requestid GET's requests/s over bare Klein's.

Usage: C{.venv/bin/python benchmarks/api_load.py [--results 100000] [--seconds 5]}
Everything is bounded: each target is driven for C{--seconds} (and at most
C{--max-requests}), every process is started with a start-up limit and
stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from _procfs import memory_kib

# SlaveAPI's GatedSite, or the bare Klein's Site; not the lab's own sites (_QuietSite, ...).
_PORT = re.compile(r"(?<![A-Za-z_])(?:Gated)?Site starting on (\d+)")
_SLAVES = 200
_ACTIONS = ("reboot", "buildslave_uptime", "buildslave_last_activity")
_STARTUP_LIMIT = 90.0
_BATCH = 1000

_BARE_APP = '''
"""A bare Klein app: fixed JSON bodies of the sizes SlaveAPI answered with."""
import json
import os

from klein import Klein

app = Klein()
_BODIES = {name: body.encode("utf-8") for name, body in json.loads(os.environ["BARE_BODIES"]).items()}


@app.route("/<string:name>", methods=["GET"])
def body(request, name):
    request.setHeader(b"Content-Type", b"application/json")
    return _BODIES[name]


def resource():
    return app.resource()
'''


@dataclass
class Server:
    """A twistd process and the port it listens on."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each target is driven")
    parser.add_argument("--max-requests", type=int, default=200_000, help="at most this many requests per target")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--generate", help=argparse.SUPPRESS)  # the load generator's own process
    return parser.parse_args()


# -- the store --------------------------------------------------------------------------------


def _fill(path: str, count: int) -> list[tuple[int, str, str]]:
    """Store C{count} finished results at C{path}; (requestid, slave, action) of each."""
    from twisted.internet import reactor

    from slaveapi.results import FAILURE, SUCCESS, ActionResult
    from slaveapi.store import SQLiteResultStore

    now = int(time.time())
    stored: list[tuple[int, str, str]] = []
    failure: list[BaseException] = []

    async def fill() -> None:
        store = SQLiteResultStore(path, reactor)
        store.open()
        try:
            for start in range(0, count, _BATCH):
                batch = []
                for number in range(start, min(count, start + _BATCH)):
                    slave = f"bld-linux64-lab-{number % _SLAVES:03d}"
                    action = _ACTIONS[number % len(_ACTIONS)]
                    requested = now - 80 * 86400 + number * 60
                    batch.append(
                        ActionResult(
                            slave=slave,
                            action=action,
                            requestid=0,
                            state=SUCCESS if number % 10 else FAILURE,
                            text=f"Rebooted {slave} over SSH; it came back after {number % 300} seconds.",
                            request_timestamp=requested,
                            start_timestamp=requested + 1,
                            finish_timestamp=requested + 30,
                        )
                    )
                ids = await store.add_finished(batch)
                stored.extend((requestid, r.slave, r.action) for requestid, r in zip(ids, batch, strict=True))
        finally:
            await store.close()

    def run() -> None:
        from twisted.internet.defer import Deferred

        def done(result: Any) -> None:
            if hasattr(result, "value"):
                failure.append(result.value)
            reactor.stop()

        Deferred.fromCoroutine(fill()).addBoth(done)

    reactor.callWhenRunning(run)
    reactor.run()
    if failure:
        raise failure[0]
    return stored


# -- processes --------------------------------------------------------------------------------


def _twistd(*args: str, log_path: str, env: dict[str, str] | None = None, cwd: str | None = None) -> Server:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    command = [twistd, "-n", "-r", "asyncio", "--pidfile=", *args, "--listen", "tcp:0:interface=127.0.0.1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + _STARTUP_LIMIT
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            match = _PORT.search(handle.read())
        if match:
            return Server(process, int(match.group(1)), log_path)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=10)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        raise SystemExit(f"{command[4:]} did not start:\n{handle.read()[-3000:]}")


def _slaveapi(data: str) -> Server:
    os.makedirs(data, exist_ok=True)
    return _twistd(
        "slaveapi", "--lab", "10", "--lab-health-interval", "0", "--data", data,
        log_path=os.path.join(data, "server.log"), cwd=data,
    )


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _settle(port: int) -> None:
    """Wait, bounded, until the server answers a read."""
    deadline = time.monotonic() + _STARTUP_LIMIT
    while time.monotonic() < deadline:
        try:
            status, _ = _get(port, "/results?limit=1")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer /results?limit=1")


# -- the load generator (its own process) -----------------------------------------------------


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> int:
    """Read the body the response C{head} announces (by length, or chunked); its size."""
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if fields.get(b"transfer-encoding") == b"chunked":
        size = 0
        while True:
            chunk = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if chunk == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return size
            size += len(await reader.readexactly(chunk + 2)) - 2
    length = int(fields.get(b"content-length", b"0"))
    await reader.readexactly(length)
    return length


async def _connection(port: int, paths: list[str], deadline: float, budget: list[int], latencies: list[float]) -> int:
    """Send C{paths} round and round over one keep-alive connection; the number of bad answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    index = random.randrange(len(paths))
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            path = paths[index % len(paths)]
            index += 1
            asked = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("ascii"))
            head = await reader.readuntil(b"\r\n\r\n")
            await _read_body(reader, head)
            latencies.append(time.perf_counter() - asked)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
    finally:
        writer.close()
    return errors


async def _generate(port: int, paths: list[str], seconds: float, connections: int, most: int) -> dict[str, Any]:
    # Warm-up: each connection's first requests are not counted.
    await asyncio.gather(*[_connection(port, paths, time.monotonic() + 0.5, [50], []) for _ in range(connections)])
    latencies: list[float] = []
    budget = [most]
    started = time.monotonic()
    errors = await asyncio.gather(
        *[_connection(port, paths, started + seconds, budget, latencies) for _ in range(connections)]
    )
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)

    def percentile(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")

    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(0.50) * 1000,
        "p99_ms": percentile(0.99) * 1000,
    }


def _drive(
    args: argparse.Namespace, workdir: str, name: str, port: int, paths: list[str], connections: int | None = None
) -> dict[str, Any]:
    """
    Run the load generator in a process of its own against C{paths}; its
    figures. C{connections}: one asks one request at a time, so its
    latencies are the server's own, with no queueing behind other requests.
    """
    spec = os.path.join(workdir, f"{name}.json")
    with open(spec, "w", encoding="utf-8") as handle:
        json.dump({"port": port, "paths": paths}, handle)
    command = [
        sys.executable, os.path.abspath(__file__), "--generate", spec, "--seconds", str(args.seconds),
        "--connections", str(connections or args.connections), "--max-requests", str(args.max_requests),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the load generator failed on {name}:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def _generator_main(args: argparse.Namespace) -> int:
    with open(args.generate, encoding="utf-8") as handle:
        spec = json.load(handle)
    figures = asyncio.run(_generate(spec["port"], spec["paths"], args.seconds, args.connections, args.max_requests))
    print(json.dumps(figures))
    return 0


# -- the run ----------------------------------------------------------------------------------


def _bare_body(size: int) -> str:
    """A JSON object of exactly C{size} bytes."""
    skeleton = json.dumps({"text": ""})
    return json.dumps({"text": "x" * max(0, size - len(skeleton))})


def _line(name: str, figures: dict[str, Any]) -> str:
    return (
        f"{name:<34} {figures['rps']:>9.0f} req/s   p50 {figures['p50_ms']:>7.2f} ms   "
        f"p99 {figures['p99_ms']:>7.2f} ms   ({figures['requests']} requests, {figures['errors']} errors)"
    )


def main() -> int:
    args = _arguments()
    if args.generate:
        return _generator_main(args)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from slaveapi.datadir import ensure_data_dir
    from slaveapi.store import default_store_path

    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="api-load-")
    full_data = ensure_data_dir(os.path.join(workdir, "full"))
    started = time.monotonic()
    stored = _fill(default_store_path(full_data), args.results)
    print(f"filled the store with {len(stored)} finished results in {time.monotonic() - started:.1f} s")

    running: list[Server] = []
    try:
        # SlaveAPI on the full store.
        server = _slaveapi(full_data)
        running.append(server)
        _settle(server.port)
        rss_full_idle = memory_kib(server.process.pid)
        picks = [stored[rng.randrange(len(stored))] for _ in range(5000)]
        one_paths = [f"/slaves/{slave}/actions/{action}?requestid={rid}" for rid, slave, action in picks]
        first, last = stored[0][0], stored[-1][0]
        page_paths = [f"/results?limit=100&since={rng.randrange(first - 1, last - 100)}" for _ in range(2000)]
        status, one_body = _get(server.port, one_paths[0])
        status_page, page_body = _get(server.port, page_paths[0])
        if status != 200 or status_page != 200 or len(json.loads(page_body)["results"]) != 100:
            raise SystemExit(f"unexpected answers: {status} {one_body[:200]!r} / {status_page} {page_body[:200]!r}")
        figures = {
            "requestid GET": _drive(args, workdir, "one", server.port, one_paths),
            "100-result page": _drive(args, workdir, "page", server.port, page_paths),
            "requestid GET, one at a time": _drive(args, workdir, "one-idle", server.port, one_paths, 1),
            "100-result page, one at a time": _drive(args, workdir, "page-idle", server.port, page_paths, 1),
        }
        rss_full_loaded = memory_kib(server.process.pid)
        server.stop()
        running.remove(server)

        # Bare Klein, bodies of the same sizes, started the same way.
        env = dict(os.environ)
        env["PYTHONPATH"] = workdir + os.pathsep + env.get("PYTHONPATH", "")
        env["BARE_BODIES"] = json.dumps({"one": _bare_body(len(one_body)), "page": _bare_body(len(page_body))})
        with open(os.path.join(workdir, "bare_klein.py"), "w", encoding="utf-8") as handle:
            handle.write(_BARE_APP)
        bare = _twistd("web", "--class", "bare_klein.resource", log_path=os.path.join(workdir, "bare.log"), env=env)
        running.append(bare)
        status, bare_body = _get(bare.port, "/one")
        if status != 200 or len(bare_body) != len(one_body):
            raise SystemExit(f"bare Klein answered {status} with {len(bare_body)} bytes, not {len(one_body)}")
        figures["bare Klein (same size as one)"] = _drive(args, workdir, "bare-one", bare.port, ["/one"])
        figures["bare Klein (same size as page)"] = _drive(args, workdir, "bare-page", bare.port, ["/page"])
        bare.stop()
        running.remove(bare)

        # SlaveAPI on an empty store, for its RSS.
        empty = _slaveapi(ensure_data_dir(os.path.join(workdir, "empty")))
        running.append(empty)
        _settle(empty.port)
        rss_empty = memory_kib(empty.process.pid)
        empty.stop()
        running.remove(empty)
    finally:
        for process in running:
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"one load generator: {args.connections} keep-alive connections (or one, asking one request at a"
          f" time, for the idle latencies), {args.seconds:g} s per target")
    print(f"bodies: requestid GET {len(one_body)} bytes, page {len(page_body)} bytes")
    for name, result in figures.items():
        print(_line(name, result))
    print(f"100-result page: {figures['100-result page']['rps'] / figures['bare Klein (same size as page)']['rps']:.2f}"
          " of bare Klein (same size)")
    print(
        f"server RSS: empty store {rss_empty / 1024:.1f} MiB; {len(stored)} results {rss_full_idle / 1024:.1f} MiB"
        f" after start (+{(rss_full_idle - rss_empty) / 1024:.1f} MiB),"
        f" {rss_full_loaded / 1024:.1f} MiB after the load (+{(rss_full_loaded - rss_empty) / 1024:.1f} MiB)"
    )
    ratio = figures["requestid GET"]["rps"] / figures["bare Klein (same size as one)"]["rps"]
    print(f"requestid GET: {ratio:.2f} of bare Klein")
    return 0


if __name__ == "__main__":
    sys.exit(main())
