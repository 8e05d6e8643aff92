"""
Real peers for the Buildbot tests: a Buildbot master and worker (PyPI buildbot 4.x),
an OpenSSH sshd, a DNS server and a small slavealloc, all on loopback.

Processes are started from the reactor (C{spawnProcess}), so their exit is an
event the tests can await, and are stopped by their PID. Buildbot writes no
readiness signal but its twistd.log (a failed foreground start even exits 0),
so readiness is read from there with a bounded poll ("BuildMaster is
running"), and so are the ports: both listen on port 0 and log the ones they
got ("BuildbotSite starting on N", "PBServerFactory starting on N").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.names import authority, dns, server
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site

reactor: Any = _reactor

BIN = os.path.dirname(sys.executable)
SSHD = "/usr/sbin/sshd"
WORKER_PASSWORD = "worker-pw-for-loopback-tests"
BUILDER = "sleepy"
#: How long the builder's one ShellCommand runs.
COMMAND_SECONDS = 5

MASTER_CFG = f"""\
# A minimal Buildbot master for SlaveAPI's tests (loopback only, ports chosen by the OS).
from buildbot.plugins import schedulers, steps, util, worker

c = BuildmasterConfig = {{}}
c["workers"] = [worker.Worker(WORKER_NAME, {WORKER_PASSWORD!r})]
c["protocols"] = {{"pb": {{"port": "tcp:0:interface=127.0.0.1"}}}}
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[{BUILDER!r}])]
factory = util.BuildFactory()
factory.addStep(steps.ShellCommand(command=["sleep", "{COMMAND_SECONDS}"]))
c["builders"] = [util.BuilderConfig(name={BUILDER!r}, workernames=[WORKER_NAME], factory=factory)]
c["title"] = "SlaveAPI test master"
c["buildbotURL"] = "http://127.0.0.1/"
c["www"] = {{"port": "tcp:0:interface=127.0.0.1", "plugins": {{}}}}
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["buildbotNetUsageData"] = None
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def bounded(waiting: Deferred[Any], seconds: float) -> Any:
    """Await C{waiting} for at most C{seconds} (then it fails with TimeoutError)."""
    return await waiting.addTimeout(seconds, reactor)


class Process(ProcessProtocol):
    """A child process: its PID, its (capped) output, and its end as a Deferred."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.done = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.output += data[: max(0, 65536 - len(self.output))]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.done = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM by PID and wait for the end; SIGKILL if it overstays."""
        if self.done or self.pid is None:
            return
        _signal(self.pid, signal.SIGTERM)
        try:
            await bounded(self.ended, grace)
        except TimeoutError:
            _signal(self.pid, signal.SIGKILL)
            await bounded(self.ended, 5)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def spawn(name: str, argv: list[str], cwd: Path | None = None) -> Process:
    process = Process(name)
    reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ), path=str(cwd) if cwd else None)
    return process


async def run(argv: list[str], cwd: Path | None = None, timeout: float = 30.0) -> str:
    """Run a program to its end (bounded); its output; raises if it failed."""
    process = spawn(os.path.basename(argv[0]), argv, cwd)
    try:
        code = await bounded(process.ended, timeout)
    except TimeoutError:
        await process.stop()
        raise RuntimeError(f"{argv[0]} did not finish within {timeout:g}s: {process.text()[-2000:]}") from None
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {process.text()[-2000:]}")
    return process.text()


async def wait_for_log(path: Path, pattern: str, process: Process | None, timeout: float = 30.0) -> re.Match[str]:
    """
    Poll a log file until C{pattern} matches it (Buildbot has no other readiness
    signal); fail early if C{process} ended meanwhile.
    """
    expression = re.compile(pattern, re.MULTILINE)
    deadline = reactor.seconds() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = expression.search(text)
        if match:
            return match
        if process is not None and process.done:
            raise RuntimeError(f"{process.name} exited {process.exit_code} before logging {pattern!r}: {text[-3000:]}")
        if reactor.seconds() > deadline:
            raise RuntimeError(f"{pattern!r} not in {path} within {timeout:g}s: {text[-3000:]}")
        await deferLater(reactor, 0.05, lambda: None)


