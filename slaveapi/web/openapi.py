"""
The OpenAPI 3.1 document served at C{GET /openapi.json}.

It is generated, never kept by hand: the paths are the Klein application's
own routes (its C{url_map}), each described by the table below, kept next to
the generator so that a new route and its description change together; the
action routes, their form fields and scopes come from each L{Action}'s
declaration (C{routes}, C{fields}, C{scope}). A route without a description
is left out of the document, and C{tests/core/test_openapi.py} fails for it.

The shapes are those of C{docs/api.rst} and C{docs/results.rst}; an
operation's C{x-action}, C{x-scope} and C{x-changes-machine} tell clients
(the CLI, the fleet page) what an action route does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from werkzeug.routing import Map

from slaveapi._yesno import NO, YES
from slaveapi.actions import Action, FormField
from slaveapi.web.params import MAX_WAITTIME

#: Methods Klein answers on its own for every route, not described.
IMPLICIT_METHODS: Final = frozenset({"HEAD", "OPTIONS"})

_CONVERTER: Final = re.compile(r"<(?:(?P<converter>[a-zA-Z_]+)(?:\([^)]*\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
_JSON: Final = "application/json"
_FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")
_STATES: Final = (0, 1, 2, 3)
_HTTP_METHODS: Final = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

Document = dict[str, Any]
PathItems = dict[str, dict[str, Any]]


def openapi_path(rule: str) -> str:
    """
    The OpenAPI path template of a Werkzeug rule: C{/slaves/<string:slave>}
    is C{/slaves/{slave}}; a C{path} converter (Klein's C{branch} routes
    among them) is C{{path}}.
    """

    def template(match: re.Match[str]) -> str:
        return "{path}" if match.group("converter") == "path" else "{" + match.group("name") + "}"

    return _CONVERTER.sub(template, rule)


def routes_of(url_map: Map) -> dict[str, frozenset[str]]:
    """Every route of C{url_map} as an OpenAPI path template -> its methods (implicit ones left out)."""
    found: dict[str, frozenset[str]] = {}
    for rule in url_map.iter_rules():
        path = openapi_path(rule.rule)
        found[path] = found.get(path, frozenset()) | (frozenset(rule.methods or ()) - IMPLICIT_METHODS)
    return found


def described_routes() -> Mapping[str, frozenset[str]]:
    """Every route the table describes (by OpenAPI path template) -> the methods it describes."""
    return MappingProxyType({path: route.methods for path, route in _ROUTES.items()})


def undescribed(url_map: Map) -> list[str]:
    """The routes of C{url_map} (C{METHOD path}) the table does not describe: each is missing from the document."""
    missing = []
    for path, methods in sorted(routes_of(url_map).items()):
        route = _ROUTES.get(path)
        missing += [f"{method} {path}" for method in sorted(methods) if route is None or method not in route.methods]
    return missing


def build_document(url_map: Map, actions: Iterable[Action], version: str) -> Document:
    """
    The OpenAPI 3.1 document of the routes in C{url_map} serving C{actions}.

    @param url_map: the Klein application's routes (C{SlaveAPIWeb.app.url_map}).
    @param actions: the actions served (the same action may come once per route).
    @param version: the service's version, for C{info}.
    """
    unique = list({action.name: action for action in actions}.values())
    paths: PathItems = {}
    for path, methods in sorted(routes_of(url_map).items()):
        route = _ROUTES.get(path)
        if route is not None:
            for expanded, item in route.build(unique).items():
                paths[expanded] = {key: value for key, value in item.items()
                                   if key not in _HTTP_METHODS or key.upper() in methods}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SlaveAPI",
            "version": version,
            "summary": "Look after a fleet of CI build and test machines",
            "description": (
                "Every request becomes an action that runs in the background and is polled by its "
                "request id. Request parameters are HTML form fields (query string, or a form body "
                "for a POST); every answer is JSON unless said otherwise, errors included."
            ),
            "license": {"name": "MPL-2.0", "identifier": "MPL-2.0"},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
        "components": _components(unique),
    }


@dataclass(frozen=True)
class _Route:
    """
    One route's description.

    @ivar methods: the methods it describes.
    @ivar build: makes its path items from the actions served (the action
        route is one path per action route).
    """

    methods: frozenset[str]
    build: Callable[[Sequence[Action]], PathItems]


# --- pieces -----------------------------------------------------------------


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": dict(schema)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """The error answers an operation documents, plus the default (every other error, same body)."""
    answers: dict[str, Any] = {str(status): _ref("responses", _ERROR_RESPONSES[status]) for status in statuses}
    answers["default"] = _ref("responses", "Error")
    return answers


_ERROR_RESPONSES: Final = MappingProxyType(
    {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        502: "BadGateway",
        503: "Unavailable",
    }
)


def _query(name: str, schema: Mapping[str, Any], description: str, *, repeatable: bool = False) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "description": description}
    if repeatable:
        parameter.update(schema={"type": "array", "items": dict(schema)}, style="form", explode=True)
    else:
        parameter["schema"] = dict(schema)
    return parameter


def _operation(
    tag: str, summary: str, description: str, responses: dict[str, Any], **more: Any
) -> dict[str, Any]:
    return {"tags": [tag], "summary": summary, "description": description, "responses": responses, **more}


_SLAVE: Final = MappingProxyType(_ref("parameters", "slave"))
_FILTERS: Final = (
    _query("purpose", {"type": "string"}, "only machines with this purpose, e.g. build, tests"),
    _query("environment", {"type": "string"}, "only machines in this environment, e.g. prod, dev"),
    _query("pool", {"type": "string"}, "only machines in any of these pools", repeatable=True),
    _query("enabled", _schema("YesNo"), "only enabled (yes) or disabled (no) machines"),
)


# --- the routes ---------------------------------------------------------------


def _results(actions: Sequence[Action]) -> PathItems:
    names = sorted({action.name for action in actions} | {route for action in actions for route in action.routes})
    get = _operation(
        "results",
        "Every result, or one page of results",
        "Without a page argument, every result nested by slave, action and request id (streamed). "
        "With any of slave, action, state, since or limit, one page in ascending request-id order, "
        "with the path of the next page in next.",
        {
            "200": _json({"anyOf": [_schema("NestedResults"), _schema("ResultsPage")]}, "the results"),
            **_errors(400, 503),
        },
        parameters=[
            _query("slave", {"type": "string"}, "one machine's results (any spelling of its name)"),
            _query("action", {"type": "string", "enum": names}, "an action's name, or one of its routes"),
            _query("state", {"type": "string"}, "0-3, or PENDING, RUNNING, SUCCESS, FAILURE in any case"),
            _query(
                "since",
                {"type": "string"},
                "a request id (results after it), or a time: @<unix seconds>, unix seconds with a "
                "decimal point, or ISO-8601 with a UTC offset (results requested at or after it)",
            ),
            _query("after", {"type": "integer", "minimum": 0}, "results with a greater request id"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "results per page"),
        ],
    )
    return {"/results": {"get": get}}


def _slaves(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "slaves",
        "The machines slavealloc knows, filtered",
        "slavealloc's list; a machine must match every filter given.",
        {"200": _json(_schema("SlaveList"), "the machines"), **_errors(400, 502)},
        parameters=list(_FILTERS),
    )
    return {"/slaves": {"get": get}}


def _slave(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "slaves",
        "What is known of one machine",
        "What DNS, slavealloc, devices.json, inventory, Bugzilla and buildapi know of it.",
        {"200": _json(_schema("Slave"), "the machine"), **_errors(400, 404, 502)},
    )
    return {"/slaves/{slave}": {"parameters": [dict(_SLAVE)], "get": get}}


def _health(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "health",
        "The fleet health loop's verdicts, counted",
        "Filtered as GET /slaves filters; enabled is yes unless given. 503 when the health loop is not running.",
        {"200": _json(_schema("FleetHealth"), "the verdicts"), **_errors(400, 502, 503)},
        parameters=list(_FILTERS),
    )
    return {"/health": {"get": get}}


def _slave_health(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "health",
        "One machine's verdict, with its evidence",
        "From the stored verdicts of the last sweeps; 503 when the health loop is not running.",
        {"200": _json(_schema("MachineHealth"), "the verdict"), **_errors(400, 404, 502, 503)},
    )
    return {"/slaves/{slave}/health": {"parameters": [dict(_SLAVE)], "get": get}}


def _history(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "slaves",
        "Every action on one machine, newest first",
        "One page of the machine's actions, with who asked, the form fields (secrets never), each "
        "step and the final text; next is the path of the following (older) page.",
        {"200": _json(_schema("History"), "one page of the history"), **_errors(400, 404, 502, 503)},
        parameters=[
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "entries per page"),
            _query("before", {"type": "integer", "minimum": 0}, "only requests with a smaller request id"),
        ],
    )
    return {"/slaves/{slave}/history": {"parameters": [dict(_SLAVE)], "get": get}}


def _action_paths(actions: Sequence[Action]) -> PathItems:
    items: PathItems = {}
    for action in actions:
        for route in action.routes:
            items[f"/slaves/{{slave}}/actions/{route}"] = _action_item(action, route)
    return items


def _action_item(action: Action, route: str) -> dict[str, Any]:
    alias = "" if route == action.name else f" Results are filed under {action.name}."
    first_line = (action.run.__doc__ or "").strip().split("\n")[0]
    properties = {"waittime": _schema("Waittime"), **{field.name: _field_schema(field) for field in action.fields}}
    body: dict[str, Any] = {"type": "object", "properties": properties}
    required = [field.name for field in action.fields if field.required]
    if required:
        body["required"] = required
    scope = action.scope or "every scope"
    post = _operation(
        "actions",
        f"Request {action.name}",
        f"{first_line} Queues {action.name} for the machine and waits up to waittime seconds for it: "
        f"200 when it finished, 202 while it goes on (poll with GET ?requestid=N). A token needs "
        f"the {scope} scope.{alias}",
        {
            "200": _json(_schema("RequestedResult"), "it finished (state 2 or 3) within waittime"),
            "202": _json(_schema("RequestedResult"), "it is pending or running (state 0 or 1)"),
            **_errors(400, 401, 403, 404, 502, 503),
        },
        operationId=f"post_{route}",
        parameters=[_query("waittime", _schema("Waittime"), "seconds to wait (the form field wins)")],
        requestBody={
            "required": False,
            "content": {media: {"schema": body} for media in _FORM_TYPES},
        },
        security=[{"bearer": []}, {}],
        **{
            "x-action": action.name,
            "x-scope": action.scope,
            "x-changes-machine": action.exclusive,
            "x-single-flight": action.single_flight,
        },
    )
    results = {
        "type": "object",
        "properties": {action.name: {"type": "object", "additionalProperties": _schema("Result")}},
        "required": [action.name],
        "additionalProperties": False,
    }
    get = _operation(
        "actions",
        f"Read {action.name} results",
        f"With requestid, that one result; without, every {action.name} result for the machine by request id.",
        {
            "200": _json({"anyOf": [_schema("Result"), results]}, "one result, or all of them"),
            **_errors(400, 404, 503),
        },
        operationId=f"get_{route}",
        parameters=[_query("requestid", {"type": "integer", "minimum": 0}, "one request's result")],
        **{"x-action": action.name},
    )
    return {"parameters": [dict(_SLAVE)], "get": get, "post": post}


def _field_schema(field: FormField) -> dict[str, Any]:
    """A form field's JSON Schema; a boolean is sent as one of the yes/no words."""
    boolean: dict[str, Any] = {"anyOf": [{"type": "boolean"}, _schema("YesNo")]}
    schema: dict[str, Any] = boolean if field.kind == "boolean" else {"type": field.kind}
    if field.description:
        schema["description"] = field.description
    if field.choices:
        convert: Callable[[str], Any] = {"integer": int, "number": float}.get(field.kind, str)
        schema["enum"] = [convert(choice) for choice in field.choices]
    if field.secret:
        schema["writeOnly"] = True
    return schema


