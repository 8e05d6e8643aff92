"""
The SSH host keys SlaveAPI knows, and the policy that checks a host's key against them.

C{known_hosts} holds I{verified} keys, and only an operator puts them there
(by hand, or with C{python -m slaveapi.hostkeys scan --write} after the
fingerprints were shown). C{known_hosts.unverified}, beside it, holds the
keys recorded on first use (C{host_keys = tofu}): they pin a host's key
against a change, and no outcome of a login ever moves them to
C{known_hosts}. A key login in particular proves nothing about the server:
a server may answer "accepted" to our key without ever checking a signature.
Keeping the two files apart means the verified one can be handed to OpenSSH
as it is, and whether a key is verified survives restarts. Each file is a
L{KnownHostsFile}; in SlaveAPI (a L{HostKeyStore} given a reactor) changes
are written in the reactor's thread pool, never on the reactor.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from slaveapi._text import one_line
from slaveapi.clients.ssh._errors import SSHHostKeyMismatch, SSHHostKeyNotVerified
from slaveapi.clients.ssh._knownhosts import (
    CHANGED,
    UNKNOWN,
    UNVERIFIED,
    VERIFIED,
    KnownHostsFile,
    create_if_missing,
    run_in_threads,
)

#: The suffix of the file of keys recorded on first use (not verified).
UNVERIFIED_SUFFIX = ".unverified"

_ENROL_HINT = "enrol it with 'python -m slaveapi.hostkeys scan --config <slaveapi.ini> --write'"

_log = Logger(namespace="slaveapi.clients.ssh")


def known_hosts_name(host: str, port: int) -> bytes:
    """The name OpenSSH files a host's key under: C{host}, or C{[host]:port} off port 22."""
    return (host if port == 22 else f"[{host}]:{port}").encode("utf-8")


