"""
Sphinx directives that build parts of SlaveAPI's documentation from the code.

C{.. openapi-reference::} renders the API reference from the OpenAPI document,
built exactly as C{GET /openapi.json} builds it (L{slaveapi.web.openapi}, from
the Klein application's routes and the actions' declarations), so that the
reference can never drift from the service: a route or a form field added in
the code shows up in the next C{make docs}. Nothing is fetched and nothing
runs; the same code gives the same pages.

C{.. optional-image::} shows an image made by the tests (the fleet page's
screenshot, C{build/fleet-page.png}) when it exists, and the directive's
content (a note saying how to make it) otherwise, so that the documentation
builds with warnings as errors on a fresh clone too.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

__all__ = ["openapi_document", "render_reference", "setup"]

_JSON = "application/json"
_METHODS = ("get", "put", "post", "patch", "delete")
_SPECIAL = re.compile(r"([\\`*_|])")
#: The order of the reference's sections, by operation tag; a tag not listed comes after, by name.
_TAG_ORDER = ("slaves", "actions", "results", "health", "events", "operations", "fleet page")
#: Schema keywords rendered as a constraint after the type, in this order.
_CONSTRAINTS = (
    ("minimum", "at least {}"),
    ("maximum", "at most {}"),
    ("maxLength", "at most {} characters"),
    ("default", "default {}"),
)


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI document, as C{GET /openapi.json} answers it."""
    from slaveapi import __version__
    from slaveapi.actions.registry import ACTIONS
    from slaveapi.web.openapi import build_document
    from slaveapi.web.routes import SlaveAPIWeb

    return build_document(SlaveAPIWeb.app.url_map, ACTIONS.values(), __version__)


def render_reference(document: Mapping[str, Any]) -> list[str]:
    """
    The reST of an OpenAPI document: one section (C{-}) per tag with one
    subsection (C{~}) per operation, then its schemas, error answers and
    authentication. Labels are C{openapi-schema-<name>} and
    C{openapi-response-<name>}, for C{:ref:} from other pages.
    """
    return list(_Renderer(document).lines())


