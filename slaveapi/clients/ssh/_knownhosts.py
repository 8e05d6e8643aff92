"""
One OpenSSH known_hosts file, held in memory as an index by host name
(L{KnownHostsFile}), and how it is rewritten safely.

The index is kept up to date by our own changes; the file is read again
only when someone else changed it (its size, modification time or inode
differ from what our last read or write left). Lines are parsed into keys
only when their host is looked up, so reading a big file again is a split
per line, not a key parse per line.

Every change writes a new file beside the old one (mode 0600, flushed to
disk) and renames it over the old one, so that a crash never leaves a file
empty or half-written. Writers in different processes take turns through an
exclusive lock on the directory. Given a runner that uses the reactor's
thread pool, a change is made in memory at once and written in a worker
thread, one write at a time per file, several queued changes in one write:
neither the fsyncs nor the wait for the lock ever hold up the reactor.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.conch.client.knownhosts import HashedEntry, PlainEntry, UnparsedEntry
from twisted.conch.error import InvalidEntry
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

T = TypeVar("T")

#: How a key compares with what a file records for a host.
VERIFIED = "verified"
UNVERIFIED = "unverified"
UNKNOWN = "unknown"
CHANGED = "changed"

# The wait for another writer's lock: at most _LOCK_ATTEMPTS pauses of
# _LOCK_PAUSE seconds (5 s), never on the reactor thread.
_LOCK_ATTEMPTS = 500
_LOCK_PAUSE = 0.01


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
        with contextlib.suppress(OSError):
            os.unlink(temporary)
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
    it leaves a lock on the old one. The wait is bounded (about 5 s); a
    holder keeps the lock only for one small write. The wait pauses the
    calling thread, so SlaveAPI takes the lock only in a worker thread
    (see L{run_in_threads}), never on the reactor.
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


def _split_lines(data: bytes) -> list[bytes]:
    """C{data}'s lines, each with its newline (the last one may lack it), as OpenSSH reads them."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


class _Line:
    """
    One line of a known_hosts file, indexed by its host names without
    parsing its key: the key is parsed when the line is first looked at.

    @ivar names: the host names of a plain line; C{None} for a hashed one
        (matched by its HMAC); empty for a comment or a blank line.
    """

    __slots__ = ("_digest", "_entry", "_salt", "names", "raw")

    def __init__(self, raw: bytes, entry: Any = None) -> None:
        self.raw = raw
        self._entry = entry
        self._salt = self._digest = b""
        fields = raw.split(None, 1)
        first = fields[0] if fields else b""
        self.names: tuple[bytes, ...] | None
        if first.startswith(HashedEntry.MAGIC):
            self.names = None
            try:
                salt, digest = first[len(HashedEntry.MAGIC) :].split(b"|", 1)
                self._salt, self._digest = base64.b64decode(salt), base64.b64decode(digest)
            except ValueError:
                pass  # never matches; kept as it is
        elif not first or first.startswith(b"#"):
            self.names = ()
        else:
            self.names = tuple(first.split(b","))

    def matches_name(self, name: bytes) -> bool:
        """Whether the line files a key under C{name} (exactly, or by its hash)."""
        if self.names is not None:
            return name in self.names
        if not self._digest:
            return False
        return hmac.compare_digest(hmac.new(self._salt, name, hashlib.sha1).digest(), self._digest)

    def entry(self) -> Any:
        """The parsed line (an C{UnparsedEntry} for one that is no key)."""
        if self._entry is None:
            self._entry = _parse(self.raw)
        return self._entry

    def files(self, name: bytes, key: Key | None) -> bool:
        """Whether the line is a key (C{key}, or any) filed under C{name}."""
        if not self.matches_name(name):
            return False
        entry = self.entry()
        if isinstance(entry, UnparsedEntry):
            return False
        return key is None or bool(entry.matchesKey(key))


class _Index:
    """The key lines of one file by host name; hashed lines are tried one by one."""

    def __init__(self, lines: Iterable[_Line] = ()) -> None:
        self._by_name: dict[bytes, list[_Line]] = {}
        self._hashed: list[_Line] = []
        for line in lines:
            self.add(line)

    @classmethod
    def of(cls, data: bytes) -> _Index:
        """The index of a file's content: a split per line, no key parsed."""
        return cls(_Line(raw) for raw in _split_lines(data))

    def add(self, line: _Line) -> None:
        if line.names is None:
            self._hashed.append(line)
            return
        for name in dict.fromkeys(line.names):
            self._by_name.setdefault(name, []).append(line)

    def find(self, name: bytes, key: Key | None = None) -> list[_Line]:
        """The lines filing a key (C{key}, or any) under C{name}."""
        candidates = [*self._by_name.get(name, ()), *(line for line in self._hashed if line.matches_name(name))]
        return [line for line in candidates if line.files(name, key)]

    def remove(self, name: bytes, key: Key | None) -> bool:
        """Drop the lines filing a key (C{key}, or any) under C{name}; whether there were any."""
        found = self.find(name, key)
        for line in found:
            if line.names is None:
                self._hashed = [other for other in self._hashed if other is not line]
                continue
            for each in dict.fromkeys(line.names):
                kept = [other for other in self._by_name.get(each, ()) if other is not line]
                if kept:
                    self._by_name[each] = kept
                else:
                    self._by_name.pop(each, None)
        return bool(found)


