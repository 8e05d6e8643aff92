"""
The one root every client's errors derive from, so that an action can catch
"the remote system could not be used" in one clause.

Each client keeps its own family (L{slaveapi.clients.http.RemoteError},
L{slaveapi.clients.ssh.SSHError}, ...) for callers that need to tell them
apart; a timeout of any client is also a L{ClientTimeout}, and a host or
service that cannot be reached at all is also an L{Unreachable}.
"""

from __future__ import annotations


class ClientError(Exception):
    """A remote system could not be used for one call; C{str()} is one line."""


class ClientTimeout(ClientError):
    """
    A call or a wait was given up after its time limit.

    Not a subclass of the builtin C{TimeoutError}: that is an C{OSError},
    whose constructor reads two arguments as C{(errno, strerror)}, and an
    C{except OSError} written for sockets would catch it.
    """


class Unreachable(ClientError):
    """The remote host or service could not be reached at all (no route, no answer, no name)."""