# --- Buildbot -----------------------------------------------------------------------


async def create_master_template(directory: Path, worker_name: str) -> Path:
    """C{buildbot create-master} once (it builds the sqlite schema, ~2 s); tests copy the result."""
    await run([os.path.join(BIN, "buildbot"), "create-master", "-q", "-r", str(directory)], timeout=60)
    (directory / "master.cfg").write_text(f"WORKER_NAME = {worker_name!r}\n" + MASTER_CFG)
    await run([os.path.join(BIN, "buildbot"), "checkconfig", str(directory)], timeout=60)
    return directory


@dataclass
class RealMaster:
    """A running Buildbot master (foreground twistd, by PID)."""

    directory: Path
    process: Process
    www_port: int
    pb_port: int

    @property
    def log(self) -> Path:
        return self.directory / "twistd.log"

    @classmethod
    async def start(cls, template: Path, directory: Path) -> RealMaster:
        shutil.copytree(template, directory)
        process = spawn("buildbot master", _twistd(), directory)
        log = directory / "twistd.log"
        try:
            await wait_for_log(log, r"BuildMaster is running", process)
            www = await wait_for_log(log, r"BuildbotSite starting on (\d+)", process)
            pb = await wait_for_log(log, r"PBServerFactory starting on (\d+)", process)
        except BaseException:
            await process.stop()
            raise
        return cls(directory, process, int(www.group(1)), int(pb.group(1)))

    async def stop(self) -> None:
        await self.process.stop()


@dataclass
class RealWorker:
    """A running buildbot-worker (foreground twistd, by PID) attached to a master."""

    directory: Path
    name: str
    process: Process

    @property
    def log(self) -> Path:
        return self.directory / "twistd.log"

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    @classmethod
    async def start(cls, directory: Path, name: str, pb_port: int) -> RealWorker:
        await run(
            [
                os.path.join(BIN, "buildbot-worker"), "create-worker", "-q", "-r", str(directory),
                f"127.0.0.1:{pb_port}", name, WORKER_PASSWORD,
            ]
        )
        process = spawn("buildbot-worker", _twistd(), directory)
        try:
            await wait_for_log(directory / "twistd.log", r"Connected to buildmaster; worker is ready", process)
        except BaseException:
            await process.stop()
            raise
        return cls(directory, name, process)

    async def stop(self) -> None:
        await self.process.stop()


def _twistd() -> list[str]:
    return [os.path.join(BIN, "twistd"), "--nodaemon", "--no_save", "--pidfile=", "-y", "buildbot.tac"]


# --- OpenSSH sshd ---------------------------------------------------------------------


#: /proc/uptime of a machine up for a day (uptime, then idle seconds summed over CPUs).
UP_A_DAY = 86400.0


@dataclass
class Sshd:
    """
    An OpenSSH sshd on 127.0.0.1 letting one local user in by password, on a
    worker host whose uptime the test sets.

    sshd runs in a mount namespace of its own where C{/proc/uptime} is a bind
    mount of C{uptime_file}: every session it opens (C{cat /proc/uptime}, procps
    C{uptime}) reads the uptime L{set_uptime} wrote there, not the real host's,
    so "past the boot grace" or "just booted" is the test's to decide. The
    wrapper C{exec}s sshd, so the PID spawned is sshd's own and stopping it by
    PID stops sshd.
    """

    directory: Path
    port: int
    process: Process | None = None

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def uptime_file(self) -> Path:
        return self.directory / "uptime"

    def set_uptime(self, seconds: float, idle: float | None = None) -> None:
        """
        What the host's C{/proc/uptime} says from now on. Written in place (the
        bind mount holds the file's inode, a replaced file would go unseen).
        """
        idle = 2 * seconds if idle is None else idle
        self.uptime_file.write_text(f"{seconds:.2f} {idle:.2f}\n")
        os.chmod(self.uptime_file, 0o644)  # read by the SSH test user through /proc/uptime

    async def start(self, uptime: float = UP_A_DAY) -> Sshd:
        key = self.directory / "host_key"
        await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)])
        config = self.directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {key}\n"
            f"PidFile {self.directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication no\nPermitRootLogin no\nMaxStartups 50\nLogLevel VERBOSE\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.set_uptime(uptime)
        # A private mount namespace (unshare without --fork: the same process), the
        # bind mount, then exec: the PID is sshd's. An absolute -f: sshd re-execs
        # itself for every connection.
        argv = [
            shutil.which("unshare") or "/usr/bin/unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", 'mount --bind "$1" /proc/uptime && shift && exec "$@"', "sh",
            str(self.uptime_file.resolve()), SSHD, "-D", "-f", str(config.resolve()), "-E", str(self.log),
        ]
        self.process = spawn("sshd", argv)
        try:
            await wait_for_log(self.log, rf"Server listening on 127\.0\.0\.1 port {self.port}", self.process, 10)
        except RuntimeError as error:  # unshare and mount complain on stderr, not in the log
            await self.process.stop()
            raise RuntimeError(f"{error}\nsshd wrapper output: {self.process.text()[-2000:]}") from None
        return self

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()


