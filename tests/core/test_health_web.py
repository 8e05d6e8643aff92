"""
The health views over stored verdicts and the fakes' slavealloc: counting,
filtering, a machine never checked, and no health loop at all.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from slaveapi.config import ApiToken, AuthConfig, Credentials, Secret
from slaveapi.health import BAD, DOWN, OK, Evidence, HealthRecord, HealthStoreError, SQLiteHealthStore
from slaveapi.testing import FakeHost, make_fakes, run_on_clock, slave_record
from slaveapi.web.errors import HTTPProblem
from slaveapi.web.health import fleet_health, machine_health
from slaveapi.web.routes import SlaveAPIWeb
from tests.core.test_health_sweep import MemoryHealthStore


def _request(**args: list[str]) -> IRequest:
    request = DummyRequest([b""])
    request.args = {key.encode(): [value.encode() for value in values] for key, values in args.items()}
    return cast(IRequest, request)


def _setup() -> tuple[Any, MemoryHealthStore]:
    fakes = make_fakes([FakeHost(f"bld-{n}", f"127.0.9.{n}") for n in range(1, 5)])
    records = fakes.slavealloc.records
    records["bld-3"] = dataclasses.replace(records["bld-3"], pool="other")
    records["bld-4"] = slave_record("bld-4", slaveid=4, enabled=False)
    store = MemoryHealthStore()
    store.open()
    store.finished = 123.0
    down = (Evidence("probe", BAD, "127.0.9.2 does not answer"),)
    store.stored = {
        "bld-1": HealthRecord("bld-1", OK, (), 100.0, 120.0, "build-lab"),
        "bld-2": HealthRecord("bld-2", DOWN, down, 90.0, 120.0, "build-lab"),
    }
    return fakes, store


def test_the_fleet_counts_enabled_machines_and_never_checked_ones_as_unknown() -> None:
    fakes, store = _setup()
    request = _request()
    body = json.loads(run_on_clock(fakes.clock, fleet_health(store, fakes.context(), request)))
    assert body == {
        "checked_at": 123.0,
        "machines": 3,
        "verdicts": {"ok": 1, "degraded": 0, "down": 1, "unknown": 1},
        "down": ["bld-2"],
    }


def test_the_fleet_filters_like_slaves() -> None:
    fakes, store = _setup()
    body = json.loads(run_on_clock(fakes.clock, fleet_health(store, fakes.context(), _request(pool=["other"]))))
    assert (body["machines"], body["down"], body["verdicts"]["unknown"]) == (1, [], 1)
    body = json.loads(run_on_clock(fakes.clock, fleet_health(store, fakes.context(), _request(enabled=["no"]))))
    assert body["machines"] == 1
    with pytest.raises(HTTPProblem) as problem:
        run_on_clock(fakes.clock, fleet_health(store, fakes.context(), _request(enabled=["perhaps"])))
    assert problem.value.status == 400 and problem.value.msg.startswith("enabled: expected one of")


def test_one_machine_and_one_never_checked() -> None:
    fakes, store = _setup()
    body = json.loads(run_on_clock(fakes.clock, machine_health(store, fakes.context(), _request(), "BLD-2")))
    assert (body["name"], body["verdict"], body["since"], body["pool"]) == ("bld-2", "down", 90.0, "build-lab")
    assert body["evidence"] == [{"check": "probe", "outcome": "bad", "detail": "127.0.9.2 does not answer"}]
    body = json.loads(run_on_clock(fakes.clock, machine_health(store, fakes.context(), _request(), "bld-3")))
    assert body == {"name": "bld-3", "verdict": "unknown", "evidence": [], "since": None, "checked_at": None,
                    "pool": None}
    with pytest.raises(HTTPProblem) as problem:
        run_on_clock(fakes.clock, machine_health(store, fakes.context(), _request(), "bld-9"))
    assert problem.value.status == 404


_TOKEN = "a-dashboard-token-long-enough"


async def _get(web: SlaveAPIWeb, path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    stub = StubTreq(web.resource())
    headers = {b"Authorization": [b"Bearer " + token.encode()]} if token else {}
    response = await stub.get(  # type: ignore[attr-defined]  # StubTreq builds its methods at run time
        "http://127.0.0.1" + path, headers=headers
    )
    raw = await stub.content(response)  # type: ignore[attr-defined]  # as above
    return response.code, json.loads(raw)


@pytest_twisted.ensureDeferred
async def test_the_routes_answer_503_without_a_loop_or_with_a_store_that_did_not_open(tmp_path: Any) -> None:
    fakes, _ = _setup()
    for path in ("/health", "/slaves/bld-1/health"):
        status, body = await _get(SlaveAPIWeb(cast(Any, None), cast(Any, None), fakes.context), path)
        assert (status, body["error"]) == (503, "unavailable")
        assert body["msg"] == "health: the health loop is not running in this service"

    corrupt = tmp_path / "health.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    store = SQLiteHealthStore(str(corrupt), Clock())
    with pytest.raises(HealthStoreError):
        store.open()
    web = SlaveAPIWeb(cast(Any, None), cast(Any, None), fakes.context, health=store)
    for path in ("/health", "/slaves/bld-1/health"):
        status, body = await _get(web, path)
        assert (status, body["error"]) == (503, "unavailable")
        assert body["msg"].startswith(f"health: {corrupt}: not a readable health database")


@pytest_twisted.ensureDeferred
async def test_the_routes_need_a_token_under_protect_reads() -> None:
    fakes, store = _setup()
    config = dataclasses.replace(
        fakes.config,
        credentials=Credentials(ssh={}, api_tokens={"dashboard": ApiToken(Secret(_TOKEN))}),
        auth=AuthConfig(protect_reads=True),
    )
    ctx = dataclasses.replace(fakes.context(), config=config)
    web = SlaveAPIWeb(cast(Any, None), cast(Any, None), lambda: ctx, health=store)
    for path in ("/health", "/slaves/bld-2/health"):
        status, body = await _get(web, path)
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = await _get(web, path, token="not-the-right-token-at-all")
        assert status == 401
        status, body = await _get(web, path, token=_TOKEN)
        assert status == 200
    assert body["verdict"] == "down"
