"""
The Buildbot master client against scripted masters on loopback: both flavours,
flavour choice (configuration, detection), authentication, and every way a
request fails (each a one-line message naming the URL and the status).

The real Buildbot 4.x master is in test_real_buildbot.py; these fakes answer
as Buildbot 0.8's web status (C{POST /buildslaves/<name>/shutdown}) and 4.x's
data API (a JSON-RPC C{stop} on C{/api/v2/workers/<name>}) do.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from slaveapi.clients.dns import HostInfo
from slaveapi.clients.http import make_http_client
from slaveapi.clients.master import MasterClient, MasterError, ShutdownRequested
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.config import BuildbotConfig, Secret

reactor: Any = _reactor

FQDN = "bm01.masters.test"
PASSWORD = "master-secret-pw-0042"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class _ScriptedMaster(Resource):
    """Answers each (method, path) as scripted; 404 for anything else; records every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[tuple[str, str], Answer] = {}
        self.seen: list[Seen] = []

    def render(self, request: Any) -> Any:
        method, path = request.method.decode(), request.path.decode()
        headers = {
            name.decode().lower(): values[0].decode() for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append(Seen(method, path, headers, request.content.read()))
        answer = self.script.get((method, path), Answer(404, b"<html>No Such Resource</html>"))
        if answer.hang:
            return NOT_DONE_YET
        request.setResponseCode(answer.status)
        for name, value in answer.headers.items():
            request.setHeader(name.encode(), value.encode())
        return answer.body


class _FakeDNS:
    """Resolves the names given, to 127.0.0.1."""

    def __init__(self, *names: str) -> None:
        self._names = set(names)

    async def lookup_host(self, name: str) -> HostInfo | None:
        if name not in self._names:
            return None
        return HostInfo(name=name.split(".")[0], fqdn=name, domain=name.split(".", 1)[1], ip="127.0.0.1", colo=None)


@dataclass
class Master:
    resource: _ScriptedMaster
    port: int
    pool: HTTPConnectionPool

    def record(self, http_port: int | None = -1) -> MasterRecord:
        return MasterRecord(1, "bm01-build1", FQDN, self.port if http_port == -1 else http_port, 9001, True)

    def client(self, timeout: float = 30.0, **settings: Any) -> MasterClient:
        password = settings.pop("password", None)
        config = BuildbotConfig(**settings)
        http = make_http_client(reactor, self.pool)
        return MasterClient(config, password, http, _FakeDNS(FQDN), timeout, reactor)  # type: ignore[arg-type]  # a one-method fake

    def url(self, path: str) -> str:
        return f"http://{FQDN}:{self.port}{path}"


@pytest_twisted.async_yield_fixture
async def master() -> AsyncIterator[Master]:
    resource = _ScriptedMaster()
    site = Site(resource)
    site.noisy = False
    listener = reactor.listenTCP(0, site, interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield Master(resource, listener.getHost().port, pool)
    await listener.stopListening()
    await pool.closeCachedConnections()


SHUTDOWN_08 = ("POST", "/buildslaves/bld-1/shutdown")
STOP = ("POST", "/api/v2/workers/bld-1")
ROOT = ("GET", "/api/v2")
RPC_OK = json.dumps({"id": 1, "jsonrpc": "2.0", "result": None}).encode()


async def shut_down(client: MasterClient, master: Master, record: MasterRecord | None = None) -> ShutdownRequested:
    return await client.shutdown_worker(record or master.record(), "bld-1", "because")


async def refused(client: MasterClient, master: Master, record: MasterRecord | None = None) -> str:
    with pytest.raises(MasterError) as caught:
        await shut_down(client, master, record)
    message = str(caught.value)
    assert "\n" not in message and PASSWORD not in message
    return message


# --- Buildbot 0.8 -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_08_shutdown_is_a_post_whose_redirect_is_not_followed(master: Master) -> None:
    master.resource.script[SHUTDOWN_08] = Answer(302, headers={"Location": "../../buildslaves/bld-1"})
    accepted = await shut_down(master.client(flavour="0.8"), master)
    assert accepted == ShutdownRequested(master.url("/buildslaves/bld-1/shutdown"), "0.8", 302)
    assert [(seen.method, seen.path) for seen in master.resource.seen] == [SHUTDOWN_08]
    assert master.resource.seen[0].headers["host"] == f"{FQDN}:{master.port}"
    assert "authorization" not in master.resource.seen[0].headers


@pytest_twisted.ensureDeferred
async def test_08_a_2xx_is_accepted_too_and_the_status_decides(master: Master) -> None:
    master.resource.script[SHUTDOWN_08] = Answer(200, b"<html>ok</html>")
    assert (await shut_down(master.client(flavour="0.8"), master)).status == 200
    master.resource.script[SHUTDOWN_08] = Answer(500, b"<html>boom</html>")
    message = await refused(master.client(flavour="0.8"), master)
    url = master.url("/buildslaves/bld-1/shutdown")
    assert message == f"master bm01-build1: POST {url} failed: HTTP 500 Internal Server Error"


@pytest_twisted.ensureDeferred
async def test_08_a_redirect_to_authfail_is_a_refusal(master: Master) -> None:
    master.resource.script[SHUTDOWN_08] = Answer(302, headers={"Location": "../../authfail"})
    message = await refused(master.client(flavour="0.8"), master)
    url = master.url("/buildslaves/bld-1/shutdown")
    assert message == f"master bm01-build1: POST {url} was refused: HTTP 302 redirect to authfail"


# --- Buildbot >= 1.0 ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_modern_shutdown_is_the_json_rpc_stop_call_with_basic_auth(master: Master) -> None:
    master.resource.script[STOP] = Answer(200, RPC_OK, {"Content-Type": "application/json"})
    client = master.client(flavour="modern", username="slaveapi", password=Secret(PASSWORD), allow_plain_http=True)
    accepted = await shut_down(client, master)
    assert accepted == ShutdownRequested(master.url("/api/v2/workers/bld-1"), "modern", 200)
    [seen] = master.resource.seen
    assert (seen.method, seen.path) == STOP
    assert json.loads(seen.body) == {"jsonrpc": "2.0", "method": "stop", "params": {"reason": "because"}, "id": 1}
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["authorization"] == "Basic " + base64.b64encode(f"slaveapi:{PASSWORD}".encode()).decode()
    assert seen.headers["host"] == f"{FQDN}:{master.port}"


@pytest_twisted.ensureDeferred
async def test_modern_without_a_user_or_password_sends_no_auth(master: Master) -> None:
    master.resource.script[STOP] = Answer(200, RPC_OK)
    await shut_down(master.client(flavour="modern", password=Secret(PASSWORD)), master)
    await shut_down(master.client(flavour="modern", username="slaveapi"), master)
    assert ["authorization" in seen.headers for seen in master.resource.seen] == [False, False]


@pytest_twisted.ensureDeferred
async def test_modern_errors_name_the_url_status_and_json_rpc_error(master: Master) -> None:
    url = master.url("/api/v2/workers/bld-1")
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "no such\nworker"}}
    master.resource.script[STOP] = Answer(500, json.dumps(error).encode())
    client = master.client(flavour="modern", username="slaveapi", password=Secret(PASSWORD), allow_plain_http=True)
    assert await refused(client, master) == (
        f"master bm01-build1: POST {url} failed: HTTP 500 Internal Server Error (JSON-RPC error -32603: no such worker)"
    )
    master.resource.script[STOP] = Answer(403, b'{"error": "forbidden"}')
    assert await refused(client, master) == f"master bm01-build1: POST {url} failed: HTTP 403 Forbidden"
    master.resource.script[STOP] = Answer(200, json.dumps(error).encode())
    assert await refused(client, master) == (
        f"master bm01-build1: POST {url} failed: HTTP 200 (JSON-RPC error -32603: no such worker)"
    )
    master.resource.script[STOP] = Answer(200, b"<html>a proxy page</html>")
    assert await refused(client, master) == f"master bm01-build1: POST {url} failed: HTTP 200, answer is not JSON"


