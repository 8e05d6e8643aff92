"""
A machine's history end to end: actions asked over HTTP of SlaveAPI serving
its lab in this process (one with a token, so that its client is named),
then C{GET /slaves/<slave>/history} paged one entry at a time through
C{next}, newest first, with the reboot's steps timed and the disable's
reason among its fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted

from slaveapi.service import ContextHolder
from tests.e2e.harness import request_json
from tests.e2e.inprocess import RunningService, start_in_process

_TOKEN = "history-buildduty-token-0123456789"
#: Long enough for any path in the lab (boot time 1 s, short probe bounds).
WAIT = "120"


@pytest_twisted.async_yield_fixture(scope="module")
async def lab_service(tmp_path_factory: Any) -> AsyncIterator[RunningService]:
    running = await start_in_process(str(tmp_path_factory.mktemp("history")), slaves=12, boot_time=1.0)
    yield running
    await running.stop()


def _give_a_token(service: RunningService) -> None:
    """Add an API token for C{buildduty} to the lab's credentials and reload them."""
    holder = next(child for child in service.service if isinstance(child, ContextHolder))
    credentials_path = os.path.join(os.path.dirname(holder.context().config.path), "credentials.json")
    with open(credentials_path, encoding="utf-8") as handle:
        credentials = json.load(handle)
    credentials["api_tokens"] = {"buildduty": _TOKEN}
    with open(credentials_path, "w", encoding="utf-8") as handle:
        json.dump(credentials, handle)
    assert holder.reload()


async def _post(service: RunningService, slave: str, action: str, **fields: Any) -> dict[str, Any]:
    headers = fields.pop("headers", {})
    code, result = await request_json(
        "POST", f"{service.url}/slaves/{slave}/actions/{action}", data={"waittime": WAIT, **fields}, headers=headers
    )
    assert (code, result["state"]) == (200, 2), result["text"]
    return dict(result)


@pytest_twisted.ensureDeferred
async def test_history_pages_newest_first_with_steps_fields_and_clients(lab_service: RunningService) -> None:
    machine = lab_service.lab.machine("bld-linux64-lab-001")
    disable = await _post(lab_service, machine.name, "disable", reason="flaky disk")
    reboot = await _post(lab_service, machine.name, "reboot")
    _give_a_token(lab_service)
    uptime = await _post(lab_service, machine.name, "buildslave_uptime", headers={"Authorization": f"Bearer {_TOKEN}"})

    entries: list[dict[str, Any]] = []
    path: str | None = f"/slaves/{machine.name}/history?limit=1"
    while path is not None and len(entries) < 10:
        code, page = await request_json("GET", lab_service.url + path)
        assert code == 200, page
        assert page["slave"] == machine.name
        assert len(page["history"]) <= 1
        entries += page["history"]
        path = page["next"]
    assert path is None

    assert [(entry["requestid"], entry["action"]) for entry in entries] == [
        (uptime["requestid"], "buildslave_uptime"),
        (reboot["requestid"], "reboot"),
        (disable["requestid"], "disable"),
    ]
    newest, middle, oldest = entries
    assert (newest["client"], newest["fields"], newest["steps"]) == ("buildduty", {}, [])
    assert newest["text"] == uptime["text"]

    assert (middle["client"], middle["fields"], middle["state"]) == (None, {}, 2)
    assert middle["text"] == reboot["text"] == "Attempting SSH reboot...Success!"
    (step,) = middle["steps"]
    assert (step["heading"], step["outcome"]) == ("Attempting SSH reboot", "Success!")
    # Whole seconds on the result, the reactor's clock on the steps.
    assert middle["start_timestamp"] - 1 <= step["started"] <= step["finished"] <= middle["finish_timestamp"] + 1
    for key in ("request_timestamp", "start_timestamp", "finish_timestamp"):
        assert middle[key] == reboot[key]

    assert (oldest["client"], oldest["fields"], oldest["text"]) == (None, {"reason": "flaky disk"}, disable["text"])
    # One step a status line, each ended with the outcome its line shows.
    assert [f"{step['heading']}...{step['outcome']}" for step in oldest["steps"]] == disable["text"].split("\n")
    assert all(step["started"] <= step["finished"] for step in oldest["steps"])


@pytest_twisted.ensureDeferred
async def test_history_of_an_unknown_machine_is_404_and_bad_paging_is_400(lab_service: RunningService) -> None:
    code, body = await request_json("GET", f"{lab_service.url}/slaves/nowhere-lab-999/history")
    assert (code, body["error"]) == (404, "not_found")
    code, body = await request_json("GET", f"{lab_service.url}/slaves/t-w864-lab-004/history?limit=501")
    assert (code, body["msg"]) == (400, "limit: expected a whole number from 1 to 500, got '501'")
    code, body = await request_json("GET", f"{lab_service.url}/slaves/t-w864-lab-004/history")
    assert (code, body) == (200, {"slave": "t-w864-lab-004", "history": [], "next": None})
