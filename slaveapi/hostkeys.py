"""
Enrol the SSH host keys of the hosts SlaveAPI logs in to, in bulk.

SlaveAPI offers a password only to a host whose key is verified (in
C{known_hosts}, where only an operator puts keys: no login ever verifies
one), and with the default C{[ssh] host_keys = strict} it talks only to
such hosts. This command fills C{known_hosts} for a fleet::

    python -m slaveapi.hostkeys scan --config /etc/slaveapi/slaveapi.ini --data /var/lib/slaveapi
    python -m slaveapi.hostkeys scan --config /etc/slaveapi/slaveapi.ini --data /var/lib/slaveapi --write

It scans every host SlaveAPI may log in to: the machines slavealloc lists,
the devices devices.json lists (when C{[devices] url} is set) and the
foopies devices.json names, where a device's buildbot runs and where SSH
goes for it; each once. With C{--host NAME} (repeatable) it scans only the
machines named, e.g. an AWS loaner just created, which slavealloc may not
list yet. Each host is looked up in DNS as SlaveAPI does (a machine under
its configured domain, a foopy as devices.json names it), and its SSH host
key fetched (the key type SlaveAPI's client negotiates); one line per host
is printed: C{new}, C{known} or C{changed}, the names the key is filed
under, the key type and its OpenSSH C{SHA256:} fingerprint. With
C{--write}, the new keys are added to the configured known_hosts in one
atomic rewrite; a changed key is never replaced (remove the old line by hand
once the change is understood). Every connection and lookup is bounded, and
at most C{--parallel} hosts are scanned at once.

Exit status: 0 when every machine's key was fetched and none changed, 1
otherwise, 2 for a configuration that does not load.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.internet.defer import Deferred, DeferredSemaphore, TimeoutError as WaitTimedOut, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from slaveapi.clients.devices import DevicesClient
from slaveapi.clients.dns import DNSClient, DNSError
from slaveapi.clients.http import JSONClient, RemoteError, make_http_client
from slaveapi.clients.slavealloc import SlaveallocClient
from slaveapi.clients.ssh import (
    CHANGED,
    VERIFIED,
    HostKeyStore,
    describe_key,
    known_hosts_name,
)
from slaveapi.config import Config, ConfigError, load_config
from slaveapi.machines import canonical_name, machine_fqdn

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

    @ivar name: its name as listed (slavealloc's, devices.json's, or as given with C{--host}).
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


@dataclass(frozen=True)
class _Target:
    """A host to scan: its name as listed, and the name SlaveAPI resolves for it."""

    name: str
    fqdn: str


async def _targets(
    config: Config, dns: DNSClient, slavealloc: SlaveallocClient, devices: DevicesClient
) -> list[_Target]:
    """
    Every host SlaveAPI may log in to, each once: slavealloc's machines,
    devices.json's devices, then the foopies that run the devices' buildbots.

    Machines are resolved under their configured domain (L{machine_fqdn}),
    as SlaveAPI names them; a foopy as SlaveAPI looks it up when it logs in
    for a device (qualified with C{[slaves] default_domain} if it has no dot).
    """
    records = await slavealloc.list_slaves()
    listed = await devices.list_devices()
    found: dict[str, _Target] = {}

    def add(name: str, fqdn: str) -> None:
        found.setdefault(fqdn.lower(), _Target(name, fqdn))

    for record in records:
        add(record.name, machine_fqdn(config, record.name.lower()))
    for device in listed:
        add(device.name, machine_fqdn(config, device.name.lower()))
    for device in listed:
        if device.foopy:
            add(device.foopy, dns.qualify(device.foopy).rstrip("."))
    return list(found.values())


async def scan(
    reactor: Any,
    config: Config,
    known_hosts_path: str,
    *,
    parallel: int = 20,
    timeout: float | None = None,
    http_pool: HTTPConnectionPool | None = None,
    hosts: Sequence[str] = (),
) -> list[ScannedHost]:
    """
    Fetch and judge the host key of every host SlaveAPI may log in to (see
    L{_targets}), or of the machines named in C{hosts} only, C{parallel} at a time.
    """
    pool = http_pool or HTTPConnectionPool(reactor, persistent=False)
    http = make_http_client(reactor, pool)
    slavealloc = SlaveallocClient(
        config.slavealloc.api_url, JSONClient("slavealloc", http, config.http.timeout, reactor)
    )
    devices = DevicesClient(config.devices_url, JSONClient("devices", http, config.http.timeout, reactor))
    dns = DNSClient(reactor, config.slaves.default_domain, config.dns.servers, config.dns.timeout)
    store = HostKeyStore(known_hosts_path)
    limit = DeferredSemaphore(parallel)
    seconds = timeout or config.ssh.connect_timeout
    port = config.ssh.port

    async def one(target: _Target) -> ScannedHost:
        name = target.name
        try:
            host = await dns.lookup_host(target.fqdn)
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

    async def limited(target: _Target) -> ScannedHost:
        await limit.acquire()
        try:
            return await one(target)
        finally:
            limit.release()

    try:
        if hosts:
            named = {machine_fqdn(config, canonical_name(config, name)): name for name in hosts}
            targets = [_Target(name, fqdn) for fqdn, name in named.items()]
        else:
            targets = await _targets(config, dns, slavealloc, devices)
        scans = [Deferred.fromCoroutine(limited(target)) for target in targets]
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
        prog="python -m slaveapi.hostkeys",
        description="Enrol the SSH host keys of the hosts SlaveAPI logs in to (slavealloc's machines,"
        " devices.json's devices and their foopies).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    scan_command = commands.add_parser("scan", help="fetch every host's key and compare it with known_hosts")
    scan_command.add_argument("--config", required=True, help="SlaveAPI's ini file")
    scan_command.add_argument(
        "--data", default=".", help="SlaveAPI's --data directory (a relative [ssh] known_hosts is under it)"
    )
    scan_command.add_argument("--write", action="store_true", help="add the new keys to known_hosts")
    scan_command.add_argument(
        "--host",
        action="append",
        dest="hosts",
        default=[],
        metavar="NAME",
        help=(
            "scan only this machine (repeatable), e.g. an AWS loaner just created;"
            " resolved under its configured domain"
        ),
    )
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
        scanned = await scan(
            reactor, config, path, parallel=arguments.parallel, timeout=arguments.timeout, hosts=arguments.hosts
        )
    except RemoteError as error:
        print(f"slaveapi.hostkeys: cannot list the machines: {error}", file=sys.stderr)
        return 1
    for host in scanned:
        print(host.line())
    counts = {status: sum(host.status == status for host in scanned) for status in (KNOWN, NEW, CHANGED, FAILED)}
    if arguments.write:
        # The rewrite waits for the directory lock and fsyncs: not on the reactor.
        written = await deferToThreadPool(reactor, reactor.getThreadPool(), write_new_keys, path, scanned)
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