class _Renderer:
    """Turns one OpenAPI document into lines of reST."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = document
        self._components: Mapping[str, Any] = document.get("components", {})

    def lines(self) -> Iterator[str]:
        by_tag: dict[str, list[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]] = {}
        for path, item in self._document.get("paths", {}).items():
            for method in _METHODS:
                if method in item:
                    operation = item[method]
                    tag = (operation.get("tags") or ["other"])[0]
                    by_tag.setdefault(tag, []).append((method, path, item, operation))
        for tag in sorted(by_tag, key=_tag_rank):
            operations = by_tag[tag]
            yield from _title(tag[:1].upper() + tag[1:], "-")
            for method, path, item, operation in operations:
                yield from self._operation(method, path, item, operation)
        yield from self._schemas()
        yield from self._responses()
        yield from self._security()

    def _operation(
        self, method: str, path: str, item: Mapping[str, Any], operation: Mapping[str, Any]
    ) -> Iterator[str]:
        yield from _title(f"``{method.upper()} {path}``", "~")
        if operation.get("summary"):
            yield f"**{_text(operation['summary'])}.**"
            yield ""
        if operation.get("description"):
            yield _text(operation["description"])
            yield ""
        if "x-action" in operation:
            facts = [f"action ``{operation['x-action']}``"]
            if operation.get("x-scope"):
                facts.append(f"token scope ``{operation['x-scope']}``")
            if operation.get("x-changes-machine"):
                facts.append("changes the machine (one such action at a time per machine)")
            if operation.get("x-single-flight"):
                facts.append("a request while one is pending or running answers that one")
            yield _text_joined(facts)
            yield ""
        parameters = [self._resolve(p) for p in [*item.get("parameters", ()), *operation.get("parameters", ())]]
        if parameters:
            yield from _rubric("Parameters")
            for parameter in parameters:
                where = "required" if parameter.get("required") else "optional"
                yield from _bullet(
                    f"``{parameter['name']}`` ({parameter['in']}, {where}): {self._type(parameter.get('schema', {}))}",
                    parameter.get("description", ""),
                )
            yield ""
        if "requestBody" in operation:
            yield from self._body(operation["requestBody"])
        yield from _rubric("Answers")
        for status, answer in operation.get("responses", {}).items():
            yield from self._answer(status, answer)
        yield ""

    def _body(self, body: Mapping[str, Any]) -> Iterator[str]:
        content: Mapping[str, Any] = body.get("content", {})
        media = " or ".join(f"``{kind}``" for kind in content)
        yield from _rubric("Form fields")
        yield f"Sent as {media}."
        yield ""
        schemas = [self._resolve(entry.get("schema", {})) for entry in content.values()]
        schema = schemas[0] if schemas else {}
        required = set(schema.get("required", ()))
        for name, field in schema.get("properties", {}).items():
            resolved = self._resolve(field)
            where = "required" if name in required else "optional"
            yield from _bullet(f"``{name}`` ({where}): {self._type(field)}", resolved.get("description", ""))
        yield ""

    def _answer(self, status: str, answer: Mapping[str, Any]) -> Iterator[str]:
        ref = answer.get("$ref", "")
        name = ref.rsplit("/", 1)[-1]
        if ref.startswith("#/components/responses/"):
            resolved = self._components["responses"][name]
            yield from _bullet(f"``{status}``: :ref:`{name} <openapi-response-{name.lower()}>`",
                               resolved.get("description", ""))
            return
        yield from _bullet(f"``{status}``{self._content(answer)}", answer.get("description", ""))

    def _content(self, answer: Mapping[str, Any]) -> str:
        content: Mapping[str, Any] = answer.get("content", {})
        kinds = []
        for kind, entry in content.items():
            schema = entry.get("schema", {})
            if kind == _JSON:
                kinds.append(f"JSON, {self._type(schema)}")
            else:
                kinds.append(f"``{kind}``")
        return ": " + "; ".join(kinds) if kinds else ""

    def _schemas(self) -> Iterator[str]:
        schemas: Mapping[str, Any] = self._components.get("schemas", {})
        if not schemas:
            return
        yield from _title("Schemas", "-")
        yield "The shapes of the JSON bodies above."
        yield ""
        for name, schema in schemas.items():
            yield f".. _openapi-schema-{name.lower()}:"
            yield ""
            yield from _title(f"``{name}``", "~")
            yield _described(_capital(self._type(schema, link=False)), schema.get("description", ""))
            yield ""
            required = set(schema.get("required", ()))
            properties: Mapping[str, Any] = schema.get("properties", {})
            for field, field_schema in properties.items():
                where = "always" if field in required else "optional"
                yield from _bullet(
                    f"``{field}`` ({where}): {self._type(field_schema)}",
                    self._resolve(field_schema).get("description", "") if "$ref" not in field_schema else "",
                )
            if properties:
                yield ""

    def _responses(self) -> Iterator[str]:
        responses: Mapping[str, Any] = self._components.get("responses", {})
        if not responses:
            return
        yield from _title("Error answers", "-")
        yield "Every error is a JSON body; its ``msg`` names what was wrong and what was expected."
        yield ""
        for name, answer in responses.items():
            yield f".. _openapi-response-{name.lower()}:"
            yield ""
            yield from _title(f"``{name}``", "~")
            body = self._content(answer).removeprefix(": ") or "no body"
            yield _described(_capital(body), answer.get("description", ""))
            yield ""
            for header, spec in answer.get("headers", {}).items():
                yield from _bullet(f"header ``{header}``: {self._type(spec.get('schema', {}))}",
                                   spec.get("description", ""))
                yield ""

    def _security(self) -> Iterator[str]:
        schemes: Mapping[str, Any] = self._components.get("securitySchemes", {})
        if not schemes:
            return
        yield from _title("Authentication", "-")
        for name, scheme in schemes.items():
            http = scheme.get("type") == "http"
            how = f"HTTP ``{scheme.get('scheme', '')}``" if http else f"``{scheme.get('type')}``"
            yield from _bullet(f"``{name}``: {how}", scheme.get("description", ""))
        yield ""

    def _resolve(self, value: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = value.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/components/"):
            return value
        kind, name = ref[len("#/components/"):].split("/", 1)
        resolved: Mapping[str, Any] = self._components[kind][name]
        return resolved

    def _type(self, schema: Mapping[str, Any], link: bool = True) -> str:
        """A schema in a few words; named schemas are links to their section when C{link}."""
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            return f":ref:`{name} <openapi-schema-{name.lower()}>`" if link else name
        if "anyOf" in schema:
            return " or ".join(self._type(option) for option in schema["anyOf"])
        kind = schema.get("type")
        if isinstance(kind, list):
            words = " or ".join(kind)
        elif kind == "array":
            words = f"array of {self._type(schema.get('items', {}))}"
        elif kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
            words = f"object of {self._type(schema['additionalProperties'])} by name"
        elif kind is None:
            words = "any JSON value"
        else:
            words = str(kind)
        if "enum" in schema:
            words += ", one of " + ", ".join(f"``{_value(choice)}``" for choice in schema["enum"])
        for keyword, template in _CONSTRAINTS:
            if keyword in schema:
                words += ", " + template.format(_value(schema[keyword]))
        if schema.get("writeOnly"):
            words += ", secret (never stored)"
        return words


def _title(text: str, underline: str) -> Iterator[str]:
    yield text
    yield underline * len(text)
    yield ""


def _rubric(text: str) -> Iterator[str]:
    yield f".. rubric:: {text}"
    yield ""


def _bullet(head: str, description: str) -> Iterator[str]:
    yield f"* {_described(head, description)}"


def _described(head: str, description: str) -> str:
    return head + (f" — {_text(description)}" if description else "")


def _tag_rank(tag: str) -> tuple[int, str]:
    return (_TAG_ORDER.index(tag) if tag in _TAG_ORDER else len(_TAG_ORDER), tag)


def _text(text: str) -> str:
    """Free text as reST: markup characters escaped, one line."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _text_joined(facts: Iterable[str]) -> str:
    joined = "; ".join(facts)
    return _capital(joined) + "."


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _loaded_sources() -> list[str]:
    """The source files of the SlaveAPI modules loaded, on which the generated reference depends."""
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "slaveapi" or name.startswith("slaveapi.")) and path:
            files.add(os.path.abspath(path))
    return sorted(files)


