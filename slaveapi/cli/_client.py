"""
The HTTP side of C{slaveapi-cli}: a small synchronous client of SlaveAPI's
JSON API, on the standard library so the CLI needs no event loop.

Every request has a timeout. Errors become L{APIError} carrying the
server's own C{msg} (SlaveAPI's error bodies name the field and what was
expected), or L{Unreachable} saying why the server could not be asked.

Redirects are refused, not followed: following one would send the bearer
token to wherever the answer points (another host, plain C{http}), and
turn a C{POST} into a C{GET}. The error names where it pointed, so the
operator can fix C{--url}.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from http.client import HTTPException, HTTPMessage, HTTPResponse
from typing import Any

from slaveapi._text import shown_url
from slaveapi.cli._config import Settings

#: Seconds any one request may take.
REQUEST_TIMEOUT = 60.0
_USER_AGENT = "slaveapi-cli"

Query = Iterable[tuple[str, str]]


class APIError(Exception):
    """
    SlaveAPI answered an error.

    @ivar status: the HTTP status.
    @ivar error: the body's C{error} kind (C{bad_request}, C{not_found}, ...).
    @ivar msg: the body's C{msg}, or a description of the answer when it was not JSON.
    """

    def __init__(self, status: int, error: str, msg: str) -> None:
        super().__init__(f"{status} {error}: {msg}")
        self.status = status
        self.error = error
        self.msg = msg


class Unreachable(Exception):
    """The server could not be asked (refused, timed out, not HTTP)."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect handler that follows nothing: a 3xx then stays an C{HTTPError}."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: HTTPMessage, newurl: str
    ) -> None:
        return None


class SlaveAPIClient:
    """
    Requests to one SlaveAPI server, with its token when there is one.

    @param timeout: seconds each request may take.
    """

    def __init__(self, settings: Settings, timeout: float = REQUEST_TIMEOUT) -> None:
        self._settings = settings
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    @property
    def url(self) -> str:
        return self._settings.url

    def _request(
        self, method: str, path: str, query: Query = (), form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, timeout: float | None = None,
    ) -> HTTPResponse:
        url = self._settings.url + path
        encoded = urllib.parse.urlencode(list(query))
        if encoded:
            url += ("&" if "?" in path else "?") + encoded
        body = urllib.parse.urlencode(dict(form)).encode("ascii") if form is not None else None
        request = urllib.request.Request(url, data=body, method=method)  # noqa: S310  # http(s) only, checked in _config
        request.add_header("User-Agent", _USER_AGENT)
        request.add_header("Accept", "application/json")
        if body is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self._settings.token:
            request.add_header("Authorization", f"Bearer {self._settings.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            response: HTTPResponse = self._opener.open(request, timeout=self._timeout if timeout is None else timeout)
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None
        except (urllib.error.URLError, OSError, HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise Unreachable(f"{method} {url.split('?')[0]} failed: {_describe(reason)}") from None
        return response

    def _json(self, response: HTTPResponse, method: str, path: str) -> Any:
        try:
            with response:
                return json.loads(response.read())
        except (OSError, ValueError, HTTPException) as error:
            raise Unreachable(f"{method} {path}: the answer is not JSON ({_describe(error)})") from None

    def get(self, path: str, query: Query = ()) -> Any:
        """C{GET path?query}, decoded from JSON."""
        return self._json(self._request("GET", path, query), "GET", path)

    def post(self, path: str, form: Mapping[str, str]) -> Any:
        """C{POST path} with C{form} as form fields, decoded from JSON."""
        return self._json(self._request("POST", path, form=form), "POST", path)

    def stream(
        self, path: str, query: Query = (), headers: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> HTTPResponse:
        """
        C{GET path?query} left open for reading, each read bounded by C{timeout}.
        The caller closes it.
        """
        return self._request("GET", path, query, headers=headers, timeout=timeout)


def _describe(reason: object) -> str:
    if isinstance(reason, socket.timeout | TimeoutError):
        return "timed out"
    return str(reason) or type(reason).__name__


def _api_error(error: urllib.error.HTTPError) -> APIError:
    """The error SlaveAPI answered, from its JSON body when it has one."""
    if 300 <= error.code < 400:
        error.close()
        location = error.headers.get("Location") if error.headers is not None else None
        where = f" to {shown_url(urllib.parse.urljoin(error.url, location), whole=False)}" if location else ""
        return APIError(
            error.code, "redirect",
            f"the server redirected{where}; redirects are not followed: set --url to the server's own URL",
        )
    try:
        body = json.loads(error.read())
    except (OSError, ValueError):
        body = None
    finally:
        error.close()
    if isinstance(body, dict) and isinstance(body.get("msg"), str):
        return APIError(error.code, str(body.get("error", "error")), body["msg"])
    return APIError(error.code, "error", f"HTTP {error.code} {error.reason} (not a SlaveAPI error body)")
