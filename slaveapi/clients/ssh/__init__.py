"""
SSH client: run commands on a machine over an exec channel (twisted.conch).

Actions use it to read uptime, tail a buildbot log and ask a machine to
reboot. Logins come from the credentials file: for each user, its private
keys (publickey authentication) and then its passwords, tried in order on one
connection, like the 2015 client's password list; the login that worked last
on a host is tried first next time. Keys are read once, when the client is
made, and no key from C{~/.ssh} or an ssh-agent is ever used.

Host keys are checked per the configured policy (C{strict}, trust on first
use, or C{off}) against the verified known_hosts file and, for trust on
first use, the keys recorded beside it (L{HostKeyStore}).
A password is only ever offered to a host whose key is verified, that is in
known_hosts, where only an operator puts keys: under C{strict} nothing at
all goes to another host; under C{tofu} only keys do, for good. No login
outcome ever makes a key verified: a server may answer "accepted" to our
key without checking any signature, so a key login proves nothing about
the server. At most C{per_host} sessions to one host are open at once.

Everything is bounded: connecting and logging in by C{connect_timeout}, each
command by its own timeout. Failures are L{SSHError} subclasses whose
one-line messages name the host and port and never a password or key. A connection
that drops after a command was sent is not an error: the result has
C{exit_code=None}, which is what asking a machine to reboot looks like.

Built directly on C{twisted.conch.ssh} rather than
C{SSHCommandClientEndpoint}, because the endpoint discards stderr, cannot
tell exit status 0 from a dropped connection, tries one password per
connection and closes its connection after the first command.

The package is split by layer, one private module each, and this module is
its public face:
  - C{_errors}: the L{SSHError} family;
  - C{_knownhosts}: one OpenSSH known_hosts file, indexed and rewritten atomically;
  - C{_hostkeys}: the two host key files (L{HostKeyStore}) and the policy;
  - C{_protocol}: conch's transport, user-auth, connection and exec channel;
  - C{_link}: one connection and its login, as a state machine;
  - C{_limits}: the per-host session limit;
  - C{_client}: L{SSHClient} and L{SSHSession}.
"""

from slaveapi.clients.ssh._client import SSHClient, SSHSession
from slaveapi.clients.ssh._errors import (
    SSHAuthenticationFailed,
    SSHBusy,
    SSHConnectionRefused,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyNotVerified,
    SSHTimeout,
    SSHUnreachable,
)
from slaveapi.clients.ssh._hostkeys import (
    UNVERIFIED_SUFFIX,
    HostKeyStore,
    HostKeyVerdict,
    describe_key,
    known_hosts_name,
    openssh_fingerprint,
)
from slaveapi.clients.ssh._knownhosts import (
    CHANGED,
    UNKNOWN,
    UNVERIFIED,
    VERIFIED,
    KnownHostsFile,
    create_if_missing,
    replace_file,
)
from slaveapi.clients.ssh._protocol import CommandResult

__all__ = [
    "CHANGED",
    "UNKNOWN",
    "UNVERIFIED",
    "UNVERIFIED_SUFFIX",
    "VERIFIED",
    "CommandResult",
    "HostKeyStore",
    "HostKeyVerdict",
    "KnownHostsFile",
    "SSHAuthenticationFailed",
    "SSHBusy",
    "SSHClient",
    "SSHConnectionRefused",
    "SSHError",
    "SSHHostKeyMismatch",
    "SSHHostKeyNotVerified",
    "SSHSession",
    "SSHTimeout",
    "SSHUnreachable",
    "create_if_missing",
    "describe_key",
    "known_hosts_name",
    "openssh_fingerprint",
    "replace_file",
]