async def ensure_user(name: str, password: str) -> None:
    """A local account with a known password (created if missing, password reset every run)."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        await run(["useradd", "-m", "-s", "/bin/sh", name])
    chpasswd = spawn("chpasswd", ["/usr/sbin/chpasswd"])
    assert chpasswd.transport is not None
    chpasswd.transport.write(f"{name}:{password}\n".encode())
    chpasswd.transport.closeStdin()
    if await bounded(chpasswd.ended, 10) != 0:
        raise RuntimeError(f"chpasswd failed: {chpasswd.text()}")


# --- DNS --------------------------------------------------------------------------------


class _Zone(authority.FileAuthority):
    """An authoritative zone held in memory."""

    def __init__(self, origin: str, addresses: dict[str, str]) -> None:
        self._origin = origin
        self._addresses = addresses
        super().__init__(origin)

    soa: tuple[bytes, dns.Record_SOA]  # type: ignore[assignment]  # the base declares it None until loaded
    records: dict[bytes, list[Any]]  # type: ignore[assignment]  # the base declares it None until loaded

    def loadFile(self, filename: Any) -> None:
        origin = self._origin.encode("ascii")
        soa = dns.Record_SOA(
            mname=b"ns." + origin, rname=b"hostmaster." + origin, serial=1, refresh=60, retry=60, expire=60, minimum=5
        )
        self.soa = (origin, soa)
        self.records = {origin: [soa]}
        for name, ip in self._addresses.items():
            self.records[name.lower().encode("ascii")] = [dns.Record_A(ip, ttl=60)]


def start_dns(origin: str, addresses: dict[str, str]) -> tuple[IListeningPort, int]:
    """A DNS server for C{origin} on a free UDP port of 127.0.0.1 (A records only)."""
    factory = server.DNSServerFactory(authorities=[_Zone(origin, addresses)])
    factory.noisy = False
    protocol = dns.DNSDatagramProtocol(controller=factory)
    protocol.noisy = False
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    return port, port.getHost().port


# --- slavealloc -----------------------------------------------------------------------


@dataclass
class FakeSlavealloc:
    """
    Just enough of slavealloc (docs/remote-apis.rst shapes) for the slaves and masters
    tests put in C{slaves} (by name) and C{masters} (by id).
    """

    slaves: dict[str, dict[str, Any]] = field(default_factory=dict)
    masters: dict[int, dict[str, Any]] = field(default_factory=dict)

    app = Klein()

    def site(self) -> Site:
        site = Site(self.app.resource())
        site.noisy = False
        return site

    @staticmethod
    def _json(request: IRequest, body: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode("utf-8")

    @app.route("/api/slaves/<name>", methods=["GET"])
    def get_slave(self, request: IRequest, name: str) -> bytes:
        if name not in self.slaves:
            return self._json(request, {"error": "not found"}, 404)
        return self._json(request, self.slaves[name])

    @app.route("/api/masters/<ident>", methods=["GET"])
    def get_master(self, request: IRequest, ident: str) -> bytes:
        if not ident.isdigit() or int(ident) not in self.masters:
            return self._json(request, {"error": "not found"}, 404)
        return self._json(request, self.masters[int(ident)])
