"""
A small in-memory Redfish service for the client's unit tests.

It serves one BMC's service root, its Systems collection, its systems and,
when asked to, a session service, through L{treq.testing.StubTreq}, so no
socket is opened. Every request is recorded (method, path, headers, body) so
that tests can check what the client sent and that sessions were deleted.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

USER = "root"
PASSWORD = "s3cret-Pa55word"
TOKEN = "token-1234"


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def system(system_id: str, power: str = "On") -> dict[str, Any]:
    """A ComputerSystem resource shaped like sushy-emulator's."""
    return {
        "@odata.id": f"/redfish/v1/Systems/{system_id}",
        "Id": system_id,
        "PowerState": power,
        "Status": {"State": "Enabled", "Health": "OK", "HealthRollup": "Warning"},
        "Boot": {
            "BootSourceOverrideEnabled": "Disabled",
            "BootSourceOverrideTarget": "None",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd"],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": f"/redfish/v1/Systems/{system_id}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart"],
            }
        },
    }


@dataclass
class FakeRedfish(Resource):
    """
    One BMC. C{sessions}: offer a session service; C{hang}: leave every
    request matching unanswered; C{ignored}: reset kinds accepted that change
    nothing; C{applied_after}: how many reads of a system still show its old
    power state after a reset (a BMC that applies resets late).
    """

    systems: dict[str, dict[str, Any]] = field(default_factory=lambda: {"1": system("1")})
    sessions: bool = False
    session_status: int = 201
    hang: str | None = None
    requests: list[Seen] = field(default_factory=list)
    open_sessions: set[str] = field(default_factory=set)
    pending: list[Request] = field(default_factory=list)
    ignored: set[str] = field(default_factory=set)
    applied_after: int = 0
    # By system id: the power state a reset asked for, and how many reads still show the old one.
    _late: dict[str, list[Any]] = field(default_factory=dict)

    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> Any:
        seen = Seen(
            method=request.method.decode("ascii"),
            path=request.path.decode("utf-8").rstrip("/"),
            headers={
                k.decode().lower(): b", ".join(vs).decode() for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            body=request.content.read(),
        )
        self.requests.append(seen)
        if self.hang is not None and seen.path.endswith(self.hang):
            self.pending.append(request)
            return NOT_DONE_YET
        status, payload, headers = self.answer(seen)
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        if payload is None:
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(payload).encode("utf-8")

    def _authorized(self, seen: Seen) -> bool:
        if seen.headers.get("x-auth-token") in self.open_sessions:
            return True
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return seen.headers.get("authorization") == f"Basic {basic}"

    def answer(self, seen: Seen) -> tuple[int, Any, dict[str, str]]:
        path, method = seen.path, seen.method
        if path == "/redfish/v1" and method == "GET":
            root: dict[str, Any] = {"Systems": {"@odata.id": "/redfish/v1/Systems"}}
            if self.sessions:
                root["SessionService"] = {"@odata.id": "/redfish/v1/SessionService"}
                root["Links"] = {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
            return 200, root, {}
        if path == "/redfish/v1/SessionService/Sessions" and method == "POST" and self.sessions:
            if self.session_status != 201:
                return self.session_status, {"error": {"message": "sessions are off"}}, {}
            body = json.loads(seen.body)
            if (body.get("UserName"), body.get("Password")) != (USER, PASSWORD):
                return 401, {"error": {"message": "bad credentials"}}, {}
            self.open_sessions.add(TOKEN)
            location = "/redfish/v1/SessionService/Sessions/7"
            return 201, {"@odata.id": location}, {"X-Auth-Token": TOKEN, "Location": location}
        if not self._authorized(seen):
            return 401, {"error": {"message": "unauthorized"}}, {}
        if path == "/redfish/v1/SessionService/Sessions/7" and method == "DELETE":
            self.open_sessions.discard(TOKEN)
            return 204, None, {}
        if path == "/redfish/v1/Systems" and method == "GET":
            members = [{"@odata.id": f"/redfish/v1/Systems/{key}"} for key in self.systems]
            return 200, {"Members": members, "Members@odata.count": len(members)}, {}
        parts = path.split("/")
        if len(parts) >= 5 and parts[3] == "Systems" and parts[4] in self.systems:
            found = self.systems[parts[4]]
            if len(parts) == 5 and method == "GET":
                late = self._late.get(parts[4])
                if late is not None:
                    if late[1] == 0:
                        found["PowerState"] = late[0]
                        del self._late[parts[4]]
                    else:
                        late[1] -= 1
                return 200, found, {}
            if len(parts) == 5 and method == "PATCH":
                found["Boot"].update(json.loads(seen.body)["Boot"])
                return 204, None, {}
            if parts[5:] == ["Actions", "ComputerSystem.Reset"] and method == "POST":
                kind = json.loads(seen.body)["ResetType"]
                state = "Off" if kind == "ForceOff" else "On"
                if kind in self.ignored:
                    pass
                elif self.applied_after:
                    self._late[parts[4]] = [state, self.applied_after]
                else:
                    found["PowerState"] = state
                return 204, None, {}
        return 404, {"error": {"message": f"no {method} {path}"}}, {}
