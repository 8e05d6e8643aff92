"""
The OpenAPI document (L{slaveapi.web.openapi}): it validates, it describes
every route the application has (so a route added without a description
fails here), and each action's declared form fields are exactly those its
parser reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from openapi_spec_validator import validate
from treq.testing import StubTreq

from slaveapi import __version__
from slaveapi.actions import Action, ArgumentError, FormField, MissingArguments
from slaveapi.actions.registry import ACTIONS
from slaveapi.processor import ActionProcessor
from slaveapi.web.openapi import build_document, described_routes, openapi_path, routes_of, undescribed
from slaveapi.web.routes import SlaveAPIWeb

from .conftest import make_config


def _document() -> dict[str, Any]:
    return build_document(SlaveAPIWeb.app.url_map, ACTIONS.values(), __version__)


class _ReadsRecorded(Mapping[str, str]):
    """An empty form that notes every field name asked of it."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.asked.append(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_the_document_validates() -> None:
    validate(_document())


def test_every_route_of_the_application_is_described() -> None:
    assert undescribed(SlaveAPIWeb.app.url_map) == []
    paths = _document()["paths"]
    for path, methods in routes_of(SlaveAPIWeb.app.url_map).items():
        if path == "/slaves/{slave}/actions/{action}":
            continue
        assert {method.lower() for method in methods} <= set(paths[path]), path


def test_a_route_added_without_a_description_is_found() -> None:
    app = Klein()

    @app.route("/slaves/<string:slave>/frobnicate", methods=["POST"])
    def frobnicate(request: Any, slave: str) -> bytes:
        return b""

    @app.route("/results", methods=["GET", "DELETE"])
    def results(request: Any) -> bytes:
        return b""

    assert undescribed(app.url_map) == ["DELETE /results", "POST /slaves/{slave}/frobnicate"]
    assert "/slaves/{slave}/frobnicate" not in build_document(app.url_map, ACTIONS.values(), "1")["paths"]


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ("/slaves/<string:slave>/health", "/slaves/{slave}/health"),
        ("/static/<path:path>", "/static/{path}"),
        ("/static/<path:__rest__>", "/static/{path}"),
        ("/a/<int(min=1):n>", "/a/{n}"),
    ],
)
def test_werkzeug_rules_become_path_templates(rule: str, path: str) -> None:
    assert openapi_path(rule) == path


def test_the_descriptions_name_only_methods_klein_can_route() -> None:
    assert all(methods and methods <= {"GET", "POST"} for methods in described_routes().values())


def test_every_action_route_is_a_path_with_its_form_fields() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    assert schemas["ActionName"]["enum"] == sorted(ACTIONS)
    routes = sorted(route for action in ACTIONS.values() for route in action.routes)
    assert schemas["ActionRoute"]["enum"] == routes
    for action in ACTIONS.values():
        for route in action.routes:
            item = document["paths"][f"/slaves/{{slave}}/actions/{route}"]
            post = item["post"]
            assert (post["x-action"], post["x-scope"], post["x-changes-machine"]) == (
                action.name, action.scope, action.exclusive
            )
            body = post["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
            assert set(body["properties"]) == {"waittime", *(field.name for field in action.fields)}
            assert body.get("required", []) == [field.name for field in action.fields if field.required]
            assert item["get"]["x-action"] == action.name


def test_field_kinds_and_choices_become_schemas() -> None:
    body = _document()["paths"]["/slaves/{slave}/actions/aws_create_instance"]["post"]["requestBody"]
    properties = body["content"]["multipart/form-data"]["schema"]["properties"]
    assert properties["arch"]["type"] == "integer" and properties["arch"]["enum"] == [32, 64]
    assert properties["instance_type"]["enum"] == ["build", "test"]
    force = _document()["paths"]["/slaves/{slave}/actions/disable"]["post"]["requestBody"]
    assert force["content"]["multipart/form-data"]["schema"]["properties"]["force"]["anyOf"][0] == {"type": "boolean"}


@pytest.mark.parametrize("action", list(ACTIONS.values()), ids=list(ACTIONS))
def test_declared_fields_are_the_fields_the_parser_reads(action: Action) -> None:
    form = _ReadsRecorded()
    required = [field.name for field in action.fields if field.required]
    try:
        action.arguments(form)
    except MissingArguments as missing:
        assert list(missing.missing) == required
    except ArgumentError as error:
        assert [error.field] == required
    else:
        assert required == []
    assert sorted(set(form.asked)) == sorted(field.name for field in action.fields)
    assert len({field.name for field in action.fields}) == len(action.fields)


def test_secret_fields_are_write_only() -> None:
    secret = Action(
        name="rotate", run=lambda run: None, arguments=lambda form: {}, fields=(FormField("key", secret=True),)
    )
    document = build_document(SlaveAPIWeb.app.url_map, [secret], "1")
    body = document["paths"]["/slaves/{slave}/actions/rotate"]["post"]["requestBody"]
    assert body["content"]["application/x-www-form-urlencoded"]["schema"]["properties"]["key"]["writeOnly"] is True
    validate(document)


@pytest_twisted.ensureDeferred
async def test_the_route_serves_the_document_and_reads_need_a_token_when_protected(
    processor: ActionProcessor, store: Any, context_box: SimpleNamespace
) -> None:
    app = SlaveAPIWeb(processor, store, lambda: context_box.context)
    # StubTreq builds its methods at run time.
    stub: Any = StubTreq(app.resource())
    response = await stub.get("http://127.0.0.1/openapi.json")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    served = json.loads(await stub.content(response))
    assert served == json.loads(json.dumps(_document()))

    context_box.context = SimpleNamespace(
        config=make_config(tokens={"dash": "dashboard-token-0123456789abcdef"}, protect_reads=True)
    )
    refused = await stub.get("http://127.0.0.1/openapi.json")
    assert refused.code == 401
    allowed = await stub.get(
        "http://127.0.0.1/openapi.json", headers={b"Authorization": [b"Bearer dashboard-token-0123456789abcdef"]}
    )
    assert allowed.code == 200
