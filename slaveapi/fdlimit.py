"""
Open-file limit: raise the soft C{RLIMIT_NOFILE} to the hard one at start-up.

A reboot wave keeps a socket open per SSH session and probe, and the lab
listens on one SSH socket per machine: 2,000 machines need more than the
usual soft limit of 1,024 descriptors, while the hard limit (often 4,096 to
a million) allows them. Raising the soft limit up to the hard one needs no
privilege. The reactor waits with epoll, so descriptors above 1,024 are
fine (the lab's BMC processes, which use select(), serve at most a few
hundred BMCs each).
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

_log = Logger(namespace="slaveapi.fdlimit")


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        _log.warn("cannot raise the open-files limit from {soft} to {hard}: {error}", soft=soft, hard=hard,
                  error=str(error))
        return soft
    _log.info("open-files limit raised from {soft} to {hard}", soft=soft, hard=hard)
    return hard
