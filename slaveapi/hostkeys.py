"""
Enrol the SSH host keys of the machines slavealloc knows, in bulk.

SlaveAPI offers a password only to a host whose key is verified, and with the
default C{[ssh] host_keys = strict} it talks only to such hosts. This command
fills C{known_hosts} for a fleet::

    python -m slaveapi.hostkeys scan --config /etc/slaveapi/slaveapi.ini --data /var/lib/slaveapi
    python -m slaveapi.hostkeys scan --config /etc/slaveapi/slaveapi.ini --data /var/lib/slaveapi --write

It lists slavealloc's machines, looks each up in DNS as SlaveAPI does, fetches
its SSH host key (the key type SlaveAPI's client negotiates), and prints one
line per machine: C{new}, C{known} or C{changed}, the names the key is filed
under, the key type and its OpenSSH C{SHA256:} fingerprint. With C{--write},
the new keys are added to the configured known_hosts in one atomic rewrite;
a changed key is never replaced (remove the old line by hand once the change
is understood). Every connection and lookup is bounded, and at most
C{--parallel} hosts are scanned at once.

Exit status: 0 when every machine's key was fetched and none changed, 1
otherwise, 2 for a configuration that does not load.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.internet.defer import Deferred, DeferredSemaphore, fail
from twisted.internet.defer import TimeoutError as WaitTimedOut
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from slaveapi.clients.dns import DNSClient, DNSError
from slaveapi.clients.http import JSONClient, RemoteError, make_http_client
from slaveapi.clients.slavealloc import SlaveallocClient
from slaveapi.clients.ssh_hostkeys import (
    CHANGED,
    VERIFIED,
    HostKeyStore,
    describe_key,
    known_hosts_name,
)
from slaveapi.config import Config, ConfigError, load_config

NEW = "new"
KNOWN = "known"
FAILED = "failed"


class _KeyFetcher(SSHClientTransport):
    """Takes the server's host key during key exchange, then hangs up (like C{ssh-keyscan})."""

    def __init__(self, found: Deferred[Key]) -> None:
        self._found = found

    def verifyHostKey(self, pubKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        if not self._found.called:
            self._found.callback(Key.fromString(pubKey))
        return fail(Exception("host key fetched; not logging in"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if not self._found.called:
            self._found.errback(Exception("the server closed the connection before sending its host key"))


async def fetch_host_key(reactor: Any, host: str, port: int, timeout: float) -> Key:
    """
    The SSH host key C{host}:C{port} presents, within C{timeout} seconds.

    @raise Exception: no key in time, or the connection failed.
    """
    found: Deferred[Key] = Deferred()
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    connecting = connectProtocol(endpoint, _KeyFetcher(found))
    connecting.addErrback(lambda reason: None if found.called else found.errback(reason))
    found.addTimeout(timeout, reactor)
    try:
        return await found
    finally:
        if not connecting.called:
            connecting.cancel()
        else:
            connecting.addCallback(lambda protocol: protocol.transport.abortConnection())
            connecting.addErrback(lambda _: None)


@dataclass(frozen=True)
class ScannedHost:
    """
    One machine's scan.

    @ivar name: slavealloc's name for it.
    @ivar names: the names its key is filed under (known_hosts form).
    @ivar status: L{NEW}, L{KNOWN}, L{CHANGED} or L{FAILED}.
    @ivar key: the key it presented; C{None} when that failed.
    @ivar reason: why it failed.
    """

    name: str
    names: tuple[bytes, ...]
    status: str
    key: Key | None = None
    reason: str = ""

    def line(self) -> str:
        """The line printed for it."""
        shown = ",".join(name.decode("utf-8") for name in self.names) or self.name
        if self.key is None:
            return f"{self.status:<8} {self.name:<28} {shown} ({self.reason})"
        return f"{self.status:<8} {self.name:<28} {shown} {describe_key(self.key)}"


async def scan(
    reactor: Any,
    config: Config,
    known_hosts_path: str,
    *,
    parallel: int = 20,
    timeout: float | None = None,
    http_pool: HTTPConnectionPool | None = None,
) -> list[ScannedHost]:
    """Fetch and judge the host key of every machine slavealloc lists, C{parallel} at a time."""
    pool = http_pool or HTTPConnectionPool(reactor, persistent=False)
    http = make_http_client(reactor, pool)
    slavealloc = SlaveallocClient(config.slavealloc.api_url, JSONClient("slavealloc", http, config.http.timeout, reactor))
    dns = DNSClient(reactor, config.slaves.default_domain, config.dns.servers, config.dns.timeout)
    store = HostKeyStore(known_hosts_path)
    limit = DeferredSemaphore(parallel)
    seconds = timeout or config.ssh.connect_timeout
    port = config.ssh.port

    async def one(name: str) -> ScannedHost:
        try:
            host = await dns.lookup_host(dns.qualify(name).rstrip("."))
        except DNSError as error:
            return ScannedHost(name, (), FAILED, reason=f"DNS: {error}")
        if host is None:
            return ScannedHost(name, (), FAILED, reason="DNS: the name does not resolve")
        names = tuple(dict.fromkeys(known_hosts_name(each, port) for each in (host.fqdn, host.ip)))
        try:
            key = await fetch_host_key(reactor, host.ip, port, seconds)
        except Exception as error:
            return ScannedHost(name, names, FAILED, reason=f"ssh {host.ip}:{port}: {_why(error, seconds)}")
        found = [store.verified.compare(each, key) for each in names]
        if CHANGED in found:
            status = CHANGED
        elif all(each == VERIFIED for each in found):
            status = KNOWN
        else:
            status = NEW
        return ScannedHost(name, names, status, key)

    async def limited(name: str) -> ScannedHost:
        await limit.acquire()
        try:
            return await one(name)
        finally:
            limit.release()

    try:
        records = await slavealloc.list_slaves()
        scans = [Deferred.fromCoroutine(limited(record.name)) for record in records]
        return [await each for each in scans]
    finally:
        if http_pool is None:
            await pool.closeCachedConnections()


def _why(error: Exception, seconds: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (WaitTimedOut, TimeoutError)):
        return f"no host key within {seconds:g}s"
    return (" ".join(str(error).split()) or type(error).__name__)[:200]


def write_new_keys(known_hosts_path: str, scanned: Sequence[ScannedHost]) -> int:
    """Add the keys of the L{NEW} hosts to the verified file in one rewrite; how many."""
    store = HostKeyStore(known_hosts_path)
    store.create()
    entries = []
    for host in scanned:
        if host.status == NEW and host.key is not None:
            missing = [name for name in host.names if store.verified.compare(name, host.key) != VERIFIED]
            entries.append((missing, host.key))
    store.verified.add_many(entries)
    return len(entries)


def _known_hosts_path(config: Config, data_dir: str) -> str:
    path = config.ssh.known_hosts
    return path if os.path.isabs(path) else os.path.join(os.path.abspath(data_dir), path)


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m slaveapi.hostkeys", description="Enrol the SSH host keys of slavealloc's machines."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    scan_command = commands.add_parser("scan", help="fetch every machine's host key and compare it with known_hosts")
    scan_command.add_argument("--config", required=True, help="SlaveAPI's ini file")
    scan_command.add_argument(
        "--data", default=".", help="SlaveAPI's --data directory (a relative [ssh] known_hosts is under it)"
    )
    scan_command.add_argument("--write", action="store_true", help="add the new keys to known_hosts")
    scan_command.add_argument("--parallel", type=int, default=20, help="hosts scanned at once (default 20)")
    scan_command.add_argument(
        "--timeout", type=float, default=None, help="seconds per host (default: [ssh] connect_timeout)"
    )
    arguments = parser.parse_args(argv)
    if arguments.parallel < 1:
        parser.error("--parallel: expected an integer >= 1")
    if arguments.timeout is not None and arguments.timeout <= 0:
        parser.error("--timeout: expected a number > 0")
    return arguments


async def main(reactor: Any, argv: Sequence[str]) -> int:
    """Run the command line C{argv}; the exit status."""
    arguments = _arguments(argv)
    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        print(f"slaveapi.hostkeys: {error}", file=sys.stderr)
        return 2
    path = _known_hosts_path(config, arguments.data)
    try:
        scanned = await scan(reactor, config, path, parallel=arguments.parallel, timeout=arguments.timeout)
    except RemoteError as error:
        print(f"slaveapi.hostkeys: cannot list the machines: {error}", file=sys.stderr)
        return 1
    for host in scanned:
        print(host.line())
    counts = {status: sum(host.status == status for host in scanned) for status in (KNOWN, NEW, CHANGED, FAILED)}
    if arguments.write:
        written = write_new_keys(path, scanned)
        outcome = f"{written} new written to {path}"
    else:
        outcome = f"{counts[NEW]} new (not written: add --write after checking the fingerprints)"
    print(f"{counts[KNOWN]} known, {outcome}, {counts[CHANGED]} changed, {counts[FAILED]} failed")
    if counts[CHANGED]:
        print(
            f"a changed key is never replaced: find out why it changed, remove its line from {path},"
            " and scan again",
            file=sys.stderr,
        )
    return 1 if counts[CHANGED] or counts[FAILED] else 0


def run(argv: Sequence[str] | None = None) -> None:
    """The console entry point: runs L{main} on a reactor and exits with its status."""
    from twisted.internet.task import react

    args = list(sys.argv[1:] if argv is None else argv)
    react(lambda reactor: Deferred.fromCoroutine(_exit_with(reactor, args)))


async def _exit_with(reactor: Any, argv: Sequence[str]) -> None:
    status = await main(reactor, argv)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    run()