def _events(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "events",
        "Result changes, live (Server-Sent Events)",
        "Each event is 'id: <id>', 'event: result' and 'data: <ResultEvent as JSON>'; a ': keepalive' "
        "comment every 15 s. Resumes after Last-Event-ID (or last_event_id) from a bounded buffer; a "
        "client that does not keep up is dropped.",
        {
            "200": {
                "description": "the event stream (it does not end)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_errors(400, 401),
        },
        parameters=[
            _query("slave", {"type": "string"}, "only these machines' results", repeatable=True),
            _query("action", {"type": "string"}, "only these actions' results", repeatable=True),
            _query("last_event_id", {"type": "integer", "minimum": 0}, "resume after this event id"),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "resume after this event id (what a browser's EventSource sends)",
            },
        ],
    )
    return {"/events": {"get": get}}


def _metrics(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "operations",
        "Prometheus metrics",
        "The Prometheus text exposition format: actions, escalation steps, remote calls, queues, health "
        "verdicts and the process's own metrics.",
        {
            "200": {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401),
        },
    )
    return {"/metrics": {"get": get}}


def _openapi(actions: Sequence[Action]) -> PathItems:
    get = _operation(
        "operations",
        "This document",
        "The OpenAPI 3.1 document of this service, generated from its routes and its actions.",
        {"200": _json({"type": "object"}, "the OpenAPI document"), **_errors(401)},
    )
    return {"/openapi.json": {"get": get}}


