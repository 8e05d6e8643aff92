"""
The buildapi client: the jobs a slave ran recently.

C{GET /slaves/<slave>} publishes this list as C{recent_jobs}, newest first,
and callers read C{recent_jobs[0]["endtime"]} to decide whether a machine is
idle; so every job handed out here is checked to carry the fields they rely
on, and malformed ones are dropped (with a log line) rather than passed on.
buildapi is slow under load, so calls in flight are limited per client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet.defer import DeferredSemaphore
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi.clients.http import JSONClient, RemoteError, url_with_params
from slaveapi.interfaces import IBuildapi

_SERVICE = "buildapi"


@implementer(IBuildapi)
class BuildapiClient:
    """
    Reads recent jobs from buildapi at C{api_url}.

    @param max_concurrent: at most this many calls to buildapi are in flight
        at once through this client; others wait their turn.
    """

    _log = Logger()

    def __init__(self, api_url: str, json_client: JSONClient, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self._api_url = api_url.rstrip("/")
        self._http = json_client
        self._limit = DeferredSemaphore(max_concurrent)

    async def recent_jobs(self, name: str, count: int = 10) -> list[dict[str, Any]]:
        """
        The slave's most recent jobs (at most C{count}), newest first by
        C{starttime}, as buildapi sent them.

        Each job has at least C{buildername}, C{buildnumber}, C{starttime},
        C{endtime} (C{None} while running), C{result} and C{master}.
        """
        url = f"{self._api_url}/recent/{quote(name, safe='')}"
        params: dict[str, str | int] = {"format": "json", "numbuilds": int(count)}
        data = await self._http.get_json(url, params=params, limit=self._limit)
        if not isinstance(data, list):
            raise RemoteError(
                _SERVICE, "GET", url_with_params(url, params), "malformed answer: expected a list of jobs"
            )
        jobs = []
        for index, job in enumerate(data):
            problem = _job_problem(job)
            if problem:
                self._log.warn(
                    "buildapi: {slave}: dropping malformed job #{index}: {problem}",
                    slave=name,
                    index=index,
                    problem=problem,
                )
                continue
            jobs.append(job)
        jobs.sort(key=lambda job: job["starttime"], reverse=True)
        return jobs[: max(count, 0)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _job_problem(job: Any) -> str | None:
    """What is wrong with one job, or C{None} when it can be published."""
    if not isinstance(job, dict):
        return "not an object"
    missing = [
        key for key in ("buildername", "buildnumber", "starttime", "endtime", "result", "master") if key not in job
    ]
    if missing:
        return "missing " + ", ".join(missing)
    if not isinstance(job["buildername"], str):
        return "buildername is not a string"
    if isinstance(job["buildnumber"], bool) or not isinstance(job["buildnumber"], int):
        return "buildnumber is not an integer"
    if not _is_number(job["starttime"]):
        return "starttime is not a number"
    if job["endtime"] is not None and not _is_number(job["endtime"]):
        return "endtime is neither a number nor null"
    if job["result"] is not None and (isinstance(job["result"], bool) or not isinstance(job["result"], int)):
        return "result is neither an integer nor null"
    if not isinstance(job["master"], str):
        return "master is not a string"
    return None
