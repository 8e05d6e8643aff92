"""
The C{--data} directory: one SlaveAPI per directory, and private files in it.

Two processes on one directory would hand out the same request ids (and so
the same EC2 client tokens) and each would fail the other's running actions
at start-up as interrupted. So at start-up SlaveAPI takes an exclusive
C{flock} on C{slaveapi.lock} in the directory and holds it for the life of
the process, with its pid written in the file so that an instance refused
can say which process holds it. The kernel drops the lock when the process
ends, however it ends (even C{kill -9}): a stale lock file never blocks a
restart.

What SlaveAPI creates there is private to its user: the directory 0700,
files 0600 (results, known hosts and the lock name the fleet and who asked
for what).
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from twisted.application.service import Service

#: The lock file's name in the data directory.
LOCK_FILE = "slaveapi.lock"

#: Read no more of a lock file than a pid can take.
_PID_READ_LIMIT = 32


class DataDirError(Exception):
    """The data directory cannot be used; the message is one line saying why."""


class DataDirBusy(DataDirError):
    """Another process holds the data directory's lock."""

    def __init__(self, directory: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not recorded yet"
        super().__init__(
            f"--data {directory} is in use by another SlaveAPI ({holder}): "
            "stop that one first, or give this one another --data directory"
        )
        self.directory = directory
        self.pid = pid


def ensure_data_dir(directory: str) -> str:
    """
    The absolute path of C{directory}, created 0700 (with its missing
    parents) if it does not exist; an existing directory is left as it is.

    @raise DataDirError: if it cannot be created.
    """
    path = os.path.abspath(directory)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as error:
        raise DataDirError(f"--data {directory}: cannot create the directory ({error.strerror})") from None
    return path


def create_private_file(path: str) -> None:
    """Create C{path} empty, mode 0600, unless it exists; an existing file is left as it is."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(descriptor)


@dataclass
class DataDirLock:
    """
    The exclusive lock on a data directory, held while the descriptor is open.

    @ivar descriptor: the open lock file; not inherited by child processes.
    """

    directory: str
    descriptor: int

    def record_pid(self, pid: int) -> None:
        """Write C{pid} as the holder (again after twistd forks into a daemon)."""
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, f"{pid}\n".encode("ascii"), 0)

    def release(self) -> None:
        """Give the directory up (closing the descriptor drops the lock)."""
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1


def lock_data_dir(directory: str) -> DataDirLock:
    """
    Take the exclusive lock on C{directory} (which must exist) without waiting.

    @raise DataDirBusy: if another process holds it.
    @raise DataDirError: if the lock file cannot be opened or locked.
    """
    path = os.path.join(directory, LOCK_FILE)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise DataDirError(f"--data {directory}: cannot open {LOCK_FILE} ({error.strerror})") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _recorded_pid(descriptor)
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirBusy(directory, holder) from None
        raise DataDirError(f"--data {directory}: cannot lock {LOCK_FILE} ({error.strerror})") from None
    lock = DataDirLock(directory, descriptor)
    lock.record_pid(os.getpid())
    return lock


def _recorded_pid(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, _PID_READ_LIMIT, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class DataDirLockService(Service):
    """
    Holds the data directory's lock while the service runs.

    The lock is taken before the service starts (so that a second instance
    stops before touching anything); twistd may then fork into a daemon,
    which keeps the lock but changes the pid, so the pid is written again at
    start.
    """

    def __init__(self, lock: DataDirLock) -> None:
        self.lock = lock

    def startService(self) -> None:
        super().startService()
        self.lock.record_pid(os.getpid())

    def stopService(self) -> None:
        super().stopService()
        self.lock.release()
