"""
Fixtures for the real Buildbot tests: the peers on loopback and SlaveAPI pointed at them.

Not a conftest: it imports the reactor, which must wait until pytest-twisted
has installed the asyncio one. Test modules import the fixtures they use.

Module-wide: a master directory made once by C{buildbot create-master} (copied
for every test), an OpenSSH sshd letting a local test user in, a DNS server
for the test zone, a slavealloc fake, and SlaveAPI itself (configuration read
from an ini, its real context, processor and web app on a free port). Per
test: a master started from the template and a worker attached to it, both
by PID, with the worker's basedir readable by the SSH test user.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from slaveapi.config import load_config
from slaveapi.context import Context, build_context, close_contexts
from slaveapi.processor import ActionProcessor
from slaveapi.store import SQLiteResultStore
from slaveapi.web.routes import SlaveAPIWeb
from tests.buildbot.peers import (
    FakeSlavealloc,
    RealMaster,
    RealWorker,
    Sshd,
    create_master_template,
    ensure_user,
    free_port,
    reactor,
    start_dns,
)

DOMAIN = "bb.slaveapi.test"
WORKER = "bb-worker-01"
#: A slave slavealloc attaches to the same master and basedir, whose name the master does not know.
STRANGER = "bb-stranger"
#: A master [masters] says is modern, and one whose flavour SlaveAPI must find out.
MODERN_MASTER = "bm-modern"
AUTO_MASTER = "bm-auto"
SSH_USER = "slaveapibb"
# The password of a throwaway local account that only the loopback sshd started here accepts.
SSH_PASSWORD = "slaveapi-bb-Test-pw-2718"


@dataclass
class SlaveAPI:
    """SlaveAPI serving on a free port, with its context (for looking at its config)."""

    url: str
    context: Context

    async def post(self, slave: str, action: str, waittime: float = 60, **fields: str) -> dict[str, Any]:
        """Request an action (with form C{fields}) and wait for it (bounded by C{waittime}); its result dict."""
        response = await treq.post(
            f"{self.url}/slaves/{slave}/actions/{action}",
            data={"waittime": str(waittime), **fields},
            timeout=waittime + 10,
        )
        body: dict[str, Any] = await response.json()
        assert response.code == 200, body  # finished within waittime
        return body


@dataclass
class Peers:
    """A running master and worker, and the master record slavealloc gives for them."""

    master: RealMaster
    worker: RealWorker
    nickname: str

    @property
    def fqdn(self) -> str:
        return f"{self.nickname}.{DOMAIN}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.master.www_port}/api/v2"


@pytest_twisted.async_fixture(scope="module")
async def master_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return await create_master_template(tmp_path_factory.mktemp("template") / "master", WORKER)


@pytest_twisted.async_yield_fixture(scope="module")
async def sshd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sshd]:
    await ensure_user(SSH_USER, SSH_PASSWORD)
    server = Sshd(tmp_path_factory.mktemp("sshd"), free_port())
    try:
        yield await server.start()
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def dns_port() -> Any:
    names = {f"{name}.{DOMAIN}": "127.0.0.1" for name in (WORKER, STRANGER, MODERN_MASTER, AUTO_MASTER)}
    listener, port = start_dns(DOMAIN, names)
    yield port
    listener.stopListening()


@pytest.fixture(scope="module")
def slavealloc() -> Any:
    fake = FakeSlavealloc()
    listener = reactor.listenTCP(0, fake.site(), interface="127.0.0.1")
    fake.port = listener.getHost().port  # type: ignore[attr-defined]  # noted on the fake
    yield fake
    listener.stopListening()


@pytest_twisted.async_yield_fixture(scope="module")
async def slaveapi(
    tmp_path_factory: pytest.TempPathFactory, sshd: Sshd, dns_port: int, slavealloc: FakeSlavealloc
) -> AsyncIterator[SlaveAPI]:
    directory = tmp_path_factory.mktemp("slaveapi")
    remote = f"http://127.0.0.1:{slavealloc.port}"  # type: ignore[attr-defined]  # noted by the fixture
    (directory / "credentials.json").write_text(json.dumps({"ssh": {SSH_USER: [SSH_PASSWORD]}}))
    # The worker host's key, enrolled: SlaveAPI offers passwords only to verified hosts.
    host_key = (sshd.directory / "host_key.pub").read_text().split()
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {host_key[0]} {host_key[1]}\n")
    (directory / "slaveapi.ini").write_text(
        "[secrets]\ncredentials_file = credentials.json\n"
        f"[slavealloc]\napi_url = {remote}/api\n"
        f"[inventory]\napi_url = {remote}/inventory\n"
        f"[bugzilla]\napi_url = {remote}/bugzilla\n"
        f"[buildapi]\napi_url = {remote}/buildapi\n"
        f"[slaves]\ndefault_domain = {DOMAIN}\n"
        f"[dns]\nservers = 127.0.0.1:{dns_port}\ntimeout = 2\n"
        f"[ssh]\nport = {sshd.port}\nhost_keys = strict\nknown_hosts = {directory / 'known_hosts'}\n"
        "connect_timeout = 10\ncommand_timeout = 10\n"
        "[http]\ntimeout = 10\n"
        "[buildbot]\nflavour = auto\npoll_interval = 0.2\nmax_wait = 30\n"
        f"[masters]\n{MODERN_MASTER} = modern\n"
    )
    config = load_config(str(directory / "slaveapi.ini"))
    pool = HTTPConnectionPool(reactor, persistent=True)
    context = build_context(config, reactor, pool, str(directory))
    store = SQLiteResultStore(str(directory / "results.sqlite"), reactor)
    store.open()
    processor = ActionProcessor(store, lambda: context, concurrency=4, reactor=reactor)
    processor.startService()
    site = Site(SlaveAPIWeb(processor, store, lambda: context).resource())
    site.noisy = False
    listener = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield SlaveAPI(f"http://127.0.0.1:{listener.getHost().port}", context)
    finally:
        await listener.stopListening()
        processor.stopService()
        await store.close()
        await close_contexts([context])
        await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def start_peers(
    master_template: Path, slavealloc: FakeSlavealloc, tmp_path: Path
) -> AsyncIterator[Callable[[str], Awaitable[Peers]]]:
    """
    Start a master and its worker; slavealloc then shows C{WORKER} (and
    C{STRANGER}) attached to that master under the nickname given.
    Everything is stopped by PID at teardown, the worker first.
    """
    started: list[Any] = []
    # The SSH test user must reach the worker's twistd.log: not under pytest's private tmp.
    shared = Path(tempfile.mkdtemp(prefix="slaveapi-bb-", dir="/tmp"))
    os.chmod(shared, 0o755)  # noqa: S103  # the peers run as another user and must read it

    async def start(nickname: str) -> Peers:
        master = await RealMaster.start(master_template, tmp_path / "master")
        started.append(master)
        worker = await RealWorker.start(shared / "worker", WORKER, master.pb_port)
        started.append(worker)
        slavealloc.masters = {
            7: {"masterid": 7, "nickname": nickname, "fqdn": f"{nickname}.{DOMAIN}", "http_port": master.www_port,
                "pb_port": master.pb_port, "dcname": "loopback", "pool": "bb", "enabled": True},
        }
        slavealloc.slaves = {
            name: {"slaveid": slaveid, "name": name, "distro": "debian12", "bitlength": "64", "purpose": "build",
                   "datacenter": "loopback", "trustlevel": "core", "speed": "fast", "environment": "test",
                   "pool": "bb", "basedir": str(worker.directory), "enabled": True, "current_masterid": 7,
                   "current_master": nickname, "locked_masterid": None, "notes": ""}
            for slaveid, name in ((1, WORKER), (2, STRANGER))
        }
        return Peers(master, worker, nickname)

    try:
        yield start
    finally:
        for process in reversed(started):
            await process.stop()
        shutil.rmtree(shared, ignore_errors=True)
