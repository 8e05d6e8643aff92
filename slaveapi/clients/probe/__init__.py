"""
Liveness probes: is a machine up, and did a reboot take it down and bring it back?

A package of small modules, one idea each:

 - L{_icmp}: ICMP echo packets (building, parsing, the checksum);
 - L{_socket}: the prober's one ICMP socket, read through the reactor, and
   the matching of replies to requests;
 - L{_loop}: the one probe loop per prober that serves every waiter;
 - L{_prober}: L{Prober} itself, choosing how a machine is probed;
 - L{_errors}: what a probe fails with, and which failures are local.

Probes cost no process: a thousand machines rebooting at once, each probed
every second, must not cost a thousand child processes a second (the
system C{ping} it replaced did). Everything importers use is here.
"""

from __future__ import annotations

from slaveapi.clients.probe._errors import LOCAL_ERRNOS, LocalProbeError, ProbeError
from slaveapi.clients.probe._icmp import (
    ECHO_REPLY,
    ECHO_REQUEST,
    PAYLOAD,
    EchoReply,
    checksum,
    echo_request,
    parse_echo_reply,
)
from slaveapi.clients.probe._prober import Prober, RebootWait
from slaveapi.clients.probe._socket import DATAGRAM, RAW, EchoSocket, _EchoSocket, open_icmp_socket

__all__ = [
    "DATAGRAM",
    "ECHO_REPLY",
    "ECHO_REQUEST",
    "LOCAL_ERRNOS",
    "PAYLOAD",
    "RAW",
    "EchoReply",
    "EchoSocket",
    "LocalProbeError",
    "ProbeError",
    "Prober",
    "RebootWait",
    "_EchoSocket",
    "checksum",
    "echo_request",
    "open_icmp_socket",
    "parse_echo_reply",
]
