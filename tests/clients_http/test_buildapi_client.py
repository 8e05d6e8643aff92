"""Tests for slaveapi.clients.buildapi: recent jobs, validation, concurrency limit."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.logger import capturedLogs

from slaveapi.clients.buildapi import BuildapiClient
from slaveapi.clients.http import RemoteError

from .fakeapi import HANG, FakeJSONAPI, SeenRequest, make_json_client

API = "http://buildapi.test/buildapi"


def _job(number: int, start: int, end: int | None, result: int | None = 0, **extra: Any) -> dict[str, Any]:
    return {
        "buildername": "Linux x86-64 mozilla-central build",
        "buildnumber": number,
        "starttime": start,
        "endtime": end,
        "result": result,
        "master": "bm01",
        "slave": "bld-linux64-ix-001",
        "reason": "scheduler",
        "request_ids": [number],
        **extra,
    }


class FakeBuildapi(FakeJSONAPI):
    """GET /recent/<name>?format=json&numbuilds=N; optionally holds every request open."""

    def __init__(self, jobs: dict[str, Any]) -> None:
        super().__init__()
        self.jobs = jobs
        self.hold = False

    def answer(self, seen: SeenRequest) -> Any:
        assert seen.method == "GET"
        prefix = "/buildapi/recent/"
        assert seen.path.startswith(prefix)
        assert seen.args["format"] == ["json"]
        if self.hold:
            return HANG
        name = seen.path[len(prefix) :]
        if name not in self.jobs:
            return 200, []
        jobs = self.jobs[name]
        if isinstance(jobs, int):
            return jobs, {"error": "broken"}
        return 200, jobs


def _client(fake: FakeBuildapi, max_concurrent: int = 3):
    json_client, stub, _clock = make_json_client("buildapi", fake)
    return BuildapiClient(API, json_client, max_concurrent), stub


@pytest_twisted.ensureDeferred
async def test_recent_jobs_sorted_newest_first() -> None:
    running = _job(12, 1764290000, None, None)
    old = _job(10, 1764280000, 1764283600)
    middle = _job(11, 1764284000, 1764287000, 2)
    fake = FakeBuildapi({"bld-linux64-ix-001": [old, running, middle]})
    client, _ = _client(fake)
    assert await client.recent_jobs("bld-linux64-ix-001", count=5) == [running, middle, old]
    assert fake.requests[0].args == {"format": ["json"], "numbuilds": ["5"]}


@pytest_twisted.ensureDeferred
async def test_recent_jobs_default_count_and_truncation() -> None:
    jobs = [_job(n, 1764280000 + n, 1764280100 + n) for n in range(12)]
    fake = FakeBuildapi({"bld-linux64-ix-001": jobs})
    client, _ = _client(fake)
    got = await client.recent_jobs("bld-linux64-ix-001")
    assert [j["buildnumber"] for j in got] == [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]
    assert fake.requests[0].args["numbuilds"] == ["10"]


@pytest_twisted.ensureDeferred
async def test_no_jobs() -> None:
    client, _ = _client(FakeBuildapi({}))
    assert await client.recent_jobs("idle-001") == []


@pytest_twisted.ensureDeferred
async def test_malformed_jobs_are_dropped_and_logged() -> None:
    good = _job(1, 1764280000, 1764283600)
    no_master = {k: v for k, v in _job(2, 1764290000, 1764293600).items() if k != "master"}
    text_start = _job(3, 1764290000, None)
    text_start["starttime"] = "yesterday"
    fake = FakeBuildapi({"s1": [no_master, good, "junk", text_start]})
    client, _ = _client(fake)
    with capturedLogs() as events:
        assert await client.recent_jobs("s1") == [good]
    problems = [(e["index"], e["problem"]) for e in events if e.get("slave") == "s1" and "problem" in e]
    assert problems == [(0, "missing master"), (2, "not an object"), (3, "starttime is not a number")]


@pytest_twisted.ensureDeferred
async def test_answer_that_is_not_a_list() -> None:
    fake = FakeBuildapi({"s1": {"jobs": []}})
    client, _ = _client(fake)
    with pytest.raises(RemoteError) as caught:
        await client.recent_jobs("s1", count=3)
    assert str(caught.value) == (
        "buildapi: GET http://buildapi.test/buildapi/recent/s1?format=json&numbuilds=3 failed: "
        "malformed answer: expected a list of jobs"
    )


@pytest_twisted.ensureDeferred
async def test_server_error() -> None:
    client, _ = _client(FakeBuildapi({"s1": 503}))
    with pytest.raises(RemoteError) as caught:
        await client.recent_jobs("s1")
    assert str(caught.value) == (
        "buildapi: GET http://buildapi.test/buildapi/recent/s1?format=json&numbuilds=10 failed: "
        "HTTP 503 Service Unavailable"
    )


def test_max_concurrent_limits_calls_in_flight() -> None:
    names = [f"s{n}" for n in range(7)]
    fake = FakeBuildapi({name: [_job(n, 1764280000 + n, None)] for n, name in enumerate(names)})
    fake.hold = True
    client, stub = _client(fake, max_concurrent=3)
    calls = [ensureDeferred(client.recent_jobs(name)) for name in names]
    assert fake.in_flight == 3
    assert len(fake.requests) == 3
    answered = 0
    while fake.pending:
        request = fake.pending[0]
        name = request.path.decode().rsplit("/", 1)[1]
        fake.finish(request, 200, fake.jobs[name])
        stub.flush()
        answered += 1
        assert fake.in_flight == min(3, len(names) - answered)
    assert answered == 7
    assert fake.max_in_flight == 3
    assert [call.result for call in calls] == [fake.jobs[name] for name in names]


def test_limit_is_per_client() -> None:
    fake = FakeBuildapi({"s1": []})
    fake.hold = True
    first, first_stub = _client(fake, max_concurrent=1)
    second, second_stub = _client(fake, max_concurrent=1)
    calls = [ensureDeferred(first.recent_jobs("s1")), ensureDeferred(first.recent_jobs("s1"))]
    calls.append(ensureDeferred(second.recent_jobs("s1")))
    assert fake.in_flight == 2
    fake.finish(fake.pending[0], 200, [])
    first_stub.flush()
    assert fake.in_flight == 2
    while fake.pending:
        fake.finish(fake.pending[0], 200, [])
        first_stub.flush()
        second_stub.flush()
    assert [call.result for call in calls] == [[], [], []]


def test_max_concurrent_must_be_positive() -> None:
    json_client, _, _ = make_json_client("buildapi", FakeBuildapi({}))
    with pytest.raises(ValueError) as caught:
        BuildapiClient(API, json_client, 0)
    assert str(caught.value) == "max_concurrent must be at least 1, got 0"