def _page(summary: str, path: str) -> Callable[[Sequence[Action]], PathItems]:
    def build(actions: Sequence[Action]) -> PathItems:
        get = _operation(
            "fleet page",
            summary,
            "Static files of the fleet page, served as they are (no build step, nothing fetched elsewhere).",
            {
                "200": {"description": "the file", "content": {"*/*": {"schema": {"type": "string"}}}},
                "304": {"description": "the browser's copy is current (If-None-Match)"},
                **_errors(404),
            },
        )
        item: dict[str, Any] = {"get": get}
        if "{path}" in path:
            item["parameters"] = [
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the file, under slaveapi/web/static/"}
            ]
        return {path: item}

    return build


_ROUTES: Final = MappingProxyType(
    {
        "/results": _Route(frozenset({"GET"}), _results),
        "/slaves": _Route(frozenset({"GET"}), _slaves),
        "/slaves/{slave}": _Route(frozenset({"GET"}), _slave),
        "/health": _Route(frozenset({"GET"}), _health),
        "/slaves/{slave}/health": _Route(frozenset({"GET"}), _slave_health),
        "/slaves/{slave}/history": _Route(frozenset({"GET"}), _history),
        "/slaves/{slave}/actions/{action}": _Route(frozenset({"GET", "POST"}), _action_paths),
        "/events": _Route(frozenset({"GET"}), _events),
        "/metrics": _Route(frozenset({"GET"}), _metrics),
        "/openapi.json": _Route(frozenset({"GET"}), _openapi),
        "/": _Route(frozenset({"GET"}), _page("The fleet page", "/")),
        "/static/": _Route(frozenset({"GET"}), _page("The fleet page's files", "/static/")),
        "/static/{path}": _Route(frozenset({"GET"}), _page("One of the fleet page's files", "/static/{path}")),
    }
)


