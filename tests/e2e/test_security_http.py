"""
The HTTP gate end to end: SlaveAPI serving its lab in this process, asked
over real HTTP what a hostile web page or a careless client would ask.

Bodies too large or unauthenticated are refused on their headers while the
service goes on answering others; foreign Hosts and Origins are refused
before anything is queued; names must match in full; tokens carry scopes;
and what SlaveAPI writes to Bugzilla quotes the reason as the requester's
words and names the requester.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json, twistd_command
from tests.e2e.inprocess import RunningService, start_in_process

WAIT = "60"
_LIMIT = 30
_BIG = 32 * 1024 * 1024
_DISABLER = "disabler-token-0123456789abcdef"
_READER = "reader-token-0123456789abcdefgh"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("security")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


@implementer(IBodyProducer)
class _HeldBody:
    """
    A 32 MB body that sends its first 64 KiB, then nothing more until the
    test says so: the upload cannot have finished while it is held.
    """

    length = _BIG

    def __init__(self) -> None:
        self.sent = 0
        self.started: Deferred[None] = Deferred()
        self.stopped: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        chunk = b"x" * 65536
        consumer.write(chunk)
        self.sent += len(chunk)
        self.started.callback(None)
        return Deferred()  # never finishes: the rest is held

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if not self.stopped.called:
            self.stopped.callback(None)


def _holder(service: RunningService) -> ContextHolder:
    return next(child for child in service.service if isinstance(child, ContextHolder))


async def _answer(response: Any) -> tuple[int, Any]:
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    return response.code, json.loads(await treq.content(response))


@pytest_twisted.ensureDeferred
async def test_a_32mb_post_is_refused_on_its_headers_while_a_get_is_answered(lab_service: RunningService) -> None:
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=False)
    body = _HeldBody()
    posting = treq.post(
        f"{lab_service.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime",
        data=body,
        headers=Headers({b"Content-Type": [b"application/x-www-form-urlencoded"]}),
        pool=pool,
        timeout=_LIMIT,
    )
    await body.started
    # The POST's upload is under way (and held); a GET on another connection is answered.
    code, results = await request_json("GET", f"{lab_service.url}/results")
    assert code == 200 and isinstance(results, dict)
    code, listing = await request_json(
        "GET", f"{lab_service.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime"
    )
    assert (code, listing) == (200, {"buildslave_uptime": {}})

    # The POST was answered on its headers: all but the first 64 KiB were never sent.
    code, refused = await _answer(await posting)
    assert (code, refused["error"]) == (413, "payload_too_large")
    assert refused["msg"] == f"request body: expected at most 65536 bytes, got Content-Length {_BIG}"
    assert body.sent == 65536
    await body.stopped.addTimeout(_LIMIT, reactor)
    code, listing = await request_json(
        "GET", f"{lab_service.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime"
    )
    assert (code, listing) == (200, {"buildslave_uptime": {}})


@pytest_twisted.ensureDeferred
async def test_a_cross_origin_post_and_a_rebound_host_act_on_nothing(lab_service: RunningService) -> None:
    url = f"{lab_service.url}/slaves/tst-linux64-lab-002/actions/reboot"
    code, refused = await request_json(
        "POST",
        url,
        data=b"waittime=0",
        headers={"Origin": "http://attacker.example", "Content-Type": "text/plain"},
    )
    assert (code, refused["error"]) == (403, "forbidden_origin")
    port = lab_service.url.rsplit(":", 1)[1]
    code, refused = await request_json("POST", url, headers={"Host": f"attacker.example:{port}"})
    assert (code, refused["error"]) == (421, "misdirected_request")
    code, listing = await request_json("GET", url)
    assert (code, listing) == (200, {"reboot": {}})

    # A page SlaveAPI served itself sends its own origin: that one is served.
    code, result = await request_json(
        "POST",
        f"{lab_service.url}/slaves/tst-linux64-lab-002/actions/buildslave_uptime",
        data={"waittime": WAIT},
        headers={"Origin": lab_service.url},
    )
    assert (code, result["state"]) == (200, 2), result


@pytest_twisted.ensureDeferred
async def test_a_name_with_a_trailing_newline_is_a_400_and_stores_nothing(lab_service: RunningService) -> None:
    for name in ("bld-linux64-lab-001%0A", "bld-linux64-lab-001%0D%0A", "%0Abld-linux64-lab-001"):
        code, refused = await request_json(
            "POST", f"{lab_service.url}/slaves/{name}/actions/buildslave_uptime", data={"waittime": WAIT}
        )
        assert (code, refused["error"]) == (400, "bad_request"), name
        assert refused["msg"].startswith("slave: expected a hostname")
    code, results = await request_json("GET", f"{lab_service.url}/results")
    assert code == 200 and not [slave for slave in results if "\n" in slave or "\r" in slave]


@pytest_twisted.ensureDeferred
async def test_scoped_tokens_and_the_reason_quoted_in_the_bug_comment(lab_service: RunningService) -> None:
    holder = _holder(lab_service)
    credentials_path = os.path.join(os.path.dirname(holder.context().config.path), "credentials.json")
    with open(credentials_path, encoding="utf-8") as handle:
        original = handle.read()
    credentials = json.loads(original)
    credentials["api_tokens"] = {
        "buildduty": {"token": _DISABLER, "scopes": ["read", "disable"]},
        "dashboard": {"token": _READER, "scopes": ["read", "inspect"]},
    }
    with open(credentials_path, "w", encoding="utf-8") as handle:
        json.dump(credentials, handle)
    assert holder.reload()
    machine = lab_service.lab.machine("bld-linux64-lab-001")
    url = f"{lab_service.url}/slaves/{machine.name}/actions/disable"
    try:
        code, refused = await request_json(
            "POST", url, data={"waittime": WAIT, "reason": "x"}, headers={"Authorization": f"Bearer {_READER}"}
        )
        assert (code, refused) == (
            403,
            {
                "error": "forbidden",
                "msg": "scope: the token of 'dashboard' lacks the 'disable' scope needed for disable",
            },
        )
        disabler = {"Authorization": f"Bearer {_DISABLER}"}
        code, refused = await request_json(
            "POST", url, data={"reason": "disk\nReason: approved by CTO"}, headers=disabler
        )
        assert (code, refused["msg"]) == (
            400,
            "reason: expected one line of printable characters (no newlines, tabs or control characters)",
        )
        code, refused = await request_json("POST", url, data={"reason": "x" * 501}, headers=disabler)
        assert (code, refused["msg"]) == (400, "reason: expected at most 500 characters, got 501")
        assert machine.enabled is True
        code, listing = await request_json("GET", url, headers=disabler)
        assert (code, listing) == (200, {"disable": {}})

        reason = 'flaky disk "sda", bug 1234567'
        code, result = await request_json("POST", url, data={"waittime": WAIT, "reason": reason}, headers=disabler)
        assert (code, result["state"]) == (200, 2), result
        assert machine.enabled is False
        tracking = lab_service.lab.bugzilla.find(machine.name)
        assert tracking is not None
        comment = tracking.comments[-1].text.split("\n")
        assert comment[-3:] == [
            f'Reason given by buildduty: "{reason}"',
            "",
            f"(SlaveAPI disable request {result['requestid']}, requested by buildduty.)",
        ]
        assert comment[0] == "Disabling in slavealloc...Success!"
        # The tracking bug was filed by this request: its description names the requester too.
        assert tracking.comments[0].text.endswith(
            f"(SlaveAPI disable request {result['requestid']}, requested by buildduty.)"
        )
    finally:
        with open(credentials_path, "w", encoding="utf-8") as handle:
            handle.write(original)
        assert holder.reload()


_PLAIN_INI = """\
[secrets]
credentials_file = credentials.json
[slavealloc]
api_url = http://127.0.0.1:9/slavealloc
[inventory]
api_url = http://127.0.0.1:9/inventory
[bugzilla]
api_url = http://127.0.0.1:9/bugzilla
[buildapi]
api_url = http://127.0.0.1:9/buildapi
[slaves]
default_domain = build.example.test
"""


def test_listening_beyond_loopback_without_tokens_is_refused_in_one_line(tmp_path: Any) -> None:
    (tmp_path / "slaveapi.ini").write_text(_PLAIN_INI, encoding="utf-8")
    (tmp_path / "credentials.json").write_text('{"ssh": {}}', encoding="utf-8")
    command = twistd_command(
        "--config", str(tmp_path / "slaveapi.ini"), "--data", str(tmp_path / "data"),
        "--listen", "tcp:0:interface=0.0.0.0",
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"slaveapi: {tmp_path / 'slaveapi.ini'}: listening on tcp:0:interface=0.0.0.0 reaches beyond this machine "
        "and the credentials file has no api_tokens, so anyone who can connect could act on the fleet; add "
        "api_tokens, listen on 127.0.0.1, or set [auth] allow_anonymous = true"
    ]
