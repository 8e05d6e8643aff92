"""
The lab's Bugzilla: the REST API SlaveAPI uses, with bugs kept in memory.

Machines with trouble have a problem-tracking bug whose alias is the
machine's short name. Reads (C{GET /bug/<id or alias>}, searches, comments)
and writes (file a bug, comment, change status, blocks and depends_on) need
the lab's API key in the C{X-BUGZILLA-API-KEY} header. Shapes and error codes
follow Bugzilla 5 and docs/remote-apis.rst.
"""

from __future__ import annotations

import datetime
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from slaveapi.lab.fleet import Fleet

_CLOSED = ("RESOLVED", "VERIFIED", "CLOSED")
_STATUSES = ("UNCONFIRMED", "NEW", "ASSIGNED", "REOPENED") + _CLOSED
_RESOLUTIONS = ("FIXED", "INVALID", "WONTFIX", "DUPLICATE", "WORKSFORME", "INCOMPLETE")
_FIRST_BUG = 1001

TRACKING_PRODUCT = "Release Engineering"
TRACKING_COMPONENT = "Buildduty"


class _BugzillaError(Exception):
    """An error Bugzilla reports as C{{"error": true, "code": ..., "message": ...}}."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class LabComment:
    """One comment; C{count} 0 is the bug's description."""

    id: int
    bug_id: int
    count: int
    text: str
    creator: str
    time: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bug_id": self.bug_id,
            "count": self.count,
            "text": self.text,
            "creator": self.creator,
            "time": self.time,
            "creation_time": self.time,
            "is_private": False,
            "tags": [],
        }


