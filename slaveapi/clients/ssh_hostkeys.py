"""
The SSH host keys SlaveAPI knows, kept in two OpenSSH-format files.

C{known_hosts} holds I{verified} keys: put there by an operator (by hand or
with C{python -m slaveapi.hostkeys scan --write}), or moved there once a
host whose key was recorded on first use accepted a login by one of our
private keys. C{known_hosts.unverified}, beside it, holds keys recorded on
first use (C{host_keys = tofu}) that have not been verified that way yet.
Keeping the two apart means the verified file can be handed to OpenSSH as
it is, and whether a key is verified survives restarts.

Files are read again whenever they change on disk (another process may
enrol keys), and every change writes a new file beside the old one (mode
0600, flushed to disk) and renames it over the old one, so that a crash
never leaves a file empty or half-written. Writers in different processes
take turns through an exclusive lock on the directory.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.conch.client.knownhosts import HashedEntry, PlainEntry, UnparsedEntry
from twisted.conch.error import InvalidEntry
from twisted.conch.ssh.keys import BadKeyError, Key

#: The suffix of the file of keys recorded on first use and not yet verified.
UNVERIFIED_SUFFIX = ".unverified"

#: How a key compares with what a file records for a host.
VERIFIED = "verified"
UNVERIFIED = "unverified"
UNKNOWN = "unknown"
CHANGED = "changed"

_LOCK_ATTEMPTS = 100
_LOCK_PAUSE = 0.01


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


def replace_file(path: str, data: bytes) -> None:
    """
    Make C{path} hold C{data}, atomically: a reader sees the old content or
    the new one, never a mix, and a crash leaves one of them on disk.

    The new file (mode 0600) is written and synced beside the old one, then
    renamed over it, and the directory is synced so that the rename lasts.
    """
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def create_if_missing(path: str) -> None:
    """Create an empty C{path} (mode 0600; a missing directory 0700) unless it exists."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        replace_file(path, b"")


class _DirectoryLock:
    """
    An exclusive lock on a directory, held while one file in it is rewritten.

    The rewritten file itself cannot carry the lock: renaming a new file over
    it leaves a lock on the old one. The wait is bounded; a holder keeps the
    lock only for one small write.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._descriptor: int | None = None

    def __enter__(self) -> None:
        descriptor = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
        for _attempt in range(_LOCK_ATTEMPTS):
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(descriptor)
                    raise
                time.sleep(_LOCK_PAUSE)
                continue
            self._descriptor = descriptor
            return
        os.close(descriptor)
        raise OSError(errno.EWOULDBLOCK, f"{self._directory}: locked by another process for too long")

    def __exit__(self, *exc_info: object) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing releases the lock
            self._descriptor = None


def _parse(line: bytes) -> Any:
    try:
        if line.startswith(HashedEntry.MAGIC):
            return HashedEntry.fromString(line)
        return PlainEntry.fromString(line)
    except (InvalidEntry, BadKeyError, ValueError):
        return UnparsedEntry(line)


class KnownHostsFile:
    """
    One OpenSSH known_hosts file, read again when it changes on disk.

    Lines it cannot parse (comments, other formats) are kept as they are.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # The file's content when last parsed: reading it again is cheap,
        # parsing thousands of keys is not.
        self._content: bytes | None = None
        self._entries: list[Any] = []

    def entries(self) -> list[Any]:
        """The file's entries (C{twisted.conch.client.knownhosts} ones); none if it is missing."""
        lines = self._read_lines()
        content = b"".join(lines)
        if content != self._content:
            self._entries = [_parse(line) for line in lines]
            self._content = content
        return self._entries

    def compare(self, name: bytes, key: Key) -> str:
        """L{VERIFIED} if the file has C{key} for C{name}, L{CHANGED} if only other keys, else L{UNKNOWN}."""
        recorded = False
        for entry in self.entries():
            if isinstance(entry, UnparsedEntry) or not entry.matchesHost(name):
                continue
            if entry.matchesKey(key):
                return VERIFIED
            recorded = True
        return CHANGED if recorded else UNKNOWN

    def add(self, names: Iterable[bytes], key: Key) -> None:
        """Add one line filing C{key} under C{names}."""
        self.add_many([(names, key)])

    def add_many(self, entries: Iterable[tuple[Iterable[bytes], Key]]) -> None:
        """Add a line per C{(names, key)}, all in one rewrite."""
        lines = b"".join(
            PlainEntry(list(names), key.sshType(), key.public(), None).toString() + b"\n" for names, key in entries
        )
        if not lines:
            return
        with _DirectoryLock(self._directory()):
            current = b"".join(self._read_lines())
            if current and not current.endswith(b"\n"):
                current += b"\n"
            replace_file(self.path, current + lines)

    def remove(self, name: bytes, key: Key | None = None) -> bool:
        """Drop the lines that file a key (C{key}, or any) under C{name}; whether there were any."""
        with _DirectoryLock(self._directory()):
            lines = self._read_lines()
            kept = [line for line in lines if not _matches(_parse(line), name, key)]
            if len(kept) == len(lines):
                return False
            replace_file(self.path, b"".join(kept))
        return True

    def _directory(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def _read_lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as handle:
                return handle.readlines()
        except FileNotFoundError:
            return []


def _matches(entry: Any, name: bytes, key: Key | None) -> bool:
    if isinstance(entry, UnparsedEntry) or not entry.matchesHost(name):
        return False
    return key is None or bool(entry.matchesKey(key))


@dataclass(frozen=True)
class HostKeyVerdict:
    """
    How a host's key compares with what SlaveAPI has recorded.

    @ivar status: L{VERIFIED}, L{UNVERIFIED} (recorded on first use, not
        verified yet), L{UNKNOWN} or L{CHANGED} (another key is recorded).
    @ivar path: the file that records the other key, for L{CHANGED}.
    """

    status: str
    path: str | None = None


class HostKeyStore:
    """The verified C{known_hosts} file and, beside it, the keys recorded on first use."""

    def __init__(self, known_hosts_path: str) -> None:
        self.verified = KnownHostsFile(known_hosts_path)
        self.unverified = KnownHostsFile(known_hosts_path + UNVERIFIED_SUFFIX)

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

    def record_unverified(self, name: bytes, key: Key) -> None:
        """Record C{key} for C{name} on first use, not yet verified."""
        self.unverified.add([name], key)

    def mark_verified(self, name: bytes, key: Key) -> None:
        """Move C{key} for C{name} from the keys recorded on first use to the verified ones."""
        if self.verified.compare(name, key) != VERIFIED:
            self.verified.add([name], key)
        self.unverified.remove(name, key)

    def forget(self, name: bytes) -> bool:
        """Drop every key recorded for C{name}, verified or not; whether there was one."""
        dropped = self.verified.remove(name)
        return self.unverified.remove(name) or dropped
