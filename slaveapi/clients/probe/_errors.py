"""
What a probe can fail with, and which failures say nothing about the machine.

A probe that cannot be run at all (L{ProbeError}) fails whoever waits on it.
A probe that failed for a reason of this host's own, out of file
descriptors, socket buffers or memory (L{LocalProbeError}), is no evidence
that the machine is down: counted as "down", it could make a wait for a
machine to go down see a reboot that never happened. The probe loop gives
no verdict on it and probes again at its next tick.
"""

from __future__ import annotations

import errno

from twisted.internet.error import ConnectError

from slaveapi.clients._errors import ClientError

#: The errors of this host, not of the machine probed: too many open files (the
#: process's, the system's), no socket buffer space, no memory.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ProbeError(ClientError):
    """A probe could not be run at all (as opposed to a machine that does not answer it)."""


class LocalProbeError(ProbeError):
    """A probe failed for a local reason (see L{LOCAL_ERRNOS}): no evidence about the machine."""


def local_errno(error: BaseException | None) -> int | None:
    """
    The local errno (one of L{LOCAL_ERRNOS}) C{error} stands for, if any:
    an C{OSError}'s own, the one a Twisted L{ConnectError} carries (as
    C{osError}), or that of the error it was raised from.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        number: object = None
        if isinstance(error, OSError):
            number = error.errno
        elif isinstance(error, ConnectError):
            number = error.osError
        if isinstance(number, int) and number in LOCAL_ERRNOS:
            return number
        error = error.__cause__ or error.__context__
    return None