# --- choosing the flavour ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_auto_uses_the_data_api_when_the_master_has_one(master: Master) -> None:
    # Buildbot 4.3 answers its API root as JSON labelled text/plain.
    master.resource.script[ROOT] = Answer(200, b'{"meta": {"total": 1}, "rootlinks": [{"name": "workers"}]}')
    master.resource.script[STOP] = Answer(200, RPC_OK)
    accepted = await shut_down(master.client(flavour="auto"), master)
    assert accepted.flavour == "modern"
    assert [(seen.method, seen.path) for seen in master.resource.seen] == [ROOT, STOP]


@pytest_twisted.ensureDeferred
async def test_auto_takes_a_refused_data_api_for_a_modern_master(master: Master) -> None:
    master.resource.script[ROOT] = Answer(401, b"unauthorized")
    master.resource.script[STOP] = Answer(401, b'{"error": "unauthorized"}')
    message = await refused(master.client(flavour="auto"), master)
    assert message == f"master bm01-build1: POST {master.url('/api/v2/workers/bld-1')} failed: HTTP 401 Unauthorized"


@pytest_twisted.ensureDeferred
async def test_auto_falls_back_to_08_without_a_data_api(master: Master) -> None:
    master.resource.script[SHUTDOWN_08] = Answer(302, headers={"Location": "../../buildslaves/bld-1"})
    accepted = await shut_down(master.client(flavour="auto"), master)
    assert accepted.flavour == "0.8"
    assert [(seen.method, seen.path) for seen in master.resource.seen] == [ROOT, SHUTDOWN_08]