@dataclass(frozen=True, eq=False)
class _Add:
    """A change: one line filing C{key} under C{names}, at the end of the file."""

    names: tuple[bytes, ...]
    key: Key

    def entry(self) -> PlainEntry:
        return PlainEntry(list(self.names), self.key.sshType(), self.key.public(), None)

    def apply(self, index: _Index) -> None:
        entry = self.entry()
        index.add(_Line(entry.toString() + b"\n", entry))

    def apply_to(self, lines: list[bytes]) -> list[bytes]:
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        lines.append(self.entry().toString() + b"\n")
        return lines


@dataclass(frozen=True, eq=False)
class _Remove:
    """A change: drop the lines filing a key (C{key}, or any) under C{name}."""

    name: bytes
    key: Key | None

    def apply(self, index: _Index) -> None:
        index.remove(self.name, self.key)

    def apply_to(self, lines: list[bytes]) -> list[bytes]:
        return [raw for raw in lines if not _Line(raw).files(self.name, self.key)]


_Change = _Add | _Remove


def _stamp_of(status: os.stat_result) -> tuple[int, int, int, int, int]:
    """What tells one version of a file from another: device, inode, size, mtime and ctime (ns)."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _stat(path: str) -> tuple[int, int, int, int, int] | None:
    try:
        return _stamp_of(os.stat(path))
    except FileNotFoundError:
        return None


def _read(path: str) -> tuple[bytes, tuple[int, int, int, int, int] | None]:
    """The file's content and the stamp of the version read (taken before reading: never newer)."""
    try:
        with open(path, "rb") as handle:
            stamp = _stamp_of(os.fstat(handle.fileno()))
            return handle.read(), stamp
    except FileNotFoundError:
        return b"", None


#: The stamp of a file never read, unlike any real one.
_NEVER_READ: Any = object()


@dataclass(frozen=True)
class _Rewritten:
    """
    What one rewrite left on disk.

    @ivar stamp: the file's stamp after it.
    @ivar index: the new content's index when the file had been changed by
        someone else meanwhile; C{None} when the memory was up to date.
    """

    stamp: tuple[int, int, int, int, int] | None
    index: _Index | None


def _rewrite(path: str, changes: list[_Change], expected: Any) -> _Rewritten:
    """
    Apply C{changes} to the file as it is on disk now, in one atomic rewrite
    under the directory lock. Blocking (the lock wait, the fsyncs): SlaveAPI
    runs it in a worker thread. It touches no shared state.

    @param expected: the stamp the caller's memory of the file stands for.
    """
    with _DirectoryLock(os.path.dirname(os.path.abspath(path))):
        data, before = _read(path)
        lines = _split_lines(data)
        for change in changes:
            lines = change.apply_to(lines)
        new = b"".join(lines)
        if new != data:
            replace_file(path, new)
        after = _stat(path)
    return _Rewritten(after, None if before == expected else _Index.of(new))


#: How blocking work is run: at once (no reactor), or in a worker thread.
Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]


def _run_inline(work: Callable[[], T]) -> Deferred[T]:
    return maybeDeferred(work)


def run_in_threads(reactor: Any) -> Runner:
    """A runner that runs each piece of blocking work in a thread of C{reactor}'s pool."""

    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return run


