"""
The configuration records, one per ini section, and L{Config} holding them.

Each field's dataclass default is its one default; its metadata (L{ini})
says how its key is read: kind, bounds, choices. Each field of L{Config}
says which section its record comes from (L{part}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._credentials import Credentials
from ._readers import (
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    MASTER_FLAVOURS,
    MASTER_SCHEMES,
    check_read_concurrency,
    check_webhook_urls,
    default_dns_api_url,
    read_credentials_file,
    read_domain,
    read_listen,
    read_master_flavour,
    read_master_scheme,
    read_name_patterns,
    read_origins,
    read_server_names,
    read_store_url,
    read_webhook_urls,
)
from ._schema import (
    URL,
    Boolean,
    Choice,
    Custom,
    Entries,
    HostPorts,
    Integer,
    Number,
    Path,
    Text,
    ini,
    part,
)

_PDU_TYPES = ("sentry", "apc")


@dataclass(frozen=True)
class ServerConfig:
    """C{[server]}: where to listen and how much to run at once."""

    #: A server endpoint string: C{endpoint}, or else C{listen} and C{port}.
    listen: str = field(
        default=f"tcp:{DEFAULT_PORT}:interface={DEFAULT_INTERFACE}",
        metadata=ini(Custom(read_listen), also=("port", "endpoint")),
    )
    concurrency: int = field(default=50, metadata=ini(Integer(1)))
    daemonize: bool = field(default=False, metadata=ini(Boolean()))
    pidfile: str = field(default="slaveapi.pid", metadata=ini(Text()))
    #: The largest request body accepted, in bytes; larger ones are a 413.
    max_body: int = field(default=64 * 1024, metadata=ini(Integer(1024)))
    #: C{Host} values served besides the listening address (and, on loopback,
    #: the localhost names): C{name}, C{name:port}, C{*.domain} or C{*} for any.
    server_names: tuple[str, ...] = field(default=(), metadata=ini(Custom(read_server_names)))
    #: How many of the C{concurrency} slots read-only actions may hold at once;
    #: C{None}: four fifths of them (all of them when C{concurrency} is 1).
    read_concurrency: int | None = field(default=None, metadata=ini(Integer(1)))
    #: Pending requests of each kind (read-only, changing) past which a POST is a 503.
    max_queued: int = field(default=10000, metadata=ini(Integer(1)))


@dataclass(frozen=True)
class ServiceURL:
    """
    A remote HTTP API and the user name we log in with, if any.

    C{allow_plain_http}: credentials may be sent to an C{http://} URL
    (C{[inventory]} and C{[bugzilla]} read it; without it such a
    configuration is refused).
    """

    api_url: str = field(metadata=ini(URL()))
    username: str | None = field(default=None, metadata=ini(Text()))
    allow_plain_http: bool = field(default=False, metadata=ini(Boolean()))


@dataclass(frozen=True)
class InventoryConfig(ServiceURL):
    """C{[inventory]}: systems by hostname, and the DNS records API (for AWS loaners)."""

    #: Read as C{<api_url>/mozdns/api/v1_dns} when not given.
    dns_api_url: str | None = field(default=None, metadata=ini(URL()))


@dataclass(frozen=True)
class BuildapiConfig:
    """C{[buildapi]}: recent jobs; C{max_concurrent} limits calls in flight."""

    api_url: str = field(metadata=ini(URL()))
    max_concurrent: int = field(default=3, metadata=ini(Integer(1)))


@dataclass(frozen=True)
class SlavesConfig:
    """C{[slaves]}: how short names become hosts, and the BMC user."""

    default_domain: str = field(metadata=ini(Custom(read_domain)))
    ipmi_username: str = field(default="ADMIN", metadata=ini(Text()))


@dataclass(frozen=True)
class LoggingConfig:
    """C{[logging]}: level and optional rotating file."""

    level: str = field(
        default="info", metadata=ini(Choice(("debug", "info", "warn", "warning", "error", "critical")))
    )
    file: str | None = field(default=None, metadata=ini(Path()))
    maxsize: int = field(default=10 * 1024 * 1024, metadata=ini(Integer(1024)))
    maxfiles: int = field(default=5, metadata=ini(Integer(1)))


@dataclass(frozen=True)
class DNSConfig:
    """C{[dns]}: resolvers (host, port); none means the system's."""

    servers: tuple[tuple[str, int], ...] = field(default=(), metadata=ini(HostPorts(53)))
    timeout: float = field(default=5.0, metadata=ini(Number(0.1)))


@dataclass(frozen=True)
class SSHConfig:
    """
    C{[ssh]}: port, timeouts, what to do with host keys, and how many
    sessions to one host at once.

    C{host_keys}: C{strict} accepts only keys already in C{known_hosts};
    C{tofu} records a host's key on first use and refuses a changed one,
    but offers that host only keys, never a password (no login verifies a
    key: a server can accept any key without our signature being checked,
    so a key login proves nothing about it); C{off} checks nothing and is accepted only with C{--lab} (see
    C{check_host_key_policy}).
    """

    port: int = field(default=22, metadata=ini(Integer(1)))
    connect_timeout: float = field(default=30.0, metadata=ini(Number(0.1)))
    command_timeout: float = field(default=60.0, metadata=ini(Number(0.1)))
    host_keys: str = field(default="strict", metadata=ini(Choice(("tofu", "strict", "off"))))
    #: Relative to the C{--data} directory, not the ini file's.
    known_hosts: str = field(default="known_hosts", metadata=ini(Text()))
    per_host: int = field(default=2, metadata=ini(Integer(1)))


@dataclass(frozen=True)
class HTTPConfig:
    """C{[http]}: the limit on every HTTP call to a remote API."""

    timeout: float = field(default=30.0, metadata=ini(Number(0.1)))


@dataclass(frozen=True)
class ProbeConfig:
    """
    C{[probes]}: how to tell whether a machine is up, and how long to wait
    for a reboot to take it down and bring it back.

    C{method}: C{tcp} connects to the SSH port; C{icmp} sends ICMP echo
    requests from inside the process (up to C{ping_count} of them; the
    machine is up at the first reply, down after C{ping_deadline} seconds),
    and probes over TCP when no ICMP socket may be opened. While waiting,
    every watched machine is probed once every C{interval} seconds (1 by
    default: a machine is seen back within about C{interval}, plus the
    round trip, of answering again).
    """

    method: str = field(default="icmp", metadata=ini(Choice(("icmp", "tcp"))))
    ping_count: int = field(default=3, metadata=ini(Integer(1)))
    ping_deadline: float = field(default=5.0, metadata=ini(Number(1)))
    tcp_timeout: float = field(default=3.0, metadata=ini(Number(0.1)))
    interval: float = field(default=1.0, metadata=ini(Number(0.05)))
    down_timeout: float = field(default=300.0, metadata=ini(Number(0.1)))
    up_timeout: float = field(default=600.0, metadata=ini(Number(0.1)))


@dataclass(frozen=True)
class IPMIConfig:
    """
    C{[ipmi]}: BMC power control through pyghmi worker processes.

    @ivar timeout: the deadline of one IPMI call (pyghmi has none of its own).
    @ivar retries: further attempts when setting up a session fails.
    @ivar workers: how many worker processes serve IPMI calls in parallel.
    @ivar per_bmc: how many IPMI calls may be in flight to one BMC address at once.
    @ivar off_timeout: how long a soft power-off may take before a hard one.
    @ivar power_delay: seconds between power off and power on.
    """

    port: int = field(default=623, metadata=ini(Integer(1)))
    timeout: float = field(default=20.0, metadata=ini(Number(0.1)))
    retries: int = field(default=2, metadata=ini(Integer(0)))
    workers: int = field(default=8, metadata=ini(Integer(1)))
    per_bmc: int = field(default=1, metadata=ini(Integer(1)))
    off_timeout: float = field(default=60.0, metadata=ini(Number(0)))
    poll_interval: float = field(default=2.0, metadata=ini(Number(0.05)))
    power_delay: float = field(default=5.0, metadata=ini(Number(0)))


@dataclass(frozen=True)
class RedfishConfig:
    """
    C{[redfish]}: BMC power and boot control over Redfish (HTTPS + JSON).

    The user is C{username}, else C{[slaves] ipmi_username}; the password is
    the credentials' C{redfish}, else their C{ipmi}.

    @ivar timeout: the deadline of one HTTP call to a BMC.
    @ivar retries: further attempts when a connection cannot be set up.
    @ivar verify: check the BMC's certificate (against C{ca_bundle}, else
        the system's trust store); C{no} is logged as a warning.
    @ivar system_id: the ComputerSystem to act on when a BMC manages several.
    @ivar poll_interval: seconds between power-state reads while a power
        cycle waits for the power to be off, then on.
    @ivar power_timeout: the most a power cycle waits for each of those.
    """

    scheme: str = field(default="https", metadata=ini(Choice(("https", "http"))))
    port: int | None = field(default=None, metadata=ini(Integer(1)))
    timeout: float = field(default=20.0, metadata=ini(Number(0.1)))
    retries: int = field(default=2, metadata=ini(Integer(0)))
    verify: bool = field(default=True, metadata=ini(Boolean()))
    ca_bundle: str | None = field(default=None, metadata=ini(Path()))
    system_id: str | None = field(default=None, metadata=ini(Text()))
    username: str | None = field(default=None, metadata=ini(Text()))
    poll_interval: float = field(default=2.0, metadata=ini(Number(0.05)))
    power_timeout: float = field(default=60.0, metadata=ini(Number(1)))


@dataclass(frozen=True)
class SNMPConfig:
    """
    C{[snmp]}: PDU outlet control.

    C{version} C{2c} uses the credentials' C{snmp_community}; C{3} uses USM
    with C{v3_user} and the credentials' C{snmp_v3_auth_key} and
    C{snmp_v3_priv_key}. C{pdu_types} maps a PDU host to C{sentry} or C{apc}
    (from C{[pdus]}); others are C{default_pdu_type}. At most C{per_pdu}
    requests are in flight to one PDU host at once, C{max_requests} to all.
    """

    port: int = field(default=161, metadata=ini(Integer(1)))
    timeout: float = field(default=2.0, metadata=ini(Number(0.1)))
    retries: int = field(default=1, metadata=ini(Integer(0)))
    version: str = field(default="2c", metadata=ini(Choice(("2c", "3"))))
    v3_user: str | None = field(default=None, metadata=ini(Text()))
    v3_auth_protocol: str = field(default="sha", metadata=ini(Choice(("md5", "sha", "sha256"))))
    v3_priv_protocol: str = field(default="aes", metadata=ini(Choice(("none", "des", "aes"))))
    default_pdu_type: str = field(default="sentry", metadata=ini(Choice(_PDU_TYPES)))
    pdu_types: Mapping[str, str] = field(
        default_factory=dict, metadata=ini(Entries(Choice(_PDU_TYPES)), section="pdus")
    )
    state_timeout: float = field(default=30.0, metadata=ini(Number(0.1)))
    poll_interval: float = field(default=1.0, metadata=ini(Number(0.05)))
    power_delay: float = field(default=5.0, metadata=ini(Number(0)))
    per_pdu: int = field(default=1, metadata=ini(Integer(1)))
    max_requests: int = field(default=32, metadata=ini(Integer(1)))


@dataclass(frozen=True)
class MozpoolConfig:
    """C{[mozpool]}: how to reach the imaging server named in inventory."""

    scheme: str = field(default="http", metadata=ini(Choice(("http", "https"))))
    port: int | None = field(default=None, metadata=ini(Integer(1)))


@dataclass(frozen=True)
class RebootConfig:
    """
    C{[reboot]}: the Bugzilla hand-off when every reboot method failed.

    Summaries are templates with C{{name}} (the short name).
    """

    bug_product: str = field(default="Infrastructure & Operations", metadata=ini(Text()))
    bug_component: str = field(default="DCOps", metadata=ini(Text()))
    bug_summary: str = field(default="{name} is unreachable", metadata=ini(Text()))
    tracking_product: str = field(default="Release Engineering", metadata=ini(Text()))
    tracking_component: str = field(default="Buildduty", metadata=ini(Text()))
    tracking_summary: str = field(default="{name} problem tracking", metadata=ini(Text()))


@dataclass(frozen=True)
class PowerConfig:
    """
    C{[power]}: the power actions' read-backs (C{power_on}, C{power_off},
    C{power_cycle}, C{boot_device}) and the power channels
    C{GET /slaves/<slave>} shows.

    @ivar poll_interval: seconds between reads of the power state (or the
        boot override) while waiting for it to match what was asked.
    @ivar verify_timeout: how long after a power change or a boot-device
        change the state read back may take to match, per channel.
    @ivar soft_off_timeout: how long a graceful shutdown (C{soft=yes}) may
        take to leave the power off: the OS shuts down first.
    @ivar discovery_timeout: how long C{GET /slaves/<slave>} waits for the
        machine's BMC to say whether it speaks Redfish or IPMI.
    """

    poll_interval: float = field(default=2.0, metadata=ini(Number(0.05)))
    verify_timeout: float = field(default=120.0, metadata=ini(Number(0.1)))
    soft_off_timeout: float = field(default=300.0, metadata=ini(Number(0.1)))
    discovery_timeout: float = field(default=15.0, metadata=ini(Number(0.1)))


@dataclass(frozen=True)
class BuildbotConfig:
    """
    C{[buildbot]} and C{[masters]}: graceful shutdowns through Buildbot masters.

    C{flavour} says how to ask a master: C{0.8} (POST to the old web
    status's C{/buildslaves/<name>/shutdown}), C{modern} (the data API's
    JSON-RPC C{stop} on the worker, Buildbot >= 1.0) or C{auto} (ask the
    data API first, fall back to 0.8). C{[masters]} overrides it per master
    (by fqdn or nickname). C{username} (with the credentials'
    C{buildbot_master}) is sent as HTTP basic auth to masters that need it.
    The shutdown is confirmed from twistd.log, polled every
    C{poll_interval} for at most C{max_wait} seconds.

    C{scheme} (C{http} or C{https}) is how masters are reached;
    C{master_schemes} overrides it per master (C{[masters]}, by fqdn or
    nickname). Basic auth goes to an C{http} master only with
    C{allow_plain_http}.
    """

    flavour: str = field(default="auto", metadata=ini(Choice(MASTER_FLAVOURS)))
    username: str | None = field(default=None, metadata=ini(Text()))
    masters: Mapping[str, str] = field(
        default_factory=dict, metadata=ini(Entries(Custom(read_master_flavour)), section="masters")
    )
    poll_interval: float = field(default=30.0, metadata=ini(Number(0.05)))
    max_wait: float = field(default=5 * 3600.0, metadata=ini(Number(0.1)))
    scheme: str = field(default="http", metadata=ini(Choice(MASTER_SCHEMES)))
    master_schemes: Mapping[str, str] = field(
        default_factory=dict, metadata=ini(Entries(Custom(read_master_scheme)), section="masters")
    )
    allow_plain_http: bool = field(default=False, metadata=ini(Boolean()))


@dataclass(frozen=True)
class AWSConfig:
    """
    C{[aws]}: EC2 instances, through boto3 in a bounded thread pool.

    Credentials come from the credentials file (C{aws_access_key_id},
    C{aws_secret_access_key}) or else boto3's standard chain. C{endpoint_url}
    points at another EC2 endpoint (the lab's moto server). Loaners are
    launched from the AMI or launch template of their type into C{subnet_id}
    and named in C{build_domain} / C{test_domain}.
    """

    region: str = field(default="us-east-1", metadata=ini(Text()))
    endpoint_url: str | None = field(default=None, metadata=ini(URL()))
    timeout: float = field(default=30.0, metadata=ini(Number(0.1)))
    retries: int = field(default=3, metadata=ini(Integer(0)))
    threads: int = field(default=10, metadata=ini(Integer(1)))
    poll_interval: float = field(default=5.0, metadata=ini(Number(0.05)))
    state_timeout: float = field(default=600.0, metadata=ini(Number(0.1)))
    dns_timeout: float = field(default=1200.0, metadata=ini(Number(0.1)))
    subnet_id: str | None = field(default=None, metadata=ini(Text()))
    key_name: str | None = field(default=None, metadata=ini(Text()))
    build_ami: str | None = field(default=None, metadata=ini(Text()))
    test_ami: str | None = field(default=None, metadata=ini(Text()))
    build_launch_template: str | None = field(default=None, metadata=ini(Text()))
    test_launch_template: str | None = field(default=None, metadata=ini(Text()))
    build_instance_type: str = field(default="c5.2xlarge", metadata=ini(Text()))
    test_instance_type: str = field(default="m5.large", metadata=ini(Text()))
    build_domain: str | None = field(default=None, metadata=ini(Text()))
    test_domain: str | None = field(default=None, metadata=ini(Text()))
    #: Short names of build and test loaners (shell-style, C{*} and C{?}): the
    #: only names aws_create_instance creates, and machines SlaveAPI knows
    #: even when slavealloc does not.
    build_loaner_names: tuple[str, ...] = field(
        default=("dev-linux64-ec2-*",), metadata=ini(Custom(read_name_patterns))
    )
    test_loaner_names: tuple[str, ...] = field(
        default=("tst-linux32-ec2-*", "tst-linux64-ec2-*"), metadata=ini(Custom(read_name_patterns))
    )


@dataclass(frozen=True)
class StoreConfig:
    """
    C{[store]}: where results are kept and how long finished ones are kept
    (C{keep_days}; 0: for ever).

    C{url} absent or C{sqlite:}: one SQLite file under C{--data}, for one
    instance (the default). A C{postgresql://} URL (libpq's form, TLS
    options such as C{sslmode} in its query string; the password comes from
    the credentials' C{postgresql_password}, never the URL): one database
    that several instances share (see C{docs/several-instances.rst}). Then
    C{instance} names this instance among them (default: the host name), an
    instance that has not heartbeated for C{lease} seconds is taken for
    stopped (its running actions are marked interrupted, its queued ones
    taken over), at most C{pool_size} connections are open, and every
    statement is bounded by C{statement_timeout} seconds.
    """

    keep_days: float = field(default=90.0, metadata=ini(Number(0)))
    url: str = field(default="sqlite:", metadata=ini(Custom(read_store_url)))
    instance: str = field(default="", metadata=ini(Text()))
    lease: float = field(default=30.0, metadata=ini(Number(3)))
    pool_size: int = field(default=10, metadata=ini(Integer(2)))
    statement_timeout: float = field(default=10.0, metadata=ini(Number(0.1)))

    @property
    def postgresql(self) -> bool:
        """Whether results live in a PostgreSQL database several instances share."""
        return self.url.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class HealthConfig:
    """
    C{[health]}: the fleet health loop and its remediation (see
    C{docs/power-and-health.rst}).

    Every C{interval} seconds each machine slavealloc lists as enabled is
    checked, C{concurrency} machines at once (slots of its own, never the
    actions'). C{probe_timeout}, C{ssh_timeout} (logging in and reading
    twistd.log) and C{remote_timeout} (each BMC, master or slavealloc call)
    bound the checks, C{machine_timeout} all of one machine's. A buildbot
    idle longer than C{max_idle} seconds makes a machine C{degraded} (0:
    never). With C{remediate}, a machine C{down} for C{down_after} seconds
    gets a C{reboot}, at most C{max_rebooting_per_pool} reboots pending or
    running in one pool and none more often than every
    C{min_reboot_interval} seconds (at least 60).
    """

    enabled: bool = field(default=True, metadata=ini(Boolean()))
    interval: float = field(default=300.0, metadata=ini(Number(1)))
    concurrency: int = field(default=20, metadata=ini(Integer(1)))
    probe_timeout: float = field(default=30.0, metadata=ini(Number(0.1)))
    ssh_timeout: float = field(default=60.0, metadata=ini(Number(0.1)))
    remote_timeout: float = field(default=30.0, metadata=ini(Number(0.1)))
    machine_timeout: float = field(default=180.0, metadata=ini(Number(1)))
    max_idle: float = field(default=0.0, metadata=ini(Number(0)))
    remediate: bool = field(default=False, metadata=ini(Boolean()))
    down_after: float = field(default=900.0, metadata=ini(Number(0)))
    max_rebooting_per_pool: int = field(default=2, metadata=ini(Integer(1)))
    #: At least a minute: 0 would reboot a machine that stays down at every sweep.
    min_reboot_interval: float = field(default=3600.0, metadata=ini(Number(60)))


@dataclass(frozen=True)
class AuthConfig:
    """
    C{[auth]}: whether reads need a token too (writes do whenever tokens
    exist), which other web origins may call the API from a browser, and
    whether SlaveAPI may listen beyond loopback without tokens.
    """

    protect_reads: bool = field(default=False, metadata=ini(Boolean()))
    #: Normalised origins, e.g. C{"https://dashboard.example.com:443"}.
    allowed_origins: tuple[str, ...] = field(default=(), metadata=ini(Custom(read_origins)))
    allow_anonymous: bool = field(default=False, metadata=ini(Boolean()))


@dataclass(frozen=True)
class EventsConfig:
    """
    C{[events]}: the C{GET /events} streams (see C{docs/events.rst}).

    @ivar max_clients: streams open at once; one more is a 503.
    @ivar max_queued: events waiting for one slow reader; past that its
        stream is closed (it may resume with C{Last-Event-ID}).
    @ivar max_queued_bytes: the same bound in bytes of those events.
    @ivar buffer_bytes: bytes of the latest events kept for streams that
        resume (read at start-up only).
    """

    max_clients: int = field(default=100, metadata=ini(Integer(1)))
    max_queued: int = field(default=1000, metadata=ini(Integer(1)))
    max_queued_bytes: int = field(default=256 * 1024, metadata=ini(Integer(1024)))
    buffer_bytes: int = field(default=8 * 1024 * 1024, metadata=ini(Integer(1024)))


@dataclass(frozen=True)
class WebhooksConfig:
    """
    C{[webhooks]}: JSON POSTs, signed with the credentials' C{webhook_secret},
    to each of C{urls} when an action finishes (see C{docs/events.rst}).

    Each delivery is bounded by C{timeout} seconds and retried C{retries}
    times, C{backoff} seconds after the first failure and twice as long
    after each next one, holding no slot while it waits. At most
    C{max_in_flight} attempts run at once (each URL at most its share of
    them) and C{max_queued} deliveries wait; more are dropped with a log line. A plain http:// URL
    is accepted only to this machine unless C{allow_plain_http}.
    """

    urls: tuple[str, ...] = field(default=(), metadata=ini(Custom(read_webhook_urls)))
    timeout: float = field(default=10.0, metadata=ini(Number(0.1)))
    retries: int = field(default=3, metadata=ini(Integer(0)))
    backoff: float = field(default=2.0, metadata=ini(Number(0)))
    max_in_flight: int = field(default=4, metadata=ini(Integer(1)))
    max_queued: int = field(default=1000, metadata=ini(Integer(1)))
    allow_plain_http: bool = field(default=False, metadata=ini(Boolean()))


@dataclass(frozen=True)
class Config:
    """Everything the service is configured with; C{path} is the ini file's absolute path."""

    path: str
    server: ServerConfig = field(metadata=part("server", finish=check_read_concurrency))
    slavealloc: ServiceURL = field(metadata=part("slavealloc", required=True, only=("api_url",)))
    inventory: InventoryConfig = field(metadata=part("inventory", required=True, finish=default_dns_api_url))
    bugzilla: ServiceURL = field(metadata=part("bugzilla", required=True))
    buildapi: BuildapiConfig = field(metadata=part("buildapi", required=True))
    slaves: SlavesConfig = field(metadata=part("slaves", required=True))
    credentials: Credentials = field(
        metadata=ini(Custom(read_credentials_file), section="secrets", key="credentials_file", required_section=True)
    )
    logging: LoggingConfig = field(default=LoggingConfig(), metadata=part("logging"))
    dns: DNSConfig = field(default=DNSConfig(), metadata=part("dns"))
    ssh: SSHConfig = field(default=SSHConfig(), metadata=part("ssh"))
    http: HTTPConfig = field(default=HTTPConfig(), metadata=part("http"))
    auth: AuthConfig = field(default=AuthConfig(), metadata=part("auth"))
    probes: ProbeConfig = field(default=ProbeConfig(), metadata=part("probes"))
    ipmi: IPMIConfig = field(default=IPMIConfig(), metadata=part("ipmi"))
    redfish: RedfishConfig = field(default=RedfishConfig(), metadata=part("redfish"))
    snmp: SNMPConfig = field(default=SNMPConfig(), metadata=part("snmp"))
    mozpool: MozpoolConfig = field(default=MozpoolConfig(), metadata=part("mozpool"))
    reboot: RebootConfig = field(default=RebootConfig(), metadata=part("reboot"))
    power: PowerConfig = field(default=PowerConfig(), metadata=part("power"))
    buildbot: BuildbotConfig = field(default=BuildbotConfig(), metadata=part("buildbot"))
    aws: AWSConfig = field(default=AWSConfig(), metadata=part("aws"))
    store: StoreConfig = field(default=StoreConfig(), metadata=part("store"))
    health: HealthConfig = field(default=HealthConfig(), metadata=part("health"))
    events: EventsConfig = field(default=EventsConfig(), metadata=part("events"))
    webhooks: WebhooksConfig = field(default=WebhooksConfig(), metadata=part("webhooks", finish=check_webhook_urls))
    devices_url: str | None = field(default=None, metadata=ini(URL(), section="devices", key="url"))
    timeouts: Mapping[str, float] = field(default_factory=dict, metadata=ini(Entries(Number(1)), section="timeouts"))
