"""
Helpers for the PDU tests: a real net-snmp snmpd playing Sentry and APC PDUs,
and running net-snmp's command-line tools without blocking the reactor.

Each snmpd runs in the foreground on a free 127.0.0.1 UDP port, with a v2c
read-write community, a v3 user (SHA + AES) and two C{pass_persist} handlers
(C{passpersist_pdu.py}) serving the Sentry3 outlet table and the APC outlet
branch. It is started with C{spawnProcess} (the reactor keeps running),
awaited until it prints its version line, and stopped by SIGTERM to its PID,
every wait bounded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

SNMPD = "/usr/sbin/snmpd"
SNMPGET = "/usr/bin/snmpget"
SNMPSET = "/usr/bin/snmpset"
SENTRY_HOST = "sentry.pdu.test"
APC_HOST = "apc.pdu.test"
V3_USER = "pduadmin"

# The outlets snmpd serves: Sentry AA1-AA4 and BA1 (tower 2), APC 1-4.
# AA3 and APC 3 are slow (their wait state shows for two reads after a SET);
# AA4 and APC 4 are stuck (SETs accepted, state never changes).
OUTLETS = [
    {"kind": "sentry", "index": "1.1.1", "on": True},
    {"kind": "sentry", "index": "1.1.2", "on": True},
    {"kind": "sentry", "index": "1.1.3", "on": True, "behaviour": "slow"},
    {"kind": "sentry", "index": "1.1.4", "on": True, "behaviour": "stuck"},
    {"kind": "sentry", "index": "2.1.1", "on": False},
    {"kind": "apc", "index": "1", "on": True},
    {"kind": "apc", "index": "2", "on": True},
    {"kind": "apc", "index": "3", "on": True, "behaviour": "slow"},
    {"kind": "apc", "index": "4", "on": True, "behaviour": "stuck"},
]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
TOOL_TIMEOUT = 10.0


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def bounded(deferred: Deferred[Any], seconds: float, what: str) -> Any:
    """Await C{deferred} for at most C{seconds}; fail the test otherwise."""
    from twisted.internet import reactor

    deferred.addTimeout(seconds, reactor)
    try:
        return await deferred
    except Exception as error:
        raise AssertionError(f"{what}: {error!r}") from error


class _Watcher(ProcessProtocol):
    """Collects a child's output; fires C{ready} on a marker and C{ended} with the exit code."""

    def __init__(self, marker: bytes | None = None) -> None:
        self.marker = marker
        self.output = b""
        self.stdout = b""
        self.stderr = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._received(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._received(data)

    def _received(self, data: bytes) -> None:
        self.output += data
        if self.marker is not None and not self.ready.called and self.marker in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if self.marker is not None and not self.ready.called:
            self.ready.errback(RuntimeError("exited before it was ready: " + self.output.decode(errors="replace")))
        if not self.ended.called:  # (a timed-out wait has cancelled it)
            self.ended.callback(getattr(reason.value, "exitCode", None))


@dataclass
class Snmpd:
    """A running snmpd and what tests need to talk to it."""

    port: int
    community: str
    auth_key: str
    priv_key: str
    directory: Path
    set_log: Path
    env: dict[str, str]
    _process: Any = field(repr=False, default=None)
    _watcher: _Watcher | None = field(repr=False, default=None)

    def sets(self) -> list[str]:
        """Every SET the handlers applied, in order, as C{<oid> <value>}."""
        if not self.set_log.exists():
            return []
        return self.set_log.read_text(encoding="utf-8").splitlines()

    async def stop(self) -> None:
        """SIGTERM to the PID, then wait (bounded) for it to exit."""
        if self._watcher is not None and not self._watcher.ended.called:
            os.kill(self._process.pid, signal.SIGTERM)
            await bounded(self._watcher.ended, STOP_TIMEOUT, "snmpd stop")


def tool_env(directory: Path) -> dict[str, str]:
    """The environment net-snmp's tools run in: no MIB loading, a private persistent dir."""
    persist = directory / "persist"
    (persist / "cert_indexes").mkdir(parents=True, exist_ok=True)  # else the tools announce creating it
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIBS": "", "SNMP_PERSISTENT_DIR": str(persist)}


async def start_snmpd(directory: Path) -> Snmpd:
    """Start an snmpd serving L{OUTLETS} in C{directory}; ready when this returns."""
    from twisted.internet import reactor

    assert os.path.exists(SNMPD), "net-snmp's snmpd is missing: apt-get install snmpd snmp"
    script = directory / "passpersist_pdu.py"
    shutil.copy(Path(__file__).with_name("passpersist_pdu.py"), script)
    table = directory / "outlets.json"
    table.write_text(json.dumps(OUTLETS), encoding="utf-8")
    set_log = directory / "sets.log"
    community = "c-" + secrets.token_hex(6)
    auth_key = "a-" + secrets.token_hex(8)
    priv_key = "p-" + secrets.token_hex(8)
    handler = f"{sys.executable} {script}"
    conf = directory / "snmpd.conf"
    conf.write_text(
        f"rwcommunity {community} 127.0.0.1\n"
        f'createUser {V3_USER} SHA "{auth_key}" AES "{priv_key}"\n'
        f"rwuser {V3_USER} priv\n"
        f"pass_persist .1.3.6.1.4.1.1718.3.2.3.1 {handler} .1.3.6.1.4.1.1718.3.2.3.1 {table} {set_log}\n"
        f"pass_persist .1.3.6.1.4.1.318.1.1.12.3 {handler} .1.3.6.1.4.1.318.1.1.12.3 {table} {set_log}\n"
        "dontLogTCPWrappersConnects yes\n",
        encoding="utf-8",
    )
    env = tool_env(directory)
    port = free_udp_port()
    watcher = _Watcher(b"NET-SNMP version")
    process = reactor.spawnProcess(
        watcher,
        SNMPD,
        [SNMPD, "-f", "-Lo", "-C", "-c", str(conf), f"udp:127.0.0.1:{port}"],
        env=env,
        path=str(directory),
    )
    server = Snmpd(port, community, auth_key, priv_key, directory, set_log, env, process, watcher)
    try:
        await bounded(watcher.ready, START_TIMEOUT, "snmpd start")
    except BaseException:
        await server.stop()
        raise
    return server


@dataclass(frozen=True)
class ToolResult:
    """What one net-snmp command printed (values on stdout, errors on stderr) and how it exited."""

    code: int | None
    stdout: str
    stderr: str = ""


async def run_tool(argv: list[str], env: dict[str, str]) -> ToolResult:
    """Run C{snmpget}/C{snmpset} to completion (bounded) without blocking the reactor."""
    from twisted.internet import reactor

    watcher = _Watcher()
    process = reactor.spawnProcess(watcher, argv[0], argv, env=env)
    try:
        code = await bounded(watcher.ended, TOOL_TIMEOUT, " ".join(argv[:1]))
    except AssertionError:
        os.kill(process.pid, signal.SIGKILL)
        raise
    return ToolResult(code, watcher.stdout.decode(errors="replace"), watcher.stderr.decode(errors="replace"))
