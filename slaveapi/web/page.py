"""
The fleet page: C{GET /} and its assets under C{GET /static/<path>}.

The page is plain HTML, CSS and JavaScript modules shipped in the package
(C{slaveapi/web/static/}), so it needs no build step and fetches nothing from
elsewhere: everything it shows it reads from this service's own API, with
the operator's token when one is needed.

The files themselves hold no data, so they are served without a token even
under C{[auth] protect_reads}: the page must load to be able to ask for one.
Only names of files that are there, made of plain segments, are served (no
C{..}, no hidden files, no directories), with a content type by extension.
Browsers revalidate on every load (C{no-cache} with an C{ETag}), so an upgrade
shows at once while an unchanged file costs a C{304}.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.python.filepath import FilePath, InsecurePath
from twisted.web.http import CACHED
from twisted.web.iweb import IRequest

from slaveapi.web.errors import not_found

#: Where the page's files are, in the installed package.
STATIC_DIR = FilePath(__file__).sibling("static")

#: The content types served, by file extension; any other file is not served.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}

#: What the page may load and talk to: this service only.
_CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

#: At most this many path segments below C{static/}.
_MAX_DEPTH = 4


@dataclass(frozen=True)
class StaticFile:
    """One file of the page, as served."""

    body: bytes
    content_type: bytes
    etag: bytes


def find_static(segments: Sequence[str], root: FilePath[str] = STATIC_DIR) -> StaticFile:
    """
    The file at C{segments} below C{root}.

    @raise HTTPProblem: 404 for a name that is not a plain relative path to
        a file with a served extension.
    """
    shown = "/".join(segments)[:200]
    missing = not_found(f"path: no page file {shown!r}")
    if not segments or len(segments) > _MAX_DEPTH or not all(_SEGMENT.fullmatch(part) for part in segments):
        raise missing
    content_type = CONTENT_TYPES.get(posixpath.splitext(segments[-1])[1].lower())
    if content_type is None:
        raise missing
    try:
        path = root.descendant(list(segments))
    except InsecurePath:
        raise missing from None
    if not path.isfile():
        raise missing
    body = path.getContent()
    etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
    return StaticFile(body, content_type, etag)


def serve_static(request: IRequest, segments: Sequence[str], root: FilePath[str] = STATIC_DIR) -> bytes:
    """
    Answer with the page file at C{segments} (see L{find_static}); C{304}
    and no body when the browser's copy is current.
    """
    found = find_static(segments, root)
    request.setHeader(b"Content-Type", found.content_type)
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Security-Policy", _CONTENT_SECURITY_POLICY)
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    if request.setETag(found.etag) == CACHED:
        return b""
    return found.body
