"""
The two read-only actions and the machine routes, end to end: a real twistd
process serving a 12-machine lab, asked over HTTP, answering from real SSH,
DNS and HTTP conversations with the lab.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq

from slaveapi.lab.fleet import build_fleet
from tests.e2e.harness import ServiceProcess, request_json, start_service

DOMAIN = "build.scl3.slaveapi.test"
#: Polling a running action: at most this many tries, this far apart.
POLL_TRIES, POLL_INTERVAL = 300, 0.1


@pytest.fixture(scope="module")
def service(tmp_path_factory: Any) -> Iterator[ServiceProcess]:
    launched = time.time()
    running = start_service(str(tmp_path_factory.mktemp("e2e")), "--lab", "12")
    # The lab built its fleet from its clock (this host's wall clock) somewhere in between.
    running.lab_built = (launched, time.time())  # type: ignore[attr-defined]  # noted on the fixture
    yield running
    running.stop()
    assert "Server Shut Down." in running.log_text()


def uptime_bounds(service: ServiceProcess, name: str, asked: float, answered: float) -> tuple[int, int]:
    """
    The least and the most uptime the lab can give C{name} when asked between
    C{asked} and C{answered}: it counts from a boot time fixed when it built
    its fleet, on the same clock. How long anything took does not matter.
    """
    earliest, latest = service.lab_built  # type: ignore[attr-defined]  # noted by the fixture
    least = build_fleet(12, DOMAIN, latest).machine(name).uptime(asked)
    most = build_fleet(12, DOMAIN, earliest).machine(name).uptime(answered)
    return least, most


async def post(
    service: ServiceProcess, slave: str, action: str, waittime: float = 30, **fields: str
) -> tuple[int, Any]:
    data = {"waittime": str(waittime), **fields}
    return await request_json("POST", f"{service.url}/slaves/{slave}/actions/{action}", data=data)


async def finished(service: ServiceProcess, slave: str, action: str, requestid: int) -> dict[str, Any]:
    """Poll the result, bounded, until it is finished."""
    url = f"{service.url}/slaves/{slave}/actions/{action}?requestid={requestid}"
    for _ in range(POLL_TRIES):
        code, result = await request_json("GET", url)
        assert code == 200
        if result["state"] in (2, 3):
            return result
        await _pause(POLL_INTERVAL)
    raise AssertionError(f"request {requestid} did not finish")


async def _pause(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@pytest.mark.parametrize(
    "slave",
    ["bld-linux64-lab-001", "tst-linux64-lab-002", "t-yosemite-r7-lab-003", "t-w864-lab-004", "dev-linux64-ec2-lab5"],
)
@pytest_twisted.ensureDeferred
async def test_uptime_of_linux_macos_and_windows_machines(service: ServiceProcess, slave: str) -> None:
    asked = time.time()
    code, result = await post(service, slave, "buildslave_uptime")
    answered = time.time()
    assert code == 200, result
    assert result["state"] == 2, result
    assert isinstance(result["text"], int)
    least, most = uptime_bounds(service, slave, asked, answered)
    # macOS's uptime past a minute is rounded to the nearest whole minute.
    slack = 30 if slave.startswith("t-yosemite") else 0
    assert least - slack <= result["text"] <= most + slack
    assert result["request_timestamp"] <= result["start_timestamp"] <= result["finish_timestamp"]
    assert isinstance(result["requestid"], int)


@pytest.mark.parametrize(
    ("slave", "state"),
    [
        ("bld-linux64-lab-001", "ready"),
        ("tst-linux64-lab-002", "running_command"),
        ("t-yosemite-r7-lab-003", "booting"),
        ("t-w864-lab-004", "ready"),
        ("dev-linux64-ec2-lab5", "stopped"),
        ("panda-0008", "ready"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_last_activity_states(service: ServiceProcess, slave: str, state: str) -> None:
    code, result = await post(service, slave, "buildslave_last_activity")
    assert code == 200, result
    assert result["state"] == 2, result
    payload = result["text"]
    assert set(payload) == {"last_state", "last_activity_seconds", "uptime"}
    assert payload["last_state"] == state
    assert isinstance(payload["uptime"], int) and payload["uptime"] > 0
    assert payload["last_activity_seconds"] >= 0
    if state == "booting":
        assert payload["last_activity_seconds"] == payload["uptime"] < 180


@pytest.mark.parametrize(
    ("slave", "action", "text"),
    [
        ("t-linux64-lab-007", "buildslave_uptime", "t-linux64-lab-007 - Slave is offline, cannot get uptime!"),
        (
            "t-linux64-lab-007",
            "buildslave_last_activity",
            "t-linux64-lab-007 - Slave is offline, cannot get last activity!",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failures_say_what_happened(service: ServiceProcess, slave: str, action: str, text: str) -> None:
    code, result = await post(service, slave, action)
    assert (code, result["state"], result["text"]) == (200, 3, text)


@pytest_twisted.ensureDeferred
async def test_an_unknown_slave_is_a_404(service: ServiceProcess) -> None:
    code, result = await post(service, "no-such-slave-01", "buildslave_uptime")
    assert (code, result) == (
        404,
        {
            "error": "not_found",
            "msg": "slave: no machine named no-such-slave-01 is known to slavealloc, devices or the loaner patterns",
        },
    )


@pytest_twisted.ensureDeferred
async def test_refused_login_is_a_failure_naming_ssh(service: ServiceProcess) -> None:
    code, result = await post(service, "bld-linux64-lab-006", "buildslave_uptime")
    assert (code, result["state"]) == (200, 3)
    assert result["text"].startswith("Could not log in to bld-linux64-lab-006 over SSH:")
    assert "rejected" in result["text"]


@pytest_twisted.ensureDeferred
async def test_post_without_waittime_answers_202_then_polls_to_the_result(service: ServiceProcess) -> None:
    code, queued = await request_json(
        "POST", f"{service.url}/slaves/bld-linux64-lab-010/actions/buildslave_uptime", data={}
    )
    assert code == 202
    assert queued["state"] in (0, 1)
    requestid = queued["requestid"]
    result = await finished(service, "bld-linux64-lab-010", "buildslave_uptime", requestid)
    assert result["state"] == 2 and isinstance(result["text"], int)
    assert "requestid" not in result

    code, everything = await request_json("GET", f"{service.url}/slaves/bld-linux64-lab-010/actions/buildslave_uptime")
    assert code == 200
    assert everything["buildslave_uptime"][str(requestid)] == result
    code, nested = await request_json("GET", f"{service.url}/results")
    assert nested["bld-linux64-lab-010"]["buildslave_uptime"][str(requestid)] == result


@pytest_twisted.ensureDeferred
async def test_the_2015_service_route_names_serve_the_read_only_actions(service: ServiceProcess) -> None:
    slave = "bld-linux64-lab-001"
    actions = f"{service.url}/slaves/{slave}/actions"
    code, uptime = await post(service, slave, "get_uptime")
    assert (code, uptime["state"]) == (200, 2) and isinstance(uptime["text"], int)
    requestid = str(uptime.pop("requestid"))
    for route in ("get_uptime", "buildslave_uptime"):
        code, filed = await request_json("GET", f"{actions}/{route}")
        assert code == 200 and list(filed) == ["buildslave_uptime"]
        assert filed["buildslave_uptime"][requestid] == uptime
    code, nested = await request_json("GET", f"{service.url}/results")
    assert nested[slave]["buildslave_uptime"][requestid] == uptime

    code, activity = await post(service, slave, "buildslave_last_activity")
    assert (code, activity["state"]) == (200, 2)
    requestid = str(activity.pop("requestid"))
    code, read = await request_json("GET", f"{actions}/get_last_activity?requestid={requestid}")
    assert (code, read) == (200, activity)
    code, filed = await request_json("GET", f"{actions}/get_last_activity")
    assert code == 200 and filed["buildslave_last_activity"][requestid] == activity


@pytest_twisted.ensureDeferred
async def test_results_pages_follow_next_and_filter(service: ServiceProcess) -> None:
    slave = "bld-linux64-lab-001"
    code, before = await request_json("GET", f"{service.url}/results?slave={slave}&limit=1000")
    assert code == 200 and before["next"] is None
    since = max([entry["requestid"] for entry in before["results"]], default=0)
    posted = []
    for _ in range(3):
        code, answer = await post(service, slave, "get_uptime")
        assert (code, answer.get("state")) == (200, 2), answer
        posted.append(answer)
    await post(service, slave, "buildslave_last_activity")

    path = f"/results?slave={slave.upper()}&action=get_uptime&since={since}&limit=2"
    seen: list[dict[str, Any]] = []
    for _ in range(5):
        code, page = await request_json("GET", service.url + path)
        assert code == 200
        seen.extend(page["results"])
        if page["next"] is None:
            break
        path = page["next"]
    assert [entry["requestid"] for entry in seen] == [answer["requestid"] for answer in posted]
    for entry, answer in zip(seen, posted, strict=True):
        assert entry == {**answer, "slave": slave, "action": "buildslave_uptime"}

    code, failures = await request_json("GET", f"{service.url}/results?slave={slave}&state=FAILURE&since={since}")
    assert (code, failures) == (200, {"results": [], "next": None})
    code, error = await request_json("GET", f"{service.url}/results?action=frobnicate")
    assert code == 400 and error["msg"].startswith("action: expected one of ")
    # Without page arguments: the 2015 shape, these results among the rest.
    code, nested = await request_json("GET", f"{service.url}/results")
    assert {str(answer["requestid"]) for answer in posted} <= set(nested[slave]["buildslave_uptime"])


@pytest_twisted.ensureDeferred
async def test_waittime_in_the_query_string(service: ServiceProcess) -> None:
    code, result = await request_json(
        "POST", f"{service.url}/slaves/bld-linux64-lab-001/actions/buildslave_uptime?waittime=30"
    )
    assert (code, result["state"]) == (200, 2)


@pytest_twisted.ensureDeferred
async def test_slaves_list_and_filters(service: ServiceProcess) -> None:
    code, listing = await request_json("GET", f"{service.url}/slaves")
    assert code == 200
    names = [slave["name"] for slave in listing["slaves"]]
    assert len(names) == 12 and "bld-linux64-lab-001" in names
    assert all({"name", "purpose", "environment", "pool", "enabled"} <= set(slave) for slave in listing["slaves"])

    code, disabled = await request_json("GET", f"{service.url}/slaves?enabled=false")
    assert [slave["name"] for slave in disabled["slaves"]] == ["dev-linux64-ec2-lab5"]

    code, builds = await request_json("GET", f"{service.url}/slaves?purpose=build&environment=prod")
    assert builds["slaves"] and all(
        (slave["purpose"], slave["environment"]) == ("build", "prod") for slave in builds["slaves"]
    )
    pools = sorted({slave["pool"] for slave in listing["slaves"]})[:2]
    code, pooled = await request_json("GET", f"{service.url}/slaves", params=[("pool", pool) for pool in pools])
    assert {slave["pool"] for slave in pooled["slaves"]} == set(pools)
    assert len(pooled["slaves"]) == sum(1 for slave in listing["slaves"] if slave["pool"] in pools)

    code, error = await request_json("GET", f"{service.url}/slaves?enabled=maybe")
    assert code == 400 and error["error"] == "bad_request" and error["msg"].startswith("enabled:")


@pytest_twisted.ensureDeferred
async def test_one_slave_in_full(service: ServiceProcess) -> None:
    code, slave = await request_json("GET", f"{service.url}/slaves/bld-linux64-lab-001")
    assert code == 200
    assert slave["name"] == "bld-linux64-lab-001"
    assert slave["fqdn"] == f"bld-linux64-lab-001.{DOMAIN}"
    assert (slave["domain"], slave["colo"], slave["ip"]) == (DOMAIN, "scl3", "127.0.1.1")
    assert slave["ipmi"] == {"fqdn": f"bld-linux64-lab-001-mgmt.{DOMAIN}"}
    assert slave["enabled"] is True and slave["basedir"] == "/builds/slave"
    assert slave["master"]["nickname"] and slave["master"]["fqdn"].endswith(DOMAIN)
    jobs = slave["recent_jobs"]
    assert jobs and all(
        {"buildername", "buildnumber", "starttime", "endtime", "result", "master"} <= set(j) for j in jobs
    )
    assert [job["starttime"] for job in jobs] == sorted((job["starttime"] for job in jobs), reverse=True)
    assert "errors" not in slave

    code, device = await request_json("GET", f"{service.url}/slaves/panda-0008")
    assert device["buildbotslave"]["name"].startswith("foopy")
    assert device["mozpool_server"]


@pytest.mark.parametrize(
    ("path", "method", "status", "field"),
    [
        ("/slaves/bad_name!/actions/buildslave_uptime", "POST", 400, "slave:"),
        ("/slaves/" + "a" * 300, "GET", 400, "slave:"),
        ("/slaves/bld-linux64-lab-001/actions/buildslave_uptime?requestid=abc", "GET", 400, "requestid:"),
        ("/slaves/bld-linux64-lab-001/actions/buildslave_uptime?waittime=-1", "POST", 400, "waittime:"),
        ("/slaves/bld-linux64-lab-001/actions/buildslave_uptime?waittime=soon", "POST", 400, "waittime:"),
        ("/slaves/bld-linux64-lab-001/actions/buildslave_uptime?requestid=987654", "GET", 404, "requestid:"),
        ("/slaves/bld-linux64-lab-001/actions/explode", "POST", 404, "action:"),
        ("/slaves/no-such-slave-02", "GET", 404, "slave:"),
        ("/nowhere", "GET", 404, "no such endpoint"),
        ("/results", "DELETE", 405, "method DELETE"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_json_errors(
    service: ServiceProcess, path: str, method: str, status: int, field: str
) -> None:
    response = await treq.request(method, service.url + path, timeout=30)
    body = await response.json()
    assert response.code == status
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert set(body) == {"error", "msg"}
    assert body["msg"].startswith(field)
    assert "Traceback" not in body["msg"]