def openssh_fingerprint(key: Key) -> str:
    """The key's fingerprint as OpenSSH prints it: C{SHA256:} and unpadded base64."""
    digest = hashlib.sha256(key.public().blob()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def describe_key(key: Key) -> str:
    """The key's type and fingerprint, e.g. C{ssh-ed25519 SHA256:...}."""
    return f"{key.sshType().decode('ascii')} {openssh_fingerprint(key)}"


@dataclass(frozen=True)
class HostKeyVerdict:
    """
    How a host's key compares with what SlaveAPI has recorded.

    @ivar status: L{VERIFIED}, L{UNVERIFIED} (recorded on first use),
        L{UNKNOWN} or L{CHANGED} (another key is recorded).
    @ivar path: the file that records the other key, for L{CHANGED}.
    """

    status: str
    path: str | None = None


def _all(deferreds: list[Deferred[None]]) -> Deferred[None]:
    """Fires once all have; fails with the first failure itself (not wrapped)."""
    gathered = gatherResults(deferreds, consumeErrors=True)
    return gathered.addCallbacks(lambda _: None, lambda failure: failure.value.subFailure)


class HostKeyStore:
    """
    The verified C{known_hosts} file and, beside it, the keys recorded on first use.

    Nothing here ever moves a key from the second file to the first: only an
    operator verifies a key.

    @param reactor: when given, the changes made while SlaveAPI runs
        (L{record_unverified}, L{forget}) are written in its thread pool;
        without it, at once in the calling thread, which must then not be
        the reactor's (the write may wait for another process's lock).
    """

    def __init__(self, known_hosts_path: str, reactor: Any = None) -> None:
        run = run_in_threads(reactor) if reactor is not None else None
        self.verified = KnownHostsFile(known_hosts_path, run)
        self.unverified = KnownHostsFile(known_hosts_path + UNVERIFIED_SUFFIX, run)

    @property
    def path(self) -> str:
        """The verified file."""
        return self.verified.path

    def create(self) -> None:
        """Create the verified file (empty, 0600) if it is missing."""
        create_if_missing(self.verified.path)

    def judge(self, name: bytes, key: Key, *, first_use: bool) -> HostKeyVerdict:
        """
        Compare C{key} with the keys recorded under C{name}; with C{first_use},
        the keys recorded on first use count too.
        """
        files = [(self.verified, VERIFIED)] + ([(self.unverified, UNVERIFIED)] if first_use else [])
        for known, status in files:
            found = known.compare(name, key)
            if found == VERIFIED:
                return HostKeyVerdict(status)
            if found == CHANGED:
                return HostKeyVerdict(CHANGED, known.path)
        return HostKeyVerdict(UNKNOWN)

    def flushed(self) -> Deferred[None]:
        """Fires once neither file has a change being written or queued."""
        return _all([self.verified.flushed(), self.unverified.flushed()])

    def record_unverified(self, name: bytes, key: Key) -> Deferred[None]:
        """
        Record C{key} for C{name} on first use: pinned at once (a later
        L{judge} sees it), on disk when the Deferred fires.
        """
        return self.unverified.add_later([name], key)

    def forget(self, name: bytes) -> tuple[bool, Deferred[None]]:
        """
        Drop every key recorded for C{name}, verified or not: in memory now.

        @return: whether there was one, and a Deferred that fires once both
            files no longer have it (or fails with the first write's error).
        """
        dropped, verified_written = self.verified.remove_later(name)
        also, unverified_written = self.unverified.remove_later(name)
        return dropped or also, _all([verified_written, unverified_written])


class HostKeyPolicy:
    """
    The host key policy, applied against the verified known_hosts file and
    the keys recorded on first use beside it (L{HostKeyStore}).

    Checking and recording a new key happen in one synchronous call (the
    key is pinned in memory at once), so concurrent connections to new
    hosts cannot interleave between the check and the record. The file is
    written afterwards, in a worker thread (with a reactor), never on the
    reactor: the check cannot wait for it, since conch's client reads on
    after the host key (a server's next packets come under the new keys).

    @param reactor: writes go to its thread pool; without one, at once.
    @param store: the store to use (the previous client's, on a reload, so
        that one process has one writer per file); default a new one on C{path}.
    """

    def __init__(self, policy: str, path: str, reactor: Any = None, store: HostKeyStore | None = None) -> None:
        if policy not in ("tofu", "strict", "off"):
            raise ValueError(f"unknown host key policy {policy!r}")
        self._policy = policy
        self._store = store if store is not None and store.path == path else HostKeyStore(path, reactor)
        if policy != "off":
            self._store.create()

    @property
    def store(self) -> HostKeyStore:
        """The files the keys are recorded in."""
        return self._store

    @property
    def path(self) -> str:
        """The verified known_hosts file."""
        return self._store.path

    def forget(self, host: str, port: int) -> bool:
        """
        Drop the keys recorded for C{host}:C{port} (trust on first use only),
        so the next machine to get that address is trusted afresh.
        """
        if self._policy != "tofu":
            return False
        dropped, written = self._store.forget(known_hosts_name(host, port))
        written.addErrback(self._not_written, host, port, "cannot drop its recorded host key")
        if not dropped:
            return False
        _log.info("ssh {host}:{port}: forgot its recorded host key", host=host, port=port)
        return True

    @staticmethod
    def _not_written(failure: Failure, host: str, port: int, what: str) -> None:
        """Log that a change to the host key files could not be written (it is reported, not raised)."""
        error = failure.value
        reason = (
            (error.strerror if isinstance(error, OSError) else None) or one_line(str(error)) or type(error).__name__
        )
        _log.error("ssh {host}:{port}: {what}: {reason}", host=host, port=port, what=what, reason=reason)

    def check(self, host: str, port: int, key: Key) -> bool:
        """
        Accept C{key} for C{host}:C{port}, or raise L{SSHHostKeyMismatch}.

        @return: whether the key is verified (in known_hosts), so that
            passwords may be offered to the host. Under C{tofu} an unknown
            key is recorded and accepted unverified: only key logins may
            follow, now and later. It is pinned at once and written to
            disk in the background; a write that fails is logged, and the
            key recorded again on the next connection.

        Unlike C{KnownHostsFile.hasHostKey}, a recorded key of another type
        counts as a mismatch, so that a server cannot dodge the check by
        offering a different key type.
        """
        if self._policy == "off":
            return True
        name = known_hosts_name(host, port)
        verdict = self._store.judge(name, key, first_use=self._policy == "tofu")
        described = describe_key(key)
        if verdict.status == CHANGED:
            _log.error(
                "ssh {host}:{port}: host key {key} does not match {path}",
                host=host,
                port=port,
                key=described,
                path=verdict.path,
            )
            raise SSHHostKeyMismatch(
                f"ssh {host}:{port}: host key changed ({described} does not match the key recorded in {verdict.path})"
            )
        if verdict.status == VERIFIED:
            return True
        if self._policy == "strict":
            raise SSHHostKeyNotVerified(
                f"ssh {host}:{port}: host key not verified ({described} is not in {self.path}"
                f" and host_keys is strict); check its fingerprint and {_ENROL_HINT}"
            )
        if verdict.status == UNKNOWN:
            _log.info(
                "ssh {host}:{port}: recorded host key {key} on first use (not verified: key logins only)",
                host=host,
                port=port,
                key=described,
            )
            recorded = self._store.record_unverified(name, key)
            recorded.addErrback(self._not_written, host, port, f"cannot record its host key {described}")
        return False

    def not_verified(self, host: str, port: int, key: Key) -> SSHHostKeyNotVerified:
        """The error for a host whose key is not verified and that took none of our keys."""
        return SSHHostKeyNotVerified(
            f"ssh {host}:{port}: host key not verified ({describe_key(key)} is not in {self.path};"
            " a key recorded on first use only ever gets key logins: a server can accept any key"
            " without our signature being checked, so a key login proves nothing about the server),"
            " so no password was offered; give the user a key in the credentials' ssh_keys,"
            f" or check the fingerprint and {_ENROL_HINT}"
        )
