"""
The Bugzilla client (Bugzilla 5 REST): a slave's problem-tracking bug.

Each slave has a tracking bug whose alias is the slave's name; when a reboot
fails at every step, the reboot action files a bug for the datacenter team
blocking it. Reading bugs needs no key on public instances; writing does.
The API key is a L{Secret} sent only in the C{X-BUGZILLA-API-KEY} header;
the configuration refuses to send it to an C{http://} URL unless
C{[bugzilla] allow_plain_http} says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from zope.interface import implementer

from slaveapi.clients.http import JSONClient, ParamValue, RemoteError, url_with_params
from slaveapi.config import Secret
from slaveapi.interfaces import IBugzilla

_SERVICE = "bugzilla"

#: Bugzilla's error codes for "no such bug": 100 invalid id or alias, 101 does not exist.
_NOT_FOUND_CODES = (100, 101)


@dataclass(frozen=True)
class Bug:
    """
    One bug.

    @ivar alias: the bug's alias (the first one when Bugzilla sends a list).
    @ivar resolution: C{""} while the bug is open.
    """

    id: int
    alias: str | None
    summary: str
    status: str
    resolution: str
    is_open: bool
    product: str
    component: str
    blocks: tuple[int, ...]
    depends_on: tuple[int, ...]


@implementer(IBugzilla)
class BugzillaClient:
    """
    Reads and writes bugs through Bugzilla's REST API at C{api_url}
    (e.g. C{https://bugzilla.example/rest}).
    """

    def __init__(self, api_url: str, api_key: Secret | None, json_client: JSONClient) -> None:
        self._api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._http = json_client

    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"X-BUGZILLA-API-KEY": self._api_key.reveal()}

    async def get_bug(self, id_or_alias: str | int) -> Bug | None:
        """The bug with this id or alias, or C{None} when there is none."""
        url = f"{self._api_url}/bug/{quote(str(id_or_alias), safe='')}"
        try:
            data = await self._http.get_json(url, headers=self._headers())
        except RemoteError as error:
            if error.status == 404 or _error_code(error.body) in _NOT_FOUND_CODES:
                return None
            raise
        if _error_code(data) in _NOT_FOUND_CODES:
            return None
        _check_error(data, "GET", url)
        bugs = _bug_list(data, "GET", url)
        if not bugs:
            return None
        return bugs[0]

    async def search(self, **criteria: ParamValue) -> list[Bug]:
        """
        Bugs matching C{criteria}, Bugzilla's search parameters, e.g.
        C{product=..., component=..., blocks=..., resolution="---"}. A list
        value repeats the parameter.
        """
        url = f"{self._api_url}/bug"
        data = await self._http.get_json(url, params=criteria, headers=self._headers())
        shown_url = url_with_params(url, criteria)
        _check_error(data, "GET", shown_url)
        return _bug_list(data, "GET", shown_url)

    async def create_bug(self, **fields: Any) -> int:
        """File a bug with these fields (product, component, summary, ...); returns its id."""
        url = f"{self._api_url}/bug"
        data = await self._http.post_json(url, json_body=fields, headers=self._headers())
        _check_error(data, "POST", url)
        bug_id = data.get("id") if isinstance(data, dict) else None
        if isinstance(bug_id, bool) or not isinstance(bug_id, int):
            raise RemoteError(_SERVICE, "POST", url, "malformed answer: no bug id")
        return bug_id

    async def add_comment(self, bug_id: int, text: str) -> None:
        """Add a comment to bug C{bug_id}."""
        url = f"{self._api_url}/bug/{int(bug_id)}/comment"
        data = await self._http.post_json(url, json_body={"comment": text}, headers=self._headers())
        _check_error(data, "POST", url)

    async def update_bug(self, bug_id: int, **fields: Any) -> None:
        """Change bug C{bug_id}'s fields (e.g. C{status}, C{blocks={"add": [..]}})."""
        url = f"{self._api_url}/bug/{int(bug_id)}"
        data = await self._http.put_json(url, json_body=fields, headers=self._headers())
        _check_error(data, "PUT", url)


def _error_code(data: Any) -> int | None:
    """Bugzilla's error code in an answer, if the answer is an error."""
    if isinstance(data, dict) and data.get("error"):
        code = data.get("code")
        return code if isinstance(code, int) else None
    return None


def _check_error(data: Any, method: str, url: str) -> None:
    """Raise a L{RemoteError} when Bugzilla answered success but reported an error."""
    if isinstance(data, dict) and data.get("error"):
        message = data.get("message")
        detail = f": {message}" if isinstance(message, str) and message else ""
        raise RemoteError(_SERVICE, method, url, f"Bugzilla error {data.get('code')}{detail}")


def _bug_list(data: Any, method: str, url: str) -> list[Bug]:
    if not isinstance(data, dict) or not isinstance(data.get("bugs"), list):
        raise RemoteError(_SERVICE, method, url, "malformed answer: expected an object with a bugs list")
    return [_parse_bug(item, method, url) for item in data["bugs"]]


def _parse_bug(data: Any, method: str, url: str) -> Bug:
    """A L{Bug} from Bugzilla's JSON, or a L{RemoteError} saying what was wrong."""

    def fail(reason: str) -> RemoteError:
        return RemoteError(_SERVICE, method, url, f"malformed answer: {reason}")

    if not isinstance(data, Mapping):
        raise fail("a bug is not an object")
    bug_id = data.get("id")
    if isinstance(bug_id, bool) or not isinstance(bug_id, int):
        raise fail("a bug has no integer id")

    def text(key: str) -> str:
        value = data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise fail(f"bug {bug_id}: {key} is not a string")
        return value

    def ids(key: str) -> tuple[int, ...]:
        value = data.get(key) or []
        if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        ):
            raise fail(f"bug {bug_id}: {key} is not a list of bug ids")
        return tuple(value)

    alias = data.get("alias")
    if isinstance(alias, list):
        alias = alias[0] if alias else None
    if alias is not None and not isinstance(alias, str):
        raise fail(f"bug {bug_id}: alias is not a string")
    resolution = text("resolution")
    is_open = data.get("is_open")
    if not isinstance(is_open, bool):
        is_open = resolution == ""
    return Bug(
        id=bug_id,
        alias=alias or None,
        summary=text("summary"),
        status=text("status"),
        resolution=resolution,
        is_open=is_open,
        product=text("product"),
        component=text("component"),
        blocks=ids("blocks"),
        depends_on=ids("depends_on"),
    )