# --- components -----------------------------------------------------------------


def _components(actions: Sequence[Action]) -> Document:
    timestamp = {"type": "number", "description": "Unix seconds; 0 while not reached"}
    result_fields = {
        "state": _schema("State"),
        "text": {"description": "empty while pending, progress lines while running, then the payload"},
        "request_timestamp": timestamp,
        "start_timestamp": timestamp,
        "finish_timestamp": timestamp,
    }
    result_required = list(result_fields)
    nullable_string = {"type": ["string", "null"]}
    nullable_time = {"type": ["number", "null"]}
    verdict = {"type": "string", "enum": ["ok", "degraded", "down", "unknown"]}
    schemas: Document = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "description": "a short machine-readable kind, e.g. bad_request"},
                "msg": {"type": "string", "description": "the field at fault and what was expected"},
            },
            "required": ["error", "msg"],
        },
        "State": {
            "type": "integer",
            "enum": list(_STATES),
            "description": "0 PENDING, 1 RUNNING, 2 SUCCESS, 3 FAILURE",
        },
        "ActionName": {
            "type": "string",
            "enum": sorted(action.name for action in actions),
            "description": "the name an action's results are filed under",
        },
        "ActionRoute": {
            "type": "string",
            "enum": sorted(route for action in actions for route in action.routes),
            "description": "the last segment of an action's route (/slaves/{slave}/actions/{route})",
        },
        "YesNo": {"type": "string", "enum": [*YES, *NO], "description": "yes or no, in any case"},
        "Waittime": {
            "type": "number",
            "minimum": 0,
            "description": f"seconds to wait for the action before answering; 0 by default, at most "
            f"{MAX_WAITTIME:g} taken",
        },
        "Result": {"type": "object", "properties": result_fields, "required": result_required},
        "RequestedResult": {
            "type": "object",
            "properties": {**result_fields, "requestid": {"type": "integer", "minimum": 0}},
            "required": [*result_required, "requestid"],
        },
        "ResultEntry": {
            "type": "object",
            "properties": {
                **result_fields,
                "requestid": {"type": "integer", "minimum": 0},
                "slave": {"type": "string"},
                "action": _schema("ActionName"),
            },
            "required": [*result_required, "requestid", "slave", "action"],
        },
        "ResultsPage": {
            "type": "object",
            "properties": {
                "results": {"type": "array", "items": _schema("ResultEntry")},
                "next": {**nullable_string, "description": "the path of the next page; null when no more match"},
            },
            "required": ["results", "next"],
        },
        "NestedResults": {
            "type": "object",
            "description": "slave -> action -> request id -> result",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": _schema("Result")},
            },
        },
        "SlaveRecord": {
            "type": "object",
            "description": "slavealloc's fields for one machine",
            "properties": {
                "name": {"type": "string"},
                "purpose": nullable_string,
                "environment": nullable_string,
                "pool": nullable_string,
                "basedir": nullable_string,
                "enabled": {"type": ["boolean", "integer", "null"]},
            },
            "required": ["name"],
        },
        "SlaveList": {
            "type": "object",
            "properties": {"slaves": {"type": "array", "items": _schema("SlaveRecord")}},
            "required": ["slaves"],
        },
        "Slave": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "fqdn": nullable_string,
                "domain": nullable_string,
                "ip": nullable_string,
                "colo": nullable_string,
                "ipmi": {"type": ["object", "null"]},
                "pdu": {"type": ["object", "null"]},
                "enabled": {"type": ["boolean", "null"]},
                "basedir": nullable_string,
                "notes": nullable_string,
                "bug": {"type": ["integer", "null"]},
                "recent_jobs": {"type": ["array", "null"], "items": {"type": "object"}},
                "buildbotslave": {"type": ["object", "null"]},
                "mozpool_server": nullable_string,
                "power_channels": {"type": "array", "items": {"type": "string"}},
                "master": {"type": ["object", "null"]},
                "errors": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["name", "fqdn", "ip", "enabled", "recent_jobs", "power_channels", "master"],
        },
        "FleetHealth": {
            "type": "object",
            "properties": {
                "checked_at": nullable_time,
                "machines": {"type": "integer", "minimum": 0},
                "verdicts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                "down": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["checked_at", "machines", "verdicts", "down"],
        },
        "MachineHealth": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "verdict": verdict,
                "pool": nullable_string,
                "since": nullable_time,
                "checked_at": nullable_time,
                "evidence": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "check": {"type": "string"},
                            "outcome": {"type": "string"},
                            "detail": {"type": "string"},
                        },
                        "required": ["check", "outcome", "detail"],
                    },
                },
            },
            "required": ["name", "verdict", "since", "checked_at", "evidence"],
        },
        "Step": {
            "type": "object",
            "properties": {
                "heading": {"type": "string"},
                "started": {"type": "number"},
                "finished": nullable_time,
                "outcome": nullable_string,
            },
            "required": ["heading", "started", "finished", "outcome"],
        },
        "HistoryEntry": {
            "type": "object",
            "properties": {
                **result_fields,
                "requestid": {"type": "integer", "minimum": 0},
                "action": _schema("ActionName"),
                "client": {**nullable_string, "description": "who asked; null when authentication is off"},
                "fields": {
                    "type": "object",
                    "description": "the action's own form fields as sent (secret ones never)",
                    "additionalProperties": {"type": "string"},
                },
                "steps": {"type": "array", "items": _schema("Step")},
            },
            "required": ["requestid", "action", "state", "client", "fields", "steps", "text"],
        },
        "History": {
            "type": "object",
            "properties": {
                "slave": {"type": "string"},
                "history": {"type": "array", "items": _schema("HistoryEntry")},
                "next": {**nullable_string, "description": "the path of the next (older) page; null at the end"},
            },
            "required": ["slave", "history", "next"],
        },
        "ResultEvent": {
            "type": "object",
            "description": "the data of one /events event",
            "properties": {
                **result_fields,
                "requestid": {"type": "integer", "minimum": 0},
                "slave": {"type": "string"},
                "action": _schema("ActionName"),
                "kind": {"type": "string", "enum": ["requested", "started", "progress", "finished"]},
            },
            "required": [*result_required, "requestid", "slave", "action", "kind"],
        },
    }
    error = _schema("Error")
    retry_after = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    responses = {
        "Error": _json(error, "an error: what was wrong and what was expected"),
        "BadRequest": _json(error, "a parameter or form field that cannot be taken; msg names it"),
        "Unauthorized": {
            **_json(error, "no valid bearer token where one is needed"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        "Forbidden": _json(error, "the token lacks the scope needed, or the request came from another web origin"),
        "NotFound": _json(error, "no such machine, action, request or endpoint"),
        "BadGateway": _json(error, "slavealloc (or devices.json) could not be asked; msg says which call failed"),
        "Unavailable": {
            **_json(error, "the queue is full, the store cannot be used, or the health loop is not running"),
            "headers": retry_after,
        },
    }
    return {
        "schemas": schemas,
        "responses": responses,
        "parameters": {
            "slave": {
                "name": "slave",
                "in": "path",
                "required": True,
                "description": "a host name: the short name or the FQDN in its configured domain",
                "schema": {"type": "string", "maxLength": 253},
            }
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API token from the credentials file; needed for every POST when tokens "
                "are configured, and for reads when [auth] protect_reads is on",
            }
        },
    }