@dataclass
class LabBug:
    """One bug as the lab's Bugzilla holds it."""

    id: int
    summary: str
    product: str
    component: str
    creator: str
    creation_time: str
    alias: list[str] = field(default_factory=list)
    status: str = "NEW"
    resolution: str = ""
    blocks: list[int] = field(default_factory=list)
    depends_on: list[int] = field(default_factory=list)
    whiteboard: str = ""
    version: str = "unspecified"
    op_sys: str = "All"
    platform: str = "All"
    severity: str = "normal"
    last_change_time: str = ""
    comments: list[LabComment] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status not in _CLOSED

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alias": list(self.alias),
            "summary": self.summary,
            "status": self.status,
            "resolution": self.resolution,
            "is_open": self.is_open,
            "product": self.product,
            "component": self.component,
            "blocks": sorted(self.blocks),
            "depends_on": sorted(self.depends_on),
            "whiteboard": self.whiteboard,
            "version": self.version,
            "op_sys": self.op_sys,
            "platform": self.platform,
            "severity": self.severity,
            "creator": self.creator,
            "assigned_to": "nobody@mozilla.org",
            "creation_time": self.creation_time,
            "last_change_time": self.last_change_time or self.creation_time,
        }


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BugzillaFake:
    """
    The Bugzilla REST API under its own Klein app (mounted at C{/bugzilla/rest}).

    @param api_key: the only key accepted.
    @param user: the account the key belongs to (creator of new bugs and comments).
    """

    app = Klein()
    _log = Logger()

    def __init__(self, fleet: Fleet, api_key: str, user: str, clock: Callable[[], float]) -> None:
        self._api_key = api_key.encode("utf-8")
        self.user = user
        self._clock = clock
        self.bugs: dict[int, LabBug] = {}
        self._next_comment = 1
        created = _iso(clock() - 30 * 86400)
        for machine in fleet.machines:
            if machine.bug_alias:
                self.file(
                    summary=f"{machine.name} problem tracking",
                    product=TRACKING_PRODUCT,
                    component=TRACKING_COMPONENT,
                    alias=[machine.bug_alias],
                    description=f"Problem tracking bug for {machine.name}.",
                    creator="buildduty@example.test",
                    when=created,
                )

    # --- the bug store ---------------------------------------------------

    def file(
        self,
        summary: str,
        product: str,
        component: str,
        alias: list[str] | None = None,
        description: str = "",
        creator: str | None = None,
        when: str | None = None,
        **fields: Any,
    ) -> LabBug:
        """File a new bug; returns it."""
        for name in alias or ():
            if self.find(name) is not None:
                raise _BugzillaError(400, 103, f"The alias you chose, {name}, is already in use by another bug.")
        bug_id = max(self.bugs, default=_FIRST_BUG - 1) + 1
        now = when or _iso(self._clock())
        bug = LabBug(
            id=bug_id,
            summary=summary,
            product=product,
            component=component,
            creator=creator or self.user,
            creation_time=now,
            last_change_time=now,
            alias=list(alias or []),
            **fields,
        )
        self.bugs[bug_id] = bug
        self.comment(bug, description, creator=bug.creator, when=now)
        for other in bug.blocks:
            if other in self.bugs and bug_id not in self.bugs[other].depends_on:
                self.bugs[other].depends_on.append(bug_id)
        for other in bug.depends_on:
            if other in self.bugs and bug_id not in self.bugs[other].blocks:
                self.bugs[other].blocks.append(bug_id)
        return bug

    def comment(self, bug: LabBug, text: str, creator: str | None = None, when: str | None = None) -> LabComment:
        """Add a comment to C{bug}; returns it."""
        comment = LabComment(
            id=self._next_comment,
            bug_id=bug.id,
            count=len(bug.comments),
            text=text,
            creator=creator or self.user,
            time=when or _iso(self._clock()),
        )
        self._next_comment += 1
        bug.comments.append(comment)
        bug.last_change_time = comment.time
        return comment

    def find(self, ident: str | int) -> LabBug | None:
        """A bug by id or alias, or None."""
        text = str(ident)
        if text.isdigit():
            return self.bugs.get(int(text))
        return next((bug for bug in self.bugs.values() if text in bug.alias), None)

    def _get(self, ident: str) -> LabBug:
        bug = self.find(ident)
        if bug is None:
            raise _BugzillaError(404, 101, f"Bug #{ident} does not exist.")
        return bug

    # --- HTTP -------------------------------------------------------------

    def _answer(self, request: IRequest, handler: Callable[[], tuple[int, Any]]) -> bytes:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        try:
            self._authenticate(request)
            status, body = handler()
        except _BugzillaError as error:
            status, body = error.status, {"error": True, "code": error.code, "message": error.message}
        request.setResponseCode(status)
        return json.dumps(body).encode("utf-8")

    def _authenticate(self, request: IRequest) -> None:
        key = request.getHeader(b"X-BUGZILLA-API-KEY")
        if key is None:
            values = request.args.get(b"api_key") or request.args.get(b"Bugzilla_api_key")
            key = values[0] if values else None
        if key is None or not hmac.compare_digest(key, self._api_key):
            raise _BugzillaError(
                401, 306, "The API key you specified is invalid. Please check that you typed it correctly."
            )

    @staticmethod
    def _body(request: IRequest) -> dict[str, Any]:
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            raise _BugzillaError(400, 32000, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _BugzillaError(400, 32000, "The request body must be a JSON object.")
        return body

    @app.handle_errors(NotFound, MethodNotAllowed)
    def _no_such_resource(self, request: IRequest, failure: Any) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setResponseCode(404)
        body = {"error": True, "code": 32614, "message": f"A REST API resource was not found for '{method} {path}'."}
        return json.dumps(body).encode("utf-8")

    @app.handle_errors(Exception)
    def _broken(self, request: IRequest, failure: Any) -> bytes:
        self._log.failure("lab bugzilla: {uri} failed", failure, uri=request.uri)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setResponseCode(500)
        return json.dumps({"error": True, "code": 100500, "message": "the lab's Bugzilla failed"}).encode("utf-8")

    @app.route("/bug/<ident>", methods=["GET"])
    def get_bug(self, request: IRequest, ident: str) -> bytes:
        return self._answer(request, lambda: (200, {"bugs": [self._get(ident).to_json()]}))

    @app.route("/bug", methods=["GET"])
    def search(self, request: IRequest) -> bytes:
        def handler() -> tuple[int, Any]:
            args = {key.decode(): [v.decode() for v in values] for key, values in request.args.items()}
            found = [bug.to_json() for bug in sorted(self.bugs.values(), key=lambda b: b.id) if _matches(bug, args)]
            if "limit" in args and args["limit"][0].isdigit() and int(args["limit"][0]) > 0:
                found = found[: int(args["limit"][0])]
            return 200, {"bugs": found}

        return self._answer(request, handler)

    @app.route("/bug", methods=["POST"])
    def create(self, request: IRequest) -> bytes:
        def handler() -> tuple[int, Any]:
            body = self._body(request)
            for required, code in (("product", 106), ("component", 50), ("summary", 50)):
                if not isinstance(body.get(required), str) or not body[required].strip():
                    raise _BugzillaError(400, code, f"You must enter a value for the {required} field.")
            alias = body.get("alias") or []
            alias = [alias] if isinstance(alias, str) else list(alias)
            extra = {
                key: body[key]
                for key in ("whiteboard", "version", "op_sys", "platform", "severity", "status")
                if isinstance(body.get(key), str)
            }
            bug = self.file(
                summary=body["summary"],
                product=body["product"],
                component=body["component"],
                alias=alias,
                description=str(body.get("description", "")),
                blocks=_ids(body.get("blocks")),
                depends_on=_ids(body.get("depends_on")),
                **extra,
            )
            return 201, {"id": bug.id}

        return self._answer(request, handler)

    @app.route("/bug/<ident>/comment", methods=["GET"])
    def get_comments(self, request: IRequest, ident: str) -> bytes:
        def handler() -> tuple[int, Any]:
            bug = self._get(ident)
            comments = [comment.to_json() for comment in bug.comments]
            return 200, {"bugs": {str(bug.id): {"comments": comments}}, "comments": {}}

        return self._answer(request, handler)

    @app.route("/bug/<ident>/comment", methods=["POST"])
    def add_comment(self, request: IRequest, ident: str) -> bytes:
        def handler() -> tuple[int, Any]:
            bug = self._get(ident)
            body = self._body(request)
            text = body.get("comment")
            if not isinstance(text, str) or not text.strip():
                raise _BugzillaError(400, 54, "You must specify a comment.")
            return 201, {"id": self.comment(bug, text).id}

        return self._answer(request, handler)

    @app.route("/bug/<ident>", methods=["PUT"])
    def update(self, request: IRequest, ident: str) -> bytes:
        return self._answer(request, lambda: (200, {"bugs": [self._update(self._get(ident), self._body(request))]}))

    def _update(self, bug: LabBug, body: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, dict[str, str]] = {}

        def change(name: str, old: Any, new: Any) -> None:
            if old != new:
                changes[name] = {"removed": _show(old), "added": _show(new)}

        status = body.get("status", bug.status)
        resolution = body.get("resolution", bug.resolution if status in _CLOSED else "")
        if status not in _STATUSES:
            raise _BugzillaError(400, 60, f"There is no status named '{status}'.")
        if status in _CLOSED and resolution not in _RESOLUTIONS:
            raise _BugzillaError(400, 32000, f"You must specify a resolution when changing the status to {status}.")
        if status not in _CLOSED:
            resolution = ""
        change("status", bug.status, status)
        change("resolution", bug.resolution, resolution)
        bug.status, bug.resolution = status, resolution
        for key in ("summary", "whiteboard", "product", "component"):
            if isinstance(body.get(key), str):
                change(key, getattr(bug, key), body[key])
                setattr(bug, key, body[key])
        for key, reverse in (("blocks", "depends_on"), ("depends_on", "blocks")):
            if key in body:
                old = list(getattr(bug, key))
                new = _edit_list(old, body[key])
                change(key, sorted(old), sorted(new))
                setattr(bug, key, new)
                for other_id in set(old) ^ set(new):
                    other = self.bugs.get(other_id)
                    if other is None:
                        continue
                    links = getattr(other, reverse)
                    if other_id in new and bug.id not in links:
                        links.append(bug.id)
                    elif other_id not in new and bug.id in links:
                        links.remove(bug.id)
        comment = body.get("comment")
        if isinstance(comment, dict) and isinstance(comment.get("body"), str) and comment["body"].strip():
            self.comment(bug, comment["body"])
        bug.last_change_time = _iso(self._clock())
        return {"id": bug.id, "alias": list(bug.alias), "changes": changes, "last_change_time": bug.last_change_time}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _ids(value: Any) -> list[int]:
    """A list of bug ids from a JSON value (a number or a list of them)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    try:
        return [int(item) for item in items]
    except (TypeError, ValueError):
        raise _BugzillaError(400, 32000, f"Invalid bug id list: {value!r}") from None


def _edit_list(old: list[int], edit: Any) -> list[int]:
    """Apply C{{"add": [...], "remove": [...], "set": [...]}} (or a plain list, meaning set)."""
    if not isinstance(edit, dict):
        return _ids(edit)
    result = _ids(edit["set"]) if "set" in edit else list(old)
    result += [item for item in _ids(edit.get("add")) if item not in result]
    removed = set(_ids(edit.get("remove")))
    return [item for item in result if item not in removed]


def _matches(bug: LabBug, args: dict[str, list[str]]) -> bool:
    """Whether a bug fits a search (every given field must match one of its values)."""
    for key in ("product", "component", "status"):
        if key in args and getattr(bug, key) not in args[key]:
            return False
    if "resolution" in args:
        wanted = ["" if value in ("---", "") else value for value in args["resolution"]]
        if bug.resolution not in wanted:
            return False
    if "blocks" in args and not any(int(v) in bug.blocks for v in args["blocks"] if v.isdigit()):
        return False
    if "depends_on" in args and not any(int(v) in bug.depends_on for v in args["depends_on"] if v.isdigit()):
        return False
    if "alias" in args and not set(args["alias"]) & set(bug.alias):
        return False
    if "id" in args:
        ids = {int(v) for value in args["id"] for v in value.split(",") if v.strip().isdigit()}
        if bug.id not in ids:
            return False
    return "summary" not in args or all(value.lower() in bug.summary.lower() for value in args["summary"])
