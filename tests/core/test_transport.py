"""
Credentials and plain http: inventory's basic auth and Bugzilla's API key bound
for an http:// URL are refused at load time unless the section allows it (and
then a warning is logged at start-up); Buildbot masters are reached over https
when configured, with a real TLS exchange on loopback, and basic auth never
goes to an http master without C{[buildbot] allow_plain_http}.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.web.client import BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import provider

from slaveapi.clients.dns import HostInfo
from slaveapi.clients.http import make_http_client
from slaveapi.clients.master import MasterClient, MasterError, ShutdownRequested
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.config import BuildbotConfig, ConfigError, Secret, load_config, plain_http_credentials
from slaveapi.service import ContextHolder, ServiceOptions, StartupError, make_service, warn_plain_http
from tests.testca import CertificateAuthority

reactor: Any = _reactor

FQDN = "bm01.masters.test"
MASTER_PASSWORD = "master-secret-pw-0042"
INVENTORY_PASSWORD = "inventory-pw-4242"
BUGZILLA_KEY = "bugzilla-api-key-31337"
SECRETS = (MASTER_PASSWORD, INVENTORY_PASSWORD, BUGZILLA_KEY)
RPC_OK = json.dumps({"id": 1, "jsonrpc": "2.0", "result": None}).encode()
STOP_PATH = "/api/v2/workers/bld-1"

_INI = """\
[secrets]
credentials_file = credentials.json
[slavealloc]
api_url = http://127.0.0.1:1/slavealloc
[inventory]
api_url = {inventory_url}
{inventory_extra}
[bugzilla]
api_url = {bugzilla_url}
{bugzilla_extra}
[buildapi]
api_url = http://127.0.0.1:1/buildapi
[slaves]
default_domain = example.test
[dns]
servers = 127.0.0.1:1
[buildbot]
username = slaveapi
{buildbot_extra}
{masters}
"""


def write_config(
    directory: Path,
    *,
    inventory_url: str = "https://inventory.example.test/api",
    bugzilla_url: str = "https://bugzilla.example.test/rest",
    inventory_extra: str = "username = slaveapi",
    bugzilla_extra: str = "",
    buildbot_extra: str = "",
    masters: str = "",
    credentials: dict[str, Any] | None = None,
) -> str:
    """An ini (and credentials.json with every credential, unless given) in C{directory}."""
    if credentials is None:
        credentials = {
            "ssh": {},
            "inventory": INVENTORY_PASSWORD,
            "bugzilla": BUGZILLA_KEY,
            "buildbot_master": MASTER_PASSWORD,
        }
    (directory / "credentials.json").write_text(json.dumps(credentials), encoding="utf-8")
    ini = directory / "slaveapi.ini"
    ini.write_text(
        _INI.format(
            inventory_url=inventory_url,
            bugzilla_url=bugzilla_url,
            inventory_extra=inventory_extra,
            bugzilla_extra=bugzilla_extra,
            buildbot_extra=buildbot_extra,
            masters=masters,
        ),
        encoding="utf-8",
    )
    return str(ini)


def refusal(path: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and not any(secret in message for secret in SECRETS)
    return message


# --- refused at load time -------------------------------------------------------------


def test_inventory_credentials_to_an_http_url_are_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, inventory_url="http://inventory.example.test/api")
    assert refusal(path) == (
        f"{path}: [inventory] api_url: expected an https:// URL, got 'http://inventory.example.test/api': "
        "inventory's basic-auth password would be sent over plain http "
        "(set allow_plain_http = true in [inventory] to accept that)"
    )


def test_an_http_dns_api_url_is_refused_too_and_user_info_is_not_shown(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, inventory_extra="username = slaveapi\ndns_api_url = http://someone:hunter2@inventory.example.test/mozdns"
    )
    message = refusal(path)
    assert message.startswith(
        f"{path}: [inventory] dns_api_url: expected an https:// URL, got 'http://inventory.example.test/mozdns': "
    )
    assert "hunter2" not in message


def test_the_bugzilla_api_key_to_an_http_url_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, bugzilla_url="http://bugzilla.example.test/rest")
    assert refusal(path) == (
        f"{path}: [bugzilla] api_url: expected an https:// URL, got 'http://bugzilla.example.test/rest': "
        "the Bugzilla API key would be sent over plain http (set allow_plain_http = true in [bugzilla] to accept that)"
    )
    with pytest.raises(StartupError) as caught:
        make_service(ServiceOptions(config=path, data=str(tmp_path / "data")), reactor)
    assert str(caught.value) == refusal(path)


def test_http_urls_without_credentials_are_accepted(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        inventory_url="http://inventory.example.test/api",
        bugzilla_url="http://bugzilla.example.test/rest",
        credentials={"ssh": {}},
    )
    assert plain_http_credentials(load_config(path)) == ()
    # Inventory's password without a user name: no basic auth is sent either.
    path = write_config(tmp_path, inventory_url="http://inventory.example.test/api", inventory_extra="")
    assert [plain.section for plain in plain_http_credentials(load_config(path))] == ["buildbot"]


def test_allow_plain_http_accepts_them(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        inventory_url="http://inventory.example.test/api",
        bugzilla_url="http://bugzilla.example.test/rest",
        inventory_extra="username = slaveapi\nallow_plain_http = true",
        bugzilla_extra="allow_plain_http = yes",
    )
    config = load_config(path)
    assert (config.inventory.allow_plain_http, config.bugzilla.allow_plain_http) == (True, True)
    assert [(plain.section, plain.key, plain.where, plain.allowed) for plain in plain_http_credentials(config)] == [
        ("inventory", "api_url", "http://inventory.example.test/api", True),
        ("bugzilla", "api_url", "http://bugzilla.example.test/rest", True),
        ("buildbot", "scheme", "every master not set to https in [masters]", False),
    ]


# --- the start-up warning ----------------------------------------------------------------


@dataclass
class Captured:
    events: list[dict[str, Any]]

    def warnings(self) -> list[str]:
        return [formatEvent(event) for event in self.events if event.get("log_level") == LogLevel.warn]


@pytest.fixture
def captured() -> Iterator[Captured]:
    found = Captured([])

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        found.events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield found
    finally:
        globalLogPublisher.removeObserver(observe)


def test_allowed_plain_http_is_warned_about_once_per_section(tmp_path: Path, captured: Captured) -> None:
    path = write_config(
        tmp_path,
        inventory_url="http://inventory.example.test/api",
        bugzilla_url="http://bugzilla.example.test/rest",
        inventory_extra="username = slaveapi\nallow_plain_http = true\ndns_api_url = http://inventory.example.test/mozdns",
        bugzilla_extra="allow_plain_http = true",
        buildbot_extra="allow_plain_http = true",
    )
    warn_plain_http(load_config(path))
    assert captured.warnings() == [
        "[inventory] allow_plain_http = true: inventory's basic-auth password is sent over plain http to "
        "http://inventory.example.test/api",
        "[bugzilla] allow_plain_http = true: the Bugzilla API key is sent over plain http to "
        "http://bugzilla.example.test/rest",
        "[buildbot] allow_plain_http = true: the Buildbot masters' basic-auth password is sent over plain http to "
        "every master not set to https in [masters]",
    ]
    shown = repr(captured.events)
    assert not any(secret in shown for secret in SECRETS)


def test_no_warning_where_nothing_travels_in_clear_text(tmp_path: Path, captured: Captured) -> None:
    # allow_plain_http everywhere, but https URLs and every master over https.
    path = write_config(
        tmp_path,
        inventory_extra="username = slaveapi\nallow_plain_http = true",
        bugzilla_extra="allow_plain_http = true",
        buildbot_extra="allow_plain_http = true\nscheme = https",
    )
    warn_plain_http(load_config(path))
    assert captured.warnings() == []


@pytest_twisted.ensureDeferred
async def test_a_reload_warns_again_for_the_new_configuration(tmp_path: Path, captured: Captured) -> None:
    holder = ContextHolder(load_config(write_config(tmp_path)), reactor, str(tmp_path))
    try:
        assert captured.warnings() == []
        write_config(tmp_path, bugzilla_url="http://bugzilla.example.test/rest", bugzilla_extra="allow_plain_http = 1")
        assert holder.reload() is True
        assert captured.warnings() == [
            "[bugzilla] allow_plain_http = true: the Bugzilla API key is sent over plain http to "
            "http://bugzilla.example.test/rest",
        ]
    finally:
        await holder.stopService()


# --- [buildbot] scheme and [masters] ---------------------------------------------------------


def test_masters_take_a_flavour_a_scheme_or_both(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        buildbot_extra="scheme = HTTPS",
        masters="[masters]\nbm01-build1 = modern https\nbm02 = http\nbm03 = 0.8, https\nbm04 = auto",
    )
    buildbot = load_config(path).buildbot
    assert buildbot.scheme == "https"
    assert dict(buildbot.masters) == {"bm01-build1": "modern", "bm03": "0.8", "bm04": "auto"}
    assert dict(buildbot.master_schemes) == {"bm01-build1": "https", "bm02": "http", "bm03": "https"}


@pytest.mark.parametrize("value", ["ftp", "modern 0.8", "https http", "modern https extra"])
def test_a_bad_masters_value_is_refused(tmp_path: Path, value: str) -> None:
    path = write_config(tmp_path, masters=f"[masters]\nbm01 = {value}")
    assert refusal(path) == (
        f"{path}: [masters] bm01: expected a flavour (auto, 0.8 or modern) and/or a scheme (http or https), "
        f"e.g. 'modern https', got {value!r}"
    )


# --- the master client: https, and no basic auth over plain http ------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class _RecordingMaster(Resource):
    """A modern master's stop call: answers it, records every request with its headers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def render(self, request: Any) -> bytes:
        headers = {
            name.decode().lower(): values[0].decode() for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append(Seen(request.method.decode(), request.path.decode(), headers))
        if (request.method, request.path) == (b"POST", STOP_PATH.encode()):
            request.setHeader(b"Content-Type", b"application/json")
            return RPC_OK
        request.setResponseCode(404)
        return b"<html>No Such Resource</html>"


class _FakeDNS:
    """Resolves C{FQDN} to 127.0.0.1."""

    async def lookup_host(self, name: str) -> HostInfo | None:
        if name != FQDN:
            return None
        return HostInfo(name="bm01", fqdn=FQDN, domain="masters.test", ip="127.0.0.1", colo=None)


@dataclass
class Masters:
    """A recording master over plain http and one over TLS (certificate for C{FQDN}), both on loopback."""

    resource: _RecordingMaster
    http_port: int
    https_port: int
    ca: CertificateAuthority
    pool: HTTPConnectionPool

    def record(self, port: int) -> MasterRecord:
        return MasterRecord(1, "bm01-build1", FQDN, port, 9001, True)

    def client(self, trusted: CertificateAuthority | None = None, **settings: Any) -> MasterClient:
        settings.setdefault("flavour", "modern")
        settings.setdefault("username", "slaveapi")
        policy = BrowserLikePolicyForHTTPS(trustRoot=(trusted or self.ca).trust_root())
        return MasterClient(
            BuildbotConfig(**settings),
            Secret(MASTER_PASSWORD),
            make_http_client(reactor, self.pool),
            _FakeDNS(),  # type: ignore[arg-type]  # a one-method fake
            5.0,
            reactor,
            tls_policy=policy,
        )


@pytest_twisted.async_yield_fixture
async def masters() -> AsyncIterator[Masters]:
    resource = _RecordingMaster()
    site = Site(resource)
    site.noisy = False
    ca = CertificateAuthority.make("SlaveAPI test CA")
    plain = reactor.listenTCP(0, site, interface="127.0.0.1")
    secure = reactor.listenSSL(0, site, ca.issue(FQDN), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield Masters(resource, plain.getHost().port, secure.getHost().port, ca, pool)
    await plain.stopListening()
    await secure.stopListening()
    await pool.closeCachedConnections()


def basic_auth() -> str:
    return "Basic " + base64.b64encode(f"slaveapi:{MASTER_PASSWORD}".encode()).decode()


async def refused(client: MasterClient, record: MasterRecord) -> str:
    with pytest.raises(MasterError) as caught:
        await client.shutdown_worker(record, "bld-1", "because")
    message = str(caught.value)
    assert "\n" not in message and MASTER_PASSWORD not in message
    return message


@pytest_twisted.ensureDeferred
async def test_a_master_configured_for_https_is_reached_over_tls(masters: Masters) -> None:
    record = masters.record(masters.https_port)
    # By nickname in [masters] (any case), with basic auth and no allow_plain_http.
    client = masters.client(master_schemes={"BM01-build1": "https"})
    accepted = await client.shutdown_worker(record, "bld-1", "because")
    url = f"https://{FQDN}:{masters.https_port}{STOP_PATH}"
    assert accepted == ShutdownRequested(url, "modern", 200)
    [seen] = masters.resource.seen
    assert (seen.method, seen.path) == ("POST", STOP_PATH)
    assert seen.headers["authorization"] == basic_auth()
    assert seen.headers["host"] == f"{FQDN}:{masters.https_port}"

    # [buildbot] scheme = https reaches every master so, auto's GET /api/v2 too.
    masters.resource.seen.clear()
    message = await refused(masters.client(scheme="https", flavour="auto"), record)
    assert [(seen.method, seen.path) for seen in masters.resource.seen] == [
        ("GET", "/api/v2"),
        ("POST", "/buildslaves/bld-1/shutdown"),
    ]
    assert message == (
        f"master bm01-build1: POST https://{FQDN}:{masters.https_port}/buildslaves/bld-1/shutdown failed: "
        "HTTP 404 Not Found"
    )


@pytest_twisted.ensureDeferred
async def test_a_certificate_not_trusted_or_not_for_the_master_fails_the_call(masters: Masters) -> None:
    record = masters.record(masters.https_port)
    url = f"https://{FQDN}:{masters.https_port}{STOP_PATH}"

    stranger = CertificateAuthority.make("someone else's CA")
    message = await refused(masters.client(trusted=stranger, scheme="https"), record)
    assert message == f"master bm01-build1: POST {url} failed: TLS handshake failed: certificate verify failed"

    # The master's fqdn resolves to the server, but its certificate names another host.
    impostor = reactor.listenSSL(
        0, Site(masters.resource), masters.ca.issue("bm99.masters.test"), interface="127.0.0.1"
    )
    try:
        renamed = MasterRecord(1, "bm01-build1", FQDN, impostor.getHost().port, 9001, True)
        message = await refused(masters.client(scheme="https"), renamed)
        assert message == (
            f"master bm01-build1: POST https://{FQDN}:{impostor.getHost().port}{STOP_PATH} failed: "
            "TLS handshake failed: the certificate is not for this name"
        )
    finally:
        await impostor.stopListening()
    assert masters.resource.seen == []


@pytest_twisted.ensureDeferred
async def test_basic_auth_is_never_sent_over_plain_http_without_allow_plain_http(masters: Masters) -> None:
    record = masters.record(masters.http_port)
    for flavour, method, path in (("modern", "POST", STOP_PATH), ("auto", "GET", "/api/v2")):
        message = await refused(masters.client(flavour=flavour, master_schemes={FQDN: "http"}), record)
        assert message == (
            f"master bm01-build1: {method} http://{FQDN}:{masters.http_port}{path} not sent: it would carry the "
            "basic-auth password over plain http; reach bm01-build1 over https ([masters] bm01-build1 = https) "
            "or set [buildbot] allow_plain_http = true"
        )
    assert masters.resource.seen == []


@pytest_twisted.ensureDeferred
async def test_plain_http_with_allow_plain_http_or_without_credentials_works_as_before(masters: Masters) -> None:
    record = masters.record(masters.http_port)
    accepted = await masters.client(allow_plain_http=True).shutdown_worker(record, "bld-1", "because")
    assert accepted == ShutdownRequested(f"http://{FQDN}:{masters.http_port}{STOP_PATH}", "modern", 200)
    accepted = await masters.client(username=None).shutdown_worker(record, "bld-1", "because")
    assert accepted.status == 200
    assert [seen.headers.get("authorization") for seen in masters.resource.seen] == [basic_auth(), None]
