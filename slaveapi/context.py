"""
The context an action runs in: configuration and one client per remote system.

L{build_context} makes it from a L{Config}. A reload builds a new context;
actions already running keep the one they started with.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from twisted.web.client import HTTPConnectionPool

from slaveapi.clients.aws import AWSClient
from slaveapi.clients.bugzilla import BugzillaClient
from slaveapi.clients.buildapi import BuildapiClient
from slaveapi.clients.devices import DevicesClient
from slaveapi.clients.dns import DNSClient
from slaveapi.clients.http import JSONClient, make_http_client
from slaveapi.clients.inventory import InventoryClient
from slaveapi.clients.ipmi import IPMIClient
from slaveapi.clients.master import MasterClient
from slaveapi.clients.mozpool import MozpoolClient
from slaveapi.clients.pdu import PDUClient
from slaveapi.clients.probe import Prober
from slaveapi.clients.redfish import RedfishClient, redfish_login
from slaveapi.clients.slavealloc import SlaveallocClient
from slaveapi.clients.ssh import SSHClient
from slaveapi.config import Config
from slaveapi.interfaces import (
    AWSSpec,
    BugzillaSpec,
    BuildapiSpec,
    DevicesSpec,
    DNSSpec,
    InventorySpec,
    IPMISpec,
    MasterSpec,
    MozpoolSpec,
    PDUSpec,
    ProberSpec,
    RedfishSpec,
    SlaveallocSpec,
    SSHClientSpec,
)
from slaveapi.metrics import ServiceMetrics, unwrapped


@dataclass(frozen=True)
class Clients:
    """
    One client per remote system, typed on what is asked of it (the specs
    of L{slaveapi.interfaces}): L{build_context} puts the real clients in,
    L{slaveapi.testing} fakes.
    """

    dns: DNSSpec
    ssh: SSHClientSpec
    slavealloc: SlaveallocSpec
    inventory: InventorySpec
    buildapi: BuildapiSpec
    bugzilla: BugzillaSpec
    devices: DevicesSpec
    prober: ProberSpec
    mozpool: MozpoolSpec
    ipmi: IPMISpec
    redfish: RedfishSpec
    pdu: PDUSpec
    master: MasterSpec
    aws: AWSSpec


@dataclass(frozen=True)
class Context:
    """Everything an action may use."""

    config: Config
    clients: Clients
    reactor: Any


def build_context(
    config: Config,
    reactor: Any,
    pool: HTTPConnectionPool,
    data_dir: str,
    previous: Context | None = None,
    metrics: ServiceMetrics | None = None,
) -> Context:
    """
    Make the clients for C{config}.

    @param pool: the one HTTP connection pool shared by every HTTP client.
    @param data_dir: where state of our own lives (the SSH known-hosts file,
        unless configured with an absolute path).
    @param previous: the context this one replaces on a reload: its IPMI
        worker processes, Redfish client (its connections and what it found
        out about BMCs) and SNMP engine are kept when their settings did
        not change, and its SSH sessions count against the same per-host limit.
    @param metrics: when given, every client is measured (L{ServiceMetrics.measure}),
        under the name of its field of L{Clients}.
    """
    http = make_http_client(reactor, pool)
    timeout = config.http.timeout

    def json_client(service: str) -> JSONClient:
        return JSONClient(service, http, timeout, reactor)

    credentials = config.credentials
    dns = DNSClient(reactor, config.slaves.default_domain, config.dns.servers, config.dns.timeout)
    known_hosts = config.ssh.known_hosts
    if not os.path.isabs(known_hosts):
        known_hosts = os.path.join(data_dir, known_hosts)
    clients = Clients(
        dns=dns,
        ssh=SSHClient(
            reactor,
            config.ssh,
            credentials.ssh,
            known_hosts,
            credentials.ssh_keys,
            previous=_previous_ssh(previous),
        ),
        slavealloc=SlaveallocClient(config.slavealloc.api_url, json_client("slavealloc")),
        inventory=InventoryClient(
            config.inventory.api_url,
            config.inventory.username,
            credentials.inventory,
            json_client("inventory"),
            dns_api_url=config.inventory.dns_api_url,
        ),
        buildapi=BuildapiClient(config.buildapi.api_url, json_client("buildapi"), config.buildapi.max_concurrent),
        bugzilla=BugzillaClient(config.bugzilla.api_url, credentials.bugzilla, json_client("bugzilla")),
        devices=DevicesClient(config.devices_url, json_client("devices"), reactor),
        prober=_prober(config, reactor, previous),
        mozpool=MozpoolClient(config.mozpool, json_client("mozpool"), dns),
        ipmi=_ipmi_client(config, reactor, previous),
        redfish=_redfish_client(config, reactor, previous),
        pdu=_pdu_client(config, reactor, dns, previous),
        master=MasterClient(config.buildbot, credentials.buildbot_master, http, dns, timeout, reactor),
        aws=_aws_client(config, reactor, previous),
    )
    if metrics is not None:
        clients = measured_clients(clients, metrics, reactor)
    return Context(config=config, clients=clients, reactor=reactor)


def measured_clients(clients: Clients, metrics: ServiceMetrics, clock: Any) -> Clients:
    """C{clients}, each measured by C{metrics} under the name of its field, timed on C{clock}."""
    measured = {
        field.name: metrics.measure(field.name, getattr(clients, field.name), clock)
        for field in dataclasses.fields(clients)
    }
    return Clients(**measured)


def _previous_ssh(previous: Context | None) -> SSHClient | None:
    """The SSH client a reload shares the per-host session places with (a real one only)."""
    ssh = unwrapped(previous.clients.ssh) if previous is not None else None
    return ssh if isinstance(ssh, SSHClient) else None


def _prober(config: Config, reactor: Any, previous: Context | None) -> ProberSpec:
    """The previous context's prober (its ICMP socket and its probe loop) when its settings did not change."""
    if previous is not None and _probe_settings(previous.config) == _probe_settings(config):
        return previous.clients.prober
    return Prober(reactor, config.probes, config.ssh.port)


