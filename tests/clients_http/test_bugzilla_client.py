"""Tests for slaveapi.clients.bugzilla against a minimal Bugzilla 5 REST fake."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import pytest_twisted

from slaveapi.clients.bugzilla import Bug, BugzillaClient
from slaveapi.clients.http import RemoteError
from slaveapi.config import Secret

from .fakeapi import FakeJSONAPI, SeenRequest, make_json_client

API = "https://bugzilla.test/rest"
KEY = "bz-api-key-0123456789abcdef"

TRACKING = {
    "id": 1001, "alias": ["bld-linux64-ix-001"], "summary": "bld-linux64-ix-001 problem tracking",
    "status": "NEW", "resolution": "", "is_open": True, "product": "Release Engineering",
    "component": "Buildduty", "blocks": [], "depends_on": [1002],
}  # fmt: skip
REBOOT = {
    "id": 1002, "alias": None, "summary": "bld-linux64-ix-001 is unreachable",
    "status": "RESOLVED", "resolution": "FIXED", "is_open": False, "product": "Infrastructure & Operations",
    "component": "DCOps", "blocks": [1001], "depends_on": [],
}  # fmt: skip
OLD_STYLE = {
    "id": 1003, "alias": "t-w864-ix-001", "summary": "t-w864-ix-001 problem tracking",
    "status": "REOPENED", "resolution": "", "product": "Release Engineering",
    "component": "Buildduty", "blocks": [], "depends_on": [],
}  # fmt: skip


class FakeBugzilla(FakeJSONAPI):
    """GET/PUT /bug/<id or alias>, GET/POST /bug, POST /bug/<id>/comment."""

    def __init__(self, bugs: list[dict[str, Any]], key: str | None = KEY) -> None:
        super().__init__()
        self.bugs = copy.deepcopy(bugs)
        self.comments: dict[int, list[str]] = {}
        self.key = key

    def _find(self, ident: str) -> dict[str, Any] | None:
        for bug in self.bugs:
            aliases = bug["alias"] if isinstance(bug["alias"], list) else [bug["alias"]]
            if str(bug["id"]) == ident or ident in aliases:
                return bug
        return None

    def answer(self, seen: SeenRequest) -> Any:
        writing = seen.method != "GET"
        if writing and seen.headers.get("x-bugzilla-api-key") != self.key:
            return 401, {"error": True, "code": 306, "message": "The API key you specified is invalid."}
        parts = seen.path.strip("/").split("/")
        assert parts[:2] == ["rest", "bug"]
        if len(parts) == 2 and seen.method == "GET":
            found = [
                b
                for b in self.bugs
                if all(
                    str(b.get(k)) in v or (k == "blocks" and any(int(x) in b["blocks"] for x in v))
                    for k, v in seen.args.items()
                    if k != "resolution"
                )
                and ("resolution" not in seen.args or (b["resolution"] or "---") in seen.args["resolution"])
            ]
            return 200, {"bugs": found}
        if len(parts) == 2 and seen.method == "POST":
            new = {"id": 2000 + len(self.bugs), "alias": [], "resolution": "", "is_open": True, "status": "NEW"}
            new.update({"blocks": [], "depends_on": [], **seen.json()})
            self.bugs.append(new)
            return 200, {"id": new["id"]}
        if parts[2] == "bad-alias!":
            return 400, {"error": True, "code": 100, "message": "Invalid Bug Alias"}
        bug = self._find(parts[2])
        if bug is None:
            return 404, {"error": True, "code": 101, "message": f"Bug #{parts[2]} does not exist."}
        if len(parts) == 3 and seen.method == "GET":
            return 200, {"bugs": [bug]}
        if len(parts) == 3 and seen.method == "PUT":
            bug.update(seen.json())
            return 200, {"bugs": [{"id": bug["id"], "changes": {}}]}
        if parts[3:] == ["comment"] and seen.method == "POST":
            self.comments.setdefault(bug["id"], []).append(seen.json()["comment"])
            return 201, {"id": 555}
        raise AssertionError(f"unexpected {seen.method} {seen.path}")


def _client(fake: FakeBugzilla, key: str | None = KEY) -> BugzillaClient:
    json_client, _, _ = make_json_client("bugzilla", fake)
    return BugzillaClient(API, Secret(key) if key is not None else None, json_client)


TRACKING_BUG = Bug(
    id=1001,
    alias="bld-linux64-ix-001",
    summary="bld-linux64-ix-001 problem tracking",
    status="NEW",
    resolution="",
    is_open=True,
    product="Release Engineering",
    component="Buildduty",
    blocks=(),
    depends_on=(1002,),
)


@pytest_twisted.ensureDeferred
async def test_get_bug_by_alias_and_id_with_key_header() -> None:
    fake = FakeBugzilla([TRACKING, REBOOT])
    client = _client(fake)
    assert await client.get_bug("bld-linux64-ix-001") == TRACKING_BUG
    assert await client.get_bug(1001) == TRACKING_BUG
    assert [r.path for r in fake.requests] == ["/rest/bug/bld-linux64-ix-001", "/rest/bug/1001"]
    assert [r.headers["x-bugzilla-api-key"] for r in fake.requests] == [KEY, KEY]


@pytest_twisted.ensureDeferred
async def test_get_bug_closed_without_alias() -> None:
    client = _client(FakeBugzilla([TRACKING, REBOOT]))
    bug = await client.get_bug(1002)
    assert bug == Bug(
        id=1002,
        alias=None,
        summary="bld-linux64-ix-001 is unreachable",
        status="RESOLVED",
        resolution="FIXED",
        is_open=False,
        product="Infrastructure & Operations",
        component="DCOps",
        blocks=(1001,),
        depends_on=(),
    )


@pytest_twisted.ensureDeferred
async def test_old_style_string_alias_and_missing_is_open() -> None:
    client = _client(FakeBugzilla([OLD_STYLE]))
    bug = await client.get_bug("t-w864-ix-001")
    assert bug is not None
    assert (bug.id, bug.alias, bug.is_open, bug.status) == (1003, "t-w864-ix-001", True, "REOPENED")


@pytest_twisted.ensureDeferred
async def test_no_key_no_header() -> None:
    fake = FakeBugzilla([TRACKING])
    assert await _client(fake, key=None).get_bug(1001) == TRACKING_BUG
    assert "x-bugzilla-api-key" not in fake.requests[0].headers


@pytest_twisted.ensureDeferred
async def test_unknown_bug_is_none() -> None:
    client = _client(FakeBugzilla([TRACKING]))
    assert await client.get_bug("nobody") is None
    assert await client.get_bug(99999) is None
    assert await client.get_bug("bad-alias!") is None


@pytest_twisted.ensureDeferred
async def test_server_error_is_remote_error() -> None:
    fake = FakeBugzilla([TRACKING])
    fake.answer = lambda seen: (500, {"error": True, "code": 32000, "message": "db gone"})  # type: ignore[method-assign]  # scripts the fake
    with pytest.raises(RemoteError) as caught:
        await _client(fake).get_bug(1001)
    assert str(caught.value) == (
        "bugzilla: GET https://bugzilla.test/rest/bug/1001 failed: HTTP 500 Internal Server Error"
    )
    assert KEY not in str(caught.value) and KEY not in repr(vars(caught.value))


@pytest_twisted.ensureDeferred
async def test_error_reported_in_a_200_answer() -> None:
    fake = FakeBugzilla([TRACKING])
    fake.answer = lambda seen: (200, {"error": True, "code": 102, "message": "Access denied."})  # type: ignore[method-assign]  # scripts the fake
    with pytest.raises(RemoteError) as caught:
        await _client(fake).get_bug(1001)
    assert str(caught.value) == (
        "bugzilla: GET https://bugzilla.test/rest/bug/1001 failed: Bugzilla error 102: Access denied."
    )


@pytest_twisted.ensureDeferred
async def test_malformed_bug() -> None:
    fake = FakeBugzilla([{**TRACKING, "blocks": ["x"]}])
    with pytest.raises(RemoteError) as caught:
        await _client(fake).get_bug(1001)
    assert str(caught.value) == (
        "bugzilla: GET https://bugzilla.test/rest/bug/1001 failed: "
        "malformed answer: bug 1001: blocks is not a list of bug ids"
    )


@pytest_twisted.ensureDeferred
async def test_search() -> None:
    fake = FakeBugzilla([TRACKING, REBOOT, OLD_STYLE])
    client = _client(fake)
    found = await client.search(product="Infrastructure & Operations", component="DCOps", blocks=1001)
    assert [b.id for b in found] == [1002]
    assert fake.requests[0].args == {
        "product": ["Infrastructure & Operations"],
        "component": ["DCOps"],
        "blocks": ["1001"],
    }
    open_ones = await client.search(product="Release Engineering", resolution="---")
    assert [b.id for b in open_ones] == [1001, 1003]
    assert await client.search(product="Release Engineering", id=["1001", "1003"], resolution="FIXED") == []
    assert fake.requests[2].args["id"] == ["1001", "1003"]


@pytest_twisted.ensureDeferred
async def test_create_comment_update() -> None:
    fake = FakeBugzilla([TRACKING])
    client = _client(fake)
    new_id = await client.create_bug(
        product="Infrastructure & Operations",
        component="DCOps",
        summary="bld-linux64-ix-001 is unreachable",
        description="Please power-cycle it.",
        blocks=[1001],
    )
    assert new_id == 2001
    assert fake.requests[0].json() == {
        "product": "Infrastructure & Operations",
        "component": "DCOps",
        "summary": "bld-linux64-ix-001 is unreachable",
        "description": "Please power-cycle it.",
        "blocks": [1001],
    }
    await client.add_comment(2001, "Rebooted by SlaveAPI")
    assert fake.comments == {2001: ["Rebooted by SlaveAPI"]}
    await client.update_bug(2001, status="RESOLVED", resolution="FIXED")
    bug = await client.get_bug(2001)
    assert bug is not None and (bug.status, bug.resolution, bug.blocks) == ("RESOLVED", "FIXED", (1001,))
    writes = [r for r in fake.requests if r.method != "GET"]
    assert [(r.method, r.path) for r in writes] == [
        ("POST", "/rest/bug"),
        ("POST", "/rest/bug/2001/comment"),
        ("PUT", "/rest/bug/2001"),
    ]
    assert all(r.headers["x-bugzilla-api-key"] == KEY for r in writes)


@pytest_twisted.ensureDeferred
async def test_write_with_wrong_key_does_not_show_key() -> None:
    fake = FakeBugzilla([TRACKING], key="the-right-key-000000")
    with pytest.raises(RemoteError) as caught:
        await _client(fake).add_comment(1001, "hello")
    assert str(caught.value) == (
        "bugzilla: POST https://bugzilla.test/rest/bug/1001/comment failed: HTTP 401 Unauthorized"
    )
    for text in (str(caught.value), repr(caught.value), repr(vars(caught.value))):
        assert KEY not in text
