"""
What can go wrong talking to a host over SSH: the L{SSHError} family, and
how a failed TCP connection maps onto it.

Every message is one line naming the host and port, never a password or key.
"""

from __future__ import annotations

import errno

from twisted.internet import error as net_error
from twisted.python.failure import Failure

from slaveapi._text import one_line
from slaveapi.clients._errors import ClientError, ClientTimeout, Unreachable


class SSHError(ClientError):
    """Talking to a host over SSH failed; the message is one line naming host and port."""


class SSHConnectionRefused(SSHError):
    """Nothing listens on the host's SSH port (the TCP connection was refused)."""


class SSHAuthenticationFailed(SSHError):
    """Every configured user, key and password was rejected."""


class SSHTimeout(SSHError, ClientTimeout):
    """Logging in or a command took longer than allowed."""


class SSHHostKeyMismatch(SSHError):
    """The host's key differs from the recorded one, or (strict) none is recorded."""


class SSHHostKeyNotVerified(SSHHostKeyMismatch):
    """
    The host's key is not verified (not in known_hosts), so no password is
    offered to it: under C{strict} nothing is, under C{tofu} only keys.
    """


class SSHBusy(SSHError):
    """No SSH session to the host came free in time (C{[ssh] per_host} are open)."""


class SSHUnreachable(SSHError, Unreachable):
    """The host cannot be reached: its name does not resolve, no route, or no answer at all."""


def connect_error(host: str, port: int, reason: Failure) -> SSHError:
    """Map a failure to open the TCP connection to C{host}:C{port} to an L{SSHError}."""
    where = f"ssh {host}:{port}"
    value = reason.value
    if isinstance(value, net_error.ConnectionRefusedError):
        return SSHConnectionRefused(f"{where}: connection refused")
    if isinstance(value, net_error.DNSLookupError):
        return SSHUnreachable(f"{where}: host name does not resolve")
    if isinstance(value, (net_error.NoRouteError, net_error.TCPTimedOutError, net_error.TimeoutError)):
        return SSHUnreachable(f"{where}: host unreachable ({type(value).__name__})")
    os_error = getattr(value, "osError", None)
    if os_error in (errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETUNREACH):
        return SSHUnreachable(f"{where}: host unreachable ({errno.errorcode[os_error]})")
    return SSHUnreachable(f"{where}: cannot connect ({type(value).__name__}: {one_line(str(value))})")
