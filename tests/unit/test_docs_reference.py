"""
The documentation's own extension (C{docs/_ext/slaveapi_docs.py}): the API
reference it generates covers every operation and form field of the OpenAPI
document, and the fleet page's screenshot is shown only when it exists, so
that C{make docs} passes on a fresh clone. C{make test} builds the whole
documentation as well; these tests say which part broke.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import ModuleType

import pytest
from sphinx.application import Sphinx
from sphinx.util.docutils import docutils_namespace

_EXTENSION = Path(__file__).parents[2] / "docs" / "_ext" / "slaveapi_docs.py"


@pytest.fixture(scope="module")
def extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slaveapi_docs", _EXTENSION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """Each operation title of the reST (C{``METHOD /path``}) -> the lines under it."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line, underline in zip(lines, [*lines[1:], ""], strict=True):
        if underline and set(underline) == {"~"} and len(underline) == len(line):
            current = sections.setdefault(line.strip("`"), [])
        current.append(line)
    return sections


def test_every_operation_and_form_field(extension: ModuleType) -> None:
    document = extension.openapi_document()
    sections = _sections(extension.render_reference(document))
    operations = {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert "POST /slaves/{slave}/actions/reboot" in operations
    assert set(sections) >= set(operations)
    for title, operation in operations.items():
        text = "\n".join(sections[title])
        for media in operation.get("requestBody", {}).get("content", {}).values():
            for field in media["schema"]["properties"]:
                assert f"* ``{field}`` (" in text, (title, field)
        for status in operation["responses"]:
            assert f"* ``{status}``" in text, (title, status)


def test_markup_in_descriptions_is_escaped(extension: ModuleType) -> None:
    document = {
        "paths": {"/x": {"get": {"tags": ["t"], "description": "a *b* `c` d_ |e|", "responses": {}}}},
    }
    assert r"a \*b\* \`c\` d\_ \|e\|" in extension.render_reference(document)


def _build(tmp_path: Path, with_image: bool) -> str:
    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(_EXTENSION.parent)!r})\nextensions = ['slaveapi_docs']\n"
    )
    (source / "index.rst").write_text(
        "Page\n====\n\n.. optional-image:: shot.png\n   :alt: the page\n\n   .. note:: No screenshot yet.\n"
    )
    if with_image:
        # Only the signature: the HTML builder copies the file without decoding it.
        (source / "shot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    warnings = io.StringIO()
    # Sphinx registers docutils nodes and directives process-wide; the namespace undoes that afterwards.
    with docutils_namespace():
        app = Sphinx(
            str(source), str(source), str(tmp_path / "out"), str(tmp_path / "doctrees"), "html",
            status=None, warning=warnings, warningiserror=True,
        )
        app.build()
    assert warnings.getvalue() == ""
    return (tmp_path / "out" / "index.html").read_text()


def test_optional_image_missing(tmp_path: Path) -> None:
    page = _build(tmp_path, with_image=False)
    assert "No screenshot yet." in page
    assert "<img" not in page


def test_optional_image_present(tmp_path: Path) -> None:
    page = _build(tmp_path, with_image=True)
    assert 'alt="the page"' in page
    assert "No screenshot yet." not in page
