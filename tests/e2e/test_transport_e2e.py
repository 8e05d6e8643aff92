"""
Credentials and plain http, end to end: SlaveAPI serving its lab (plain http
on loopback) in this process. The lab's configuration allows plain http for
inventory and Bugzilla, which is warned about once each at start-up; a
master's basic auth goes over plain http only with C{[buildbot]
allow_plain_http}, otherwise C{shutdown_buildslave} fails saying so and the
master is not asked.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest_twisted
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

WAIT = "60"
MASTER_PASSWORD = "lab-master-password-0042"


@dataclass
class Started:
    service: RunningService
    warnings: list[str]


@pytest_twisted.async_yield_fixture(scope="module")
async def started(tmp_path_factory: Any) -> AsyncIterator[Started]:
    warnings: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        running = await start_in_process(str(tmp_path_factory.mktemp("transport")), slaves=8, boot_time=1.0)
    finally:
        globalLogPublisher.removeObserver(observe)
    yield Started(running, warnings)
    await running.stop()


@contextmanager
def master_basic_auth(service: RunningService, allow_plain_http: bool) -> Iterator[None]:
    """Reload the lab's configuration with basic auth for masters (and allow_plain_http or not); restore it after."""
    holder = next(child for child in service.service if isinstance(child, ContextHolder))
    ini = holder.context().config.path
    credentials_path = os.path.join(os.path.dirname(ini), "credentials.json")
    with open(ini, encoding="utf-8") as handle:
        original_ini = handle.read()
    with open(credentials_path, encoding="utf-8") as handle:
        original_credentials = handle.read()
    settings = "[buildbot]\nusername = slaveapi\n" + ("allow_plain_http = true\n" if allow_plain_http else "")
    assert original_ini.count("[buildbot]\n") == 1
    with open(ini, "w", encoding="utf-8") as handle:
        handle.write(original_ini.replace("[buildbot]\n", settings))
    with open(credentials_path, "w", encoding="utf-8") as handle:
        json.dump(dict(json.loads(original_credentials), buildbot_master=MASTER_PASSWORD), handle)
    assert holder.reload()
    try:
        yield
    finally:
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(original_ini)
        with open(credentials_path, "w", encoding="utf-8") as handle:
            handle.write(original_credentials)
        assert holder.reload()


async def shutdown(service: RunningService, slave: str) -> tuple[int, Any]:
    url = f"{service.url}/slaves/{slave}/actions/shutdown_buildslave"
    return await request_json("POST", url, data={"waittime": WAIT})


def test_the_labs_plain_http_is_warned_about_once_at_start_up(started: Started) -> None:
    url = started.service.lab.http_url
    assert [warning for warning in started.warnings if "allow_plain_http" in warning] == [
        f"[inventory] allow_plain_http = true: inventory's basic-auth password is sent over plain http to "
        f"{url}/inventory/api",
        f"[bugzilla] allow_plain_http = true: the Bugzilla API key is sent over plain http to {url}/bugzilla/rest",
    ]


@pytest_twisted.ensureDeferred
async def test_basic_auth_to_an_http_master_needs_allow_plain_http(started: Started) -> None:
    service = started.service
    machine = service.lab.machine("t-w864-lab-004")
    master = service.lab.fleet.master_by_nickname(machine.master)
    assert master is not None
    before = len(machine.twistd_log)
    with master_basic_auth(service, allow_plain_http=False):
        code, result = await shutdown(service, machine.name)
    assert (code, result["state"]) == (200, 3), result
    assert result["text"] == (
        f"Requesting graceful shutdown from master {master.nickname}...Failed: master {master.nickname}: "
        f"GET http://{master.fqdn}:{master.http_port}/api/v2 not sent: it would carry the basic-auth password "
        f"over plain http; reach {master.nickname} over https ([masters] {master.nickname} = https) "
        "or set [buildbot] allow_plain_http = true"
    )
    assert MASTER_PASSWORD not in json.dumps(result)
    assert [request for request in service.lab.buildbots.requests if request.slave == machine.name] == []
    assert len(machine.twistd_log) == before


@pytest_twisted.ensureDeferred
async def test_with_allow_plain_http_the_shutdown_works_as_before(started: Started) -> None:
    service = started.service
    machine = service.lab.machine("bld-linux64-lab-001")
    with master_basic_auth(service, allow_plain_http=True):
        code, result = await shutdown(service, machine.name)
    assert (code, result["state"]) == (200, 2), result
    first, second = result["text"].split("\n")
    assert first == "Requesting graceful shutdown from master bm01-build1...Accepted (Buildbot 0.8, HTTP 302)."
    assert second.startswith("Waiting for the buildbot to shut down...Confirmed: it shut down gracefully")
    assert [request.master for request in service.lab.buildbots.requests if request.slave == machine.name] == [
        "bm01-build1"
    ]
    assert machine.twistd_log[-1].endswith("Server Shut Down.")
