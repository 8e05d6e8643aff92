"""
The fleet page's files as served by L{slaveapi.web.page}, in memory: what is
served, with which headers, and that nothing outside C{static/} is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.python.filepath import FilePath

from slaveapi.web.errors import HTTPProblem
from slaveapi.web.page import CONTENT_TYPES, STATIC_DIR, find_static
from slaveapi.web.routes import SlaveAPIWeb


def stub() -> Any:
    """An in-memory client of the app (C{Any}: StubTreq builds its methods at run time)."""
    # The page's routes ask nothing of the processor, the store or the context.
    unused = cast(Any, None)
    return StubTreq(SlaveAPIWeb(unused, unused, lambda: unused).resource())


@pytest_twisted.ensureDeferred
async def test_the_page_is_served_at_the_root_with_its_headers() -> None:
    client = stub()
    response = await client.get("http://127.0.0.1/")
    body = await response.content()
    assert response.code == 200
    assert body.startswith(b"<!doctype html>")
    headers = response.headers
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert headers.getRawHeaders(b"cache-control") == [b"no-cache"]
    assert headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
    assert b"connect-src 'self'" in headers.getRawHeaders(b"content-security-policy")[0]
    etag = headers.getRawHeaders(b"etag")[0]

    again = await client.get("http://127.0.0.1/", headers={b"If-None-Match": etag})
    assert (again.code, await again.content()) == (304, b"")


@pytest_twisted.ensureDeferred
async def test_assets_are_served_with_their_content_types() -> None:
    client = stub()
    for name, content_type in (("app.js", b"text/javascript; charset=utf-8"), ("app.css", b"text/css; charset=utf-8")):
        response = await client.get(f"http://127.0.0.1/static/{name}")
        assert response.code == 200, name
        assert response.headers.getRawHeaders(b"content-type") == [content_type]
        assert await response.content() == (STATIC_DIR.child(name).getContent())


@pytest_twisted.ensureDeferred
async def test_a_missing_file_is_a_json_404() -> None:
    response = await stub().get("http://127.0.0.1/static/nothing.js")
    assert response.code == 404
    assert await response.json() == {"error": "not_found", "msg": "path: no page file 'nothing.js'"}


@pytest.mark.parametrize(
    "segments",
    [
        [],
        [".."],
        ["..", "page.py"],
        ["..", "..", "setup.cfg"],
        ["/etc", "passwd"],
        [".hidden.js"],
        ["sub"],
        ["notes.txt"],
        ["script.py"],
        ["a", "b", "c", "d", "e.js"],
        ["app.js\x00.css"],
    ],
)
def test_only_plain_names_of_served_files_are_found(tmp_path: Path, segments: list[str]) -> None:
    root = FilePath(str(tmp_path / "static"))
    (tmp_path / "static" / "sub").mkdir(parents=True)
    for name in (".hidden.js", "notes.txt", "script.py", "app.js"):
        (tmp_path / "static" / name).write_text("x", encoding="utf-8")
    (tmp_path / "page.py").write_text("secret", encoding="utf-8")
    with pytest.raises(HTTPProblem) as raised:
        find_static(segments, root)
    assert raised.value.status == 404
    assert find_static(["app.js"], root).body == b"x"


def test_every_file_shipped_is_served_and_every_file_referenced_is_shipped() -> None:
    shipped = {path.basename() for path in STATIC_DIR.children()}
    assert {"index.html", "app.js", "app.css"} <= shipped
    for name in shipped:
        assert FilePath(name).splitext()[1] in CONTENT_TYPES, name
    index = STATIC_DIR.child("index.html").getContent().decode("utf-8")
    referenced = set(re.findall(r'(?:src|href)="/static/([^"]+)"', index))
    for name in shipped:
        if name.endswith(".js"):
            text = STATIC_DIR.child(name).getContent().decode("utf-8")
            referenced |= set(re.findall(r'from "\./([^"]+)"', text))
    assert referenced and referenced <= shipped
    # Nothing is fetched from elsewhere at run time.
    for name in shipped:
        assert not re.search(r"https?://", STATIC_DIR.child(name).getContent().decode("utf-8")), name


#: What would parse text as HTML or script: the page sets every value as text instead.
_HTML_SINKS = re.compile(
    r"\b(?:innerHTML|outerHTML|insertAdjacentHTML|document\.write(?:ln)?|DOMParser|createContextualFragment"
    r"|srcdoc)\b|\beval\s*\(|\bnew\s+Function\b"
)


def test_no_script_of_the_page_parses_text_as_html() -> None:
    """
    Machine names, notes and action texts come from the service (and from the
    inventory behind it): shown through C{textContent} and text nodes only, a
    name like C{<img src=x onerror=...>} stays text.
    """
    scripts = [path for path in STATIC_DIR.children() if path.basename().endswith(".js")]
    assert scripts
    for path in scripts:
        text = path.getContent().decode("utf-8")
        assert _HTML_SINKS.findall(text) == [], path.basename()
    # Nor does the page itself run code given in the page: its scripts are files.
    index = STATIC_DIR.child("index.html").getContent().decode("utf-8")
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", index) == []
    assert re.findall(r"\son[a-z]+\s*=", index) == []