class KnownHostsFile:
    """
    One OpenSSH known_hosts file, held in memory as an index by host name.

    Our own changes update the index as they are made; the file is read
    again only when someone else changed it. Lines it cannot parse
    (comments, other formats) are kept as they are.

    Changes come two ways. L{add}, L{add_many} and L{remove} write at once,
    in the calling thread, and raise when that fails: for the enrolment
    command and tools, without a reactor. L{add_later} and L{remove_later}
    change the memory at once and queue the write: one write at a time,
    all the changes queued meanwhile in the next one, run by C{run} (in
    SlaveAPI, a worker thread of the reactor's pool); the Deferred they
    return fires once the change is on disk.

    @param run: runs one blocking write; default at once, in the caller's thread.
    """

    def __init__(self, path: str, run: Runner | None = None) -> None:
        self.path = path
        self._run: Runner = run or _run_inline
        self._index = _Index()
        # What the index stands for on disk (our changes being written or queued aside).
        self._stamp: Any = _NEVER_READ
        # The changes being written (None: no write under way), and those
        # queued behind them, with the Deferreds of their callers.
        self._writing: list[tuple[list[_Change], Deferred[None]]] | None = None
        self._queued: list[tuple[list[_Change], Deferred[None]]] = []
        self._flush_waiters: list[Deferred[None]] = []

    def flushed(self) -> Deferred[None]:
        """Fires once no change is being written or queued (at once if none is), whether the writes worked or not."""
        if self._writing is None and not self._queued:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._flush_waiters.append(waiting)
        return waiting

    def _refresh(self) -> None:
        """Read the file again if someone else changed it since our last read or write."""
        if self._writing is not None:
            return  # our own write is under way: the memory is ahead of the file
        if _stat(self.path) != self._stamp:
            self._load()

    def _load(self) -> None:
        """Index the file as it is on disk, plus the changes still queued."""
        data, stamp = _read(self.path)
        index = _Index.of(data)
        for changes, _ in self._queued:
            for change in changes:
                change.apply(index)
        self._index, self._stamp = index, stamp

    def compare(self, name: bytes, key: Key) -> str:
        """L{VERIFIED} if the file has C{key} for C{name}, L{CHANGED} if only other keys, else L{UNKNOWN}."""
        self._refresh()
        lines = self._index.find(name)
        if any(line.entry().matchesKey(key) for line in lines):
            return VERIFIED
        return CHANGED if lines else UNKNOWN

    def add(self, names: Iterable[bytes], key: Key) -> None:
        """Add one line filing C{key} under C{names}, now (blocking)."""
        self.add_many([(names, key)])

    def add_many(self, entries: Iterable[tuple[Iterable[bytes], Key]]) -> None:
        """Add a line per C{(names, key)}, all in one rewrite, now (blocking)."""
        adds = [_Add(tuple(names), key) for names, key in entries]
        changes: list[_Change] = [add for add in adds if add.names]
        if changes:
            self._write_now(changes)

    def remove(self, name: bytes, key: Key | None = None) -> bool:
        """Drop the lines filing a key (C{key}, or any) under C{name}, now (blocking); whether there were any."""
        self._refresh()
        if not self._index.find(name, key):
            return False
        self._write_now([_Remove(name, key)])
        return True

    def add_later(self, names: Iterable[bytes], key: Key) -> Deferred[None]:
        """Add a line filing C{key} under C{names}: in memory now; the Deferred fires once it is on disk."""
        return self._submit([_Add(tuple(names), key)], self._run)

    def remove_later(self, name: bytes, key: Key | None = None) -> tuple[bool, Deferred[None]]:
        """
        Drop the lines filing a key (C{key}, or any) under C{name}: in memory now.

        @return: whether there were any, and a Deferred that fires once the
            file no longer has them.
        """
        self._refresh()
        if not self._index.find(name, key):
            return False, succeed(None)
        return True, self._submit([_Remove(name, key)], self._run)

    def _write_now(self, changes: list[_Change]) -> None:
        if self._writing is not None:
            raise RuntimeError(f"{self.path}: a queued write is under way; use add_later/remove_later")
        outcome: list[Any] = []
        self._submit(changes, _run_inline).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()

    def _submit(self, changes: list[_Change], run: Runner) -> Deferred[None]:
        self._refresh()
        for change in changes:
            change.apply(self._index)
        done: Deferred[None] = Deferred()
        self._queued.append((changes, done))
        self._start(run)
        return done

    def _start(self, run: Runner) -> None:
        """Write everything queued, in one rewrite, unless a write is under way."""
        if self._writing is not None or not self._queued:
            return
        batch, self._queued = self._queued, []
        self._writing = batch
        changes = [change for each, _ in batch for change in each]
        expected = self._stamp
        written = run(lambda: _rewrite(self.path, changes, expected))
        written.addBoth(self._written, batch)

    def _written(self, outcome: Any, batch: list[tuple[list[_Change], Deferred[None]]]) -> None:
        self._writing = None
        if isinstance(outcome, _Rewritten):
            if outcome.index is not None:
                # Someone else had changed the file: index it as written, plus what is queued.
                for changes, _ in self._queued:
                    for change in changes:
                        change.apply(outcome.index)
                self._index = outcome.index
            self._stamp = outcome.stamp
            for _, done in batch:
                done.callback(None)
        else:
            # What is on disk is not known: read it again at the next look.
            self._stamp = _NEVER_READ
            for _, done in batch:
                done.errback(outcome)
        self._start(self._run)
        if self._writing is None:
            waiters, self._flush_waiters = self._flush_waiters, []
            for waiting in waiters:
                waiting.callback(None)