class OpenAPIReference(SphinxDirective):
    """C{.. openapi-reference::}: the API reference, generated from the OpenAPI document."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        document = openapi_document()
        for source in _loaded_sources():
            self.env.note_dependency(source)
        return self.parse_text_to_nodes("\n".join(render_reference(document)), allow_section_headings=True)


class OptionalImage(SphinxDirective):
    """
    C{.. optional-image:: path}: the image at C{path} (relative to the page,
    or to the source folder when it starts with C{/}) when it exists,
    otherwise the directive's content.
    """

    required_arguments = 1
    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {
        "alt": directives.unchanged,
        "width": directives.length_or_percentage_or_unitless,
    }

    def run(self) -> list[nodes.Node]:
        uri = directives.uri(self.arguments[0])
        _, path = self.env.relfn2path(uri, self.env.docname)
        # Read again on every build while missing, and whenever the image changes.
        self.env.note_dependency(path)
        if os.path.isfile(path):
            image = nodes.image(self.block_text, uri=uri, alt=self.options.get("alt", ""))
            if "width" in self.options:
                image["width"] = self.options["width"]
            return [image]
        return self.parse_content_to_nodes()


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives."""
    app.add_directive("openapi-reference", OpenAPIReference)
    app.add_directive("optional-image", OptionalImage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
