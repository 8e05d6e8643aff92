"""
The context an action runs in: configuration and one client per remote system.

L{build_context} makes it from a L{Config}. A reload builds a new context;
actions already running keep the one they started with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.web.client import HTTPConnectionPool

from slaveapi.clients.bugzilla import BugzillaClient
from slaveapi.clients.buildapi import BuildapiClient
from slaveapi.clients.devices import DevicesClient
from slaveapi.clients.dns import DNSClient
from slaveapi.clients.http import JSONClient, make_http_client
from slaveapi.clients.inventory import InventoryClient
from slaveapi.clients.slavealloc import SlaveallocClient
from slaveapi.clients.ssh import SSHClient
from slaveapi.config import Config


@dataclass(frozen=True)
class Clients:
    """One client per remote system."""

    dns: DNSClient
    ssh: SSHClient
    slavealloc: SlaveallocClient
    inventory: InventoryClient
    buildapi: BuildapiClient
    bugzilla: BugzillaClient
    devices: DevicesClient


@dataclass(frozen=True)
class Context:
    """Everything an action may use."""

    config: Config
    clients: Clients
    reactor: Any


def build_context(config: Config, reactor: Any, pool: HTTPConnectionPool, data_dir: str) -> Context:
    """
    Make the clients for C{config}.

    @param pool: the one HTTP connection pool shared by every HTTP client.
    @param data_dir: where state of our own lives (the SSH known-hosts file,
        unless configured with an absolute path).
    """
    http = make_http_client(reactor, pool)
    timeout = config.http.timeout

    def json_client(service: str) -> JSONClient:
        return JSONClient(service, http, timeout, reactor)

    credentials = config.credentials
    known_hosts = config.ssh.known_hosts
    if not os.path.isabs(known_hosts):
        known_hosts = os.path.join(data_dir, known_hosts)
    clients = Clients(
        dns=DNSClient(reactor, config.slaves.default_domain, config.dns.servers, config.dns.timeout),
        ssh=SSHClient(reactor, config.ssh, credentials.ssh, known_hosts),
        slavealloc=SlaveallocClient(config.slavealloc.api_url, json_client("slavealloc")),
        inventory=InventoryClient(
            config.inventory.api_url, config.inventory.username, credentials.inventory, json_client("inventory")
        ),
        buildapi=BuildapiClient(config.buildapi.api_url, json_client("buildapi"), config.buildapi.max_concurrent),
        bugzilla=BugzillaClient(config.bugzilla.api_url, credentials.bugzilla, json_client("bugzilla")),
        devices=DevicesClient(config.devices_url, json_client("devices")),
    )
    return Context(config=config, clients=clients, reactor=reactor)
