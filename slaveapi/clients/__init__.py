"""Clients for the remote systems SlaveAPI talks to, one module each, all asynchronous."""

from slaveapi.clients._boot import BootOverride
from slaveapi.clients._bounded import poll_until, within
from slaveapi.clients._errors import ClientError, ClientTimeout, Unreachable

__all__ = ["BootOverride", "ClientError", "ClientTimeout", "Unreachable", "poll_until", "within"]
