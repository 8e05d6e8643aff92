"""
The health views over stored verdicts and the fakes' slavealloc: counting,
filtering, a machine never checked, and no health loop at all.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import pytest
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from slaveapi.health import BAD, DOWN, OK, Evidence, HealthRecord
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


def test_without_a_health_loop_the_routes_answer_503() -> None:
    fakes, _ = _setup()
    web = SlaveAPIWeb(cast(Any, None), cast(Any, None), fakes.context)
    with pytest.raises(HTTPProblem) as problem:
        web._health_store()
    assert problem.value.status == 503