@pytest_twisted.ensureDeferred
async def test_masters_section_overrides_the_flavour_by_fqdn_or_nickname(master: Master) -> None:
    record = master.record()
    assert master.client(flavour="auto", masters={FQDN: "0.8"}).configured_flavour(record) == "0.8"
    # configparser lowercases [masters] keys; names match in any case.
    assert master.client(flavour="0.8", masters={"bm01-build1": "modern"}).configured_flavour(record) == "modern"
    assert master.client(flavour="modern", masters={"bm02": "0.8"}).configured_flavour(record) == "modern"
    master.resource.script[SHUTDOWN_08] = Answer(302)
    await shut_down(master.client(flavour="modern", masters={"BM01.masters.test": "0.8"}), master)
    assert [(seen.method, seen.path) for seen in master.resource.seen] == [SHUTDOWN_08]


# --- failures before an answer ------------------------------------------------------------


class _Silent(Protocol):
    """Accepts the connection and never answers."""


@pytest_twisted.ensureDeferred
async def test_a_master_that_never_answers_times_out(master: Master) -> None:
    listener = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        port = listener.getHost().port
        record = MasterRecord(1, "bm01-build1", FQDN, port, None, True)
        message = await refused(master.client(timeout=0.5, flavour="modern"), master, record)
        url = f"http://{FQDN}:{port}/api/v2/workers/bld-1"
        # Only the client's own deadline writes this: the silent master never answers nor hangs up.
        assert message == f"master bm01-build1: POST {url} failed: timed out after 0.5s"
    finally:
        await listener.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_master_that_hangs_mid_answer_times_out(master: Master) -> None:
    master.resource.script[ROOT] = Answer(200, hang=True)
    message = await refused(master.client(timeout=0.5, flavour="auto"), master)
    assert message == f"master bm01-build1: GET {master.url('/api/v2')} failed: timed out after 0.5s"


@pytest_twisted.ensureDeferred
async def test_unreachable_unknown_or_portless_masters(master: Master) -> None:
    client = master.client(flavour="0.8")
    # Bound for the whole call and never listening: a closed port nothing else can take meanwhile.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        closed = MasterRecord(1, "bm01-build1", FQDN, port, None, True)
        assert await refused(client, master, closed) == (
            f"master bm01-build1: POST http://{FQDN}:{port}/buildslaves/bld-1/shutdown failed: connection refused"
        )
    unknown = MasterRecord(2, "bm09", "bm09.masters.test", 8010, None, True)
    assert await refused(client, master, unknown) == (
        "master bm09: POST http://bm09.masters.test:8010/buildslaves/bld-1/shutdown failed: "
        "bm09.masters.test is not in DNS"
    )
    assert await refused(client, master, master.record(http_port=None)) == (
        f"master bm01-build1: POST http://{FQDN}/buildslaves/bld-1/shutdown failed: slavealloc gives it no http_port"
    )
    assert master.resource.seen == []

