"""The lab's HTTP fakes, each route as docs/remote-apis.rst describes it, over a real port with treq."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq

from slaveapi.lab import Lab

DOMAIN = "build.scl3.slaveapi.test"


async def _get(lab: Lab, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await treq.get(lab.http_url + path, timeout=5, **kwargs)
    body = await response.content()
    assert response.headers.getRawHeaders(b"Content-Type") == [b"application/json; charset=utf-8"]
    return response.code, json.loads(body)


async def _send(lab: Lab, method: str, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(
        method, lab.http_url + path, data=json.dumps(body).encode(), timeout=5,
        headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)
    return response.code, json.loads(await response.content())


def _bz(lab: Lab) -> dict[str, str]:
    return {"X-BUGZILLA-API-KEY": lab.bugzilla_api_key}


# --- slavealloc ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slavealloc_slave_by_name_and_by_id(lab: Lab) -> None:
    expected = {
        "slaveid": 101, "name": "bld-linux64-lab-001", "distro": "centos6-mock", "bitlength": "64",
        "purpose": "build", "datacenter": "scl3", "trustlevel": "core", "speed": "fast", "environment": "prod",
        "pool": "build-scl3", "basedir": "/builds/slave", "enabled": True, "current_masterid": 1,
        "current_master": "bm01-build1", "locked_masterid": None, "notes": "",
    }
    assert await _get(lab, "/slavealloc/api/slaves/bld-linux64-lab-001?byname=1") == (200, expected)
    assert await _get(lab, "/slavealloc/api/slaves/101") == (200, expected)
    windows = (await _get(lab, "/slavealloc/api/slaves/t-w864-lab-004?byname=1"))[1]
    assert windows["basedir"] == "C:\\slave"
    loaner = (await _get(lab, "/slavealloc/api/slaves/dev-linux64-ec2-lab5?byname=1"))[1]
    assert (loaner["current_masterid"], loaner["current_master"], loaner["enabled"]) == (None, None, False)
    code, body = await _get(lab, "/slavealloc/api/slaves/nope-001?byname=1")
    assert code == 404 and body["error"] == "not found"
    assert (await _get(lab, "/slavealloc/api/slaves/9999"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_slavealloc_lists_slaves_and_masters(lab: Lab) -> None:
    code, slaves = await _get(lab, "/slavealloc/api/slaves")
    assert code == 200
    assert [slave["name"] for slave in slaves] == [machine.name for machine in lab.fleet.machines]
    assert "foopy01" not in [slave["name"] for slave in slaves]
    code, master = await _get(lab, "/slavealloc/api/masters/2")
    assert (code, master) == (200, {
        "masterid": 2, "nickname": "bm02-tests1", "fqdn": f"bm02.{DOMAIN}", "http_port": lab.http_port,
        "pb_port": 9002, "dcname": "scl3", "pool": "tests-scl3", "enabled": True})
    assert (await _get(lab, "/slavealloc/api/masters/77"))[0] == 404
    assert [m["masterid"] for m in (await _get(lab, "/slavealloc/api/masters"))[1]] == [1, 2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_slavealloc_put_changes_fields(lab: Lab) -> None:
    code, updated = await _send(
        lab, "PUT", "/slavealloc/api/slaves/101", {"enabled": False, "notes": "disabled by test"}
    )
    assert code == 200 and (updated["enabled"], updated["notes"]) == (False, "disabled by test")
    later = (await _get(lab, "/slavealloc/api/slaves/bld-linux64-lab-001?byname=1"))[1]
    assert (later["enabled"], later["notes"]) == (False, "disabled by test")
    assert lab.machine("bld-linux64-lab-001").enabled is False
    code, updated = await _send(lab, "PUT", "/slavealloc/api/slaves/101", {"current_masterid": None})
    assert (code, updated["current_masterid"], updated["current_master"]) == (200, None, None)
    code, updated = await _send(lab, "PUT", "/slavealloc/api/slaves/101", {"current_masterid": 2})
    assert (code, updated["current_master"]) == (200, "bm02-tests1")
    for bad in ({"enabled": "no"}, {"name": "other"}, {"current_masterid": 99}, {"colour": "red"}):
        code, body = await _send(lab, "PUT", "/slavealloc/api/slaves/101", bad)
        assert code == 400 and body["error"] == "bad request", bad
    assert (await _send(lab, "PUT", "/slavealloc/api/slaves/9999", {"enabled": True}))[0] == 404


# --- inventory ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_inventory_system_by_hostname(lab: Lab) -> None:
    auth = (lab.inventory_user, lab.inventory_password)
    code, body = await _get(lab, f"/inventory/api/system/?format=json&hostname=tst-linux64-lab-002.{DOMAIN}", auth=auth)
    assert code == 200 and body["meta"]["total_count"] == 1
    (system,) = body["objects"]
    assert system["hostname"] == f"tst-linux64-lab-002.{DOMAIN}"
    assert {"key": "system.pdu.0", "value": f"pdu1.{DOMAIN}:AA1"} in system["key_value"]
    panda = (await _get(lab, f"/inventory/api/system/?format=json&hostname=panda-0008.{DOMAIN}", auth=auth))[1]
    assert {"key": "system.imaging_server.0", "value": f"mobile-imaging-001.{DOMAIN}"} in panda["objects"][0][
        "key_value"
    ]
    healthy = (await _get(lab, f"/inventory/api/system/?format=json&hostname=bld-linux64-lab-001.{DOMAIN}", auth=auth))[
        1
    ]
    assert not [kv for kv in healthy["objects"][0]["key_value"] if kv["key"].startswith("system.pdu")]
    unknown = await _get(lab, f"/inventory/api/system/?format=json&hostname=nope.{DOMAIN}", auth=auth)
    assert unknown == (200, {"meta": {"limit": 20, "next": None, "offset": 0, "previous": None, "total_count": 0},
                             "objects": []})


@pytest_twisted.ensureDeferred
async def test_inventory_needs_basic_auth(lab: Lab) -> None:
    path = f"/inventory/api/system/?format=json&hostname=bld-linux64-lab-001.{DOMAIN}"
    for auth in (None, (lab.inventory_user, "wrong"), ("someone", lab.inventory_password)):
        response = await treq.get(lab.http_url + path, auth=auth, timeout=5)
        assert response.code == 401, auth
        assert response.headers.getRawHeaders(b"WWW-Authenticate") == [b'Basic realm="inventory"']
        await response.content()


# --- buildapi ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_buildapi_recent_jobs(lab: Lab) -> None:
    machine = lab.machine("tst-linux64-lab-002")
    code, jobs = await _get(lab, "/buildapi/recent/tst-linux64-lab-002?format=json&numbuilds=3")
    assert code == 200 and len(jobs) == 3
    newest = machine.recent_jobs[0]
    assert jobs[0] == {
        "buildername": newest.buildername, "buildnumber": newest.buildnumber, "starttime": newest.starttime,
        "endtime": None, "result": None, "master": "bm02-tests1", "slave": "tst-linux64-lab-002",
        "reason": "scheduler", "request_ids": newest.request_ids}
    assert jobs[0]["starttime"] > jobs[1]["starttime"] > jobs[2]["starttime"]
    assert all(isinstance(job["endtime"], int) and job["result"] in (0, 1, 2, 5) for job in jobs[1:])
    assert len((await _get(lab, "/buildapi/recent/tst-linux64-lab-002?format=json&numbuilds=100"))[1]) == len(
        machine.recent_jobs)
    assert await _get(lab, "/buildapi/recent/dev-linux64-ec2-lab5?format=json&numbuilds=5") == (200, [])
    assert await _get(lab, "/buildapi/recent/nope-001?format=json&numbuilds=5") == (200, [])
    assert (await _get(lab, "/buildapi/recent/tst-linux64-lab-002?format=json&numbuilds=many"))[0] == 400


# --- Bugzilla ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bugzilla_get_by_alias_and_id(lab: Lab) -> None:
    code, body = await _get(lab, "/bugzilla/rest/bug/bld-linux64-lab-006", headers=_bz(lab))
    assert code == 200
    (bug,) = body["bugs"]
    assert {key: bug[key] for key in ("id", "alias", "summary", "status", "resolution", "is_open", "product",
                                      "component", "blocks", "depends_on")} == {
        "id": 1001, "alias": ["bld-linux64-lab-006"], "summary": "bld-linux64-lab-006 problem tracking",
        "status": "NEW", "resolution": "", "is_open": True, "product": "Release Engineering",
        "component": "Buildduty", "blocks": [], "depends_on": []}
    assert (await _get(lab, "/bugzilla/rest/bug/1002", headers=_bz(lab)))[1]["bugs"][0]["alias"] == [
        "t-linux64-lab-007"]
    assert await _get(lab, "/bugzilla/rest/bug/bld-linux64-lab-001", headers=_bz(lab)) == (
        404, {"error": True, "code": 101, "message": "Bug #bld-linux64-lab-001 does not exist."})
    assert (await _get(lab, "/bugzilla/rest/bug/424242", headers=_bz(lab)))[0] == 404


@pytest_twisted.ensureDeferred
async def test_bugzilla_needs_the_api_key(lab: Lab) -> None:
    for headers in ({}, {"X-BUGZILLA-API-KEY": "not-the-key"}):
        code, body = await _get(lab, "/bugzilla/rest/bug/1001", headers=headers)
        assert (code, body["error"], body["code"]) == (401, True, 306)
    code, _ = await _get(lab, f"/bugzilla/rest/bug/1001?api_key={lab.bugzilla_api_key}")
    assert code == 200
    assert (await _send(lab, "POST", "/bugzilla/rest/bug", {"summary": "x"}))[0] == 401


@pytest_twisted.ensureDeferred
async def test_bugzilla_file_comment_update_and_search(lab: Lab) -> None:
    new = {"product": "Infrastructure & Operations", "component": "DCOps", "summary": "t-linux64-lab-007 is dead",
           "description": "Please power-cycle it.", "blocks": [1002], "version": "other"}
    code, created = await _send(lab, "POST", "/bugzilla/rest/bug", new, headers=_bz(lab))
    assert (code, created) == (201, {"id": 1003})
    bug = (await _get(lab, "/bugzilla/rest/bug/1003", headers=_bz(lab)))[1]["bugs"][0]
    assert (bug["blocks"], bug["status"], bug["creator"]) == ([1002], "NEW", "slaveapi@example.test")
    tracking = (await _get(lab, "/bugzilla/rest/bug/t-linux64-lab-007", headers=_bz(lab)))[1]["bugs"][0]
    assert tracking["depends_on"] == [1003]

    code, comment = await _send(lab, "POST", "/bugzilla/rest/bug/1002/comment", {"comment": "Rebooting failed."},
                                headers=_bz(lab))
    assert code == 201 and isinstance(comment["id"], int)
    comments = (await _get(lab, "/bugzilla/rest/bug/1002/comment", headers=_bz(lab)))[1]["bugs"]["1002"]["comments"]
    assert [c["text"] for c in comments] == ["Problem tracking bug for t-linux64-lab-007.", "Rebooting failed."]
    assert (await _send(lab, "POST", "/bugzilla/rest/bug/1002/comment", {}, headers=_bz(lab)))[0] == 400

    search = "/bugzilla/rest/bug?product=Infrastructure%20%26%20Operations&component=DCOps&blocks=1002&resolution=---"
    assert [b["id"] for b in (await _get(lab, search, headers=_bz(lab)))[1]["bugs"]] == [1003]

    code, changed = await _send(lab, "PUT", "/bugzilla/rest/bug/1003",
                                {"status": "RESOLVED", "resolution": "FIXED", "comment": {"body": "Back up."}},
                                headers=_bz(lab))
    assert code == 200
    assert changed["bugs"][0]["changes"] == {
        "status": {"removed": "NEW", "added": "RESOLVED"}, "resolution": {"removed": "", "added": "FIXED"}}
    assert (await _get(lab, search, headers=_bz(lab)))[1]["bugs"] == []
    fixed = search.replace("resolution=---", "resolution=FIXED")
    assert [(b["id"], b["is_open"]) for b in (await _get(lab, fixed, headers=_bz(lab)))[1]["bugs"]] == [(1003, False)]
    assert (await _send(lab, "PUT", "/bugzilla/rest/bug/1003", {"status": "RESOLVED", "resolution": ""},
                        headers=_bz(lab)))[0] == 400

    code, changed = await _send(lab, "PUT", "/bugzilla/rest/bug/1003", {"blocks": {"remove": [1002]}}, headers=_bz(lab))
    assert code == 200 and changed["bugs"][0]["changes"] == {"blocks": {"removed": "1002", "added": ""}}
    tracking = (await _get(lab, "/bugzilla/rest/bug/1002", headers=_bz(lab)))[1]["bugs"][0]
    assert tracking["depends_on"] == []

    code, body = await _send(lab, "POST", "/bugzilla/rest/bug",
                             {"product": "P", "component": "C", "summary": "S", "alias": "bld-linux64-lab-006"},
                             headers=_bz(lab))
    assert (code, body["code"]) == (400, 103)
    code, body = await _send(lab, "POST", "/bugzilla/rest/bug", {"product": "P", "component": "C"}, headers=_bz(lab))
    assert (code, body["error"]) == (400, True)
    code, body = await _get(lab, "/bugzilla/rest/nonsense", headers=_bz(lab))
    assert (code, body["code"]) == (404, 32614)


# --- devices.json and the rest -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_devices_json(lab: Lab) -> None:
    assert await _get(lab, "/devices.json") == (
        200, {"panda-0008": {"foopy": "foopy01", "pdu": f"pdu1.{DOMAIN}", "pduid": ".AA4"}})


@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_json_404s(lab: Lab) -> None:
    assert await _get(lab, "/slavealloc/api/nothing") == (
        404, {"error": "not found", "msg": "no such resource in the lab"})
    code, _ = await _send(lab, "DELETE", "/slavealloc/api/slaves/101", {})
    assert code == 405