def _probe_settings(config: Config) -> tuple[Any, ...]:
    return (config.probes, config.ssh.port)


def _ipmi_client(config: Config, reactor: Any, previous: Context | None) -> IPMISpec:
    if previous is not None and _ipmi_settings(previous.config) == _ipmi_settings(config):
        return previous.clients.ipmi
    return IPMIClient(reactor, config.ipmi, config.slaves.ipmi_username, config.credentials.ipmi)


def _ipmi_settings(config: Config) -> tuple[Any, ...]:
    return (config.ipmi, config.slaves.ipmi_username, config.credentials.ipmi)


def _redfish_client(config: Config, reactor: Any, previous: Context | None) -> RedfishSpec:
    """
    The previous context's Redfish client when its settings did not change:
    it keeps which BMCs speak Redfish (discovered once per BMC) and its connections.
    """
    if previous is not None and _redfish_settings(previous.config) == _redfish_settings(config):
        return previous.clients.redfish
    username, password = redfish_login(
        config.redfish, config.slaves.ipmi_username, config.credentials.ipmi, config.credentials.redfish
    )
    return RedfishClient(config.redfish, username, password, reactor)


def _redfish_settings(config: Config) -> tuple[Any, ...]:
    credentials = config.credentials
    return (config.redfish, config.slaves.ipmi_username, credentials.ipmi, credentials.redfish)


def _aws_client(config: Config, reactor: Any, previous: Context | None) -> AWSSpec:
    """The previous context's AWS client (its thread pool) when nothing it uses changed."""
    credentials = config.credentials
    if previous is not None and _aws_settings(previous.config) == _aws_settings(config):
        return previous.clients.aws
    return AWSClient(reactor, config.aws, credentials.aws_access_key_id, credentials.aws_secret_access_key)


def _aws_settings(config: Config) -> tuple[Any, ...]:
    credentials = config.credentials
    return (config.aws, credentials.aws_access_key_id, credentials.aws_secret_access_key)


def _pdu_client(config: Config, reactor: Any, dns: DNSClient, previous: Context | None) -> PDUSpec:
    if previous is not None and _snmp_settings(previous.config) == _snmp_settings(config):
        return previous.clients.pdu

    async def resolve(host: str) -> str | None:
        info = await dns.lookup_host(host)
        return info.ip if info else None

    credentials = config.credentials
    return PDUClient(
        reactor,
        config.snmp,
        credentials.snmp_community,
        credentials.snmp_v3_auth_key,
        credentials.snmp_v3_priv_key,
        resolve=resolve,
    )


def _snmp_settings(config: Config) -> tuple[Any, ...]:
    credentials = config.credentials
    return (
        config.snmp,
        config.dns,
        credentials.snmp_community,
        credentials.snmp_v3_auth_key,
        credentials.snmp_v3_priv_key,
    )


def _closables(ctx: Context) -> tuple[Any, ...]:
    return (ctx.clients.ipmi, ctx.clients.redfish, ctx.clients.pdu, ctx.clients.aws, ctx.clients.prober)


async def close_contexts(contexts: list[Context], keep: list[Context] | None = None) -> None:
    """
    Release what the contexts' clients hold (worker processes, sockets,
    threads), each once, except clients shared with a context in C{keep}.
    """
    kept = {id(client) for ctx in keep or [] for client in _closables(ctx)}
    closing: dict[int, Any] = {}
    for ctx in contexts:
        for client in _closables(ctx):
            if id(client) not in kept:
                closing.setdefault(id(client), client)
    for client in closing.values():
        await client.close()
