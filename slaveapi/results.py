"""
Action results: the record every request becomes, and its JSON shapes.

The shapes are the 2015 reference contract: C{to_dict} gives C{state},
C{text} and the three timestamps (Unix seconds, 0 while not reached), plus
C{requestid} when asked; L{dictify_results} nests results by slave, action
and requestid for C{GET /results}.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PENDING, RUNNING, SUCCESS, FAILURE = range(4)

#: What an action's payload may be: text for most actions, an integer for
#: buildslave_uptime, a JSON object for buildslave_last_activity.
Payload = Any


@dataclass
class ActionResult:
    """
    What is known of one requested action.

    @ivar client: the authenticated client that asked for it, or C{None}
        when authentication is off. Kept for the audit trail; never shown in
        the public dict.
    """

    slave: str
    action: str
    requestid: int
    state: int = PENDING
    text: Payload = ""
    request_timestamp: int = field(default_factory=lambda: int(time.time()))
    start_timestamp: int = 0
    finish_timestamp: int = 0
    client: str | None = None

    def is_done(self) -> bool:
        """Whether the action has finished, successfully or not."""
        return self.state in (SUCCESS, FAILURE)

    def to_dict(self, include_requestid: bool = False) -> dict[str, Any]:
        """
        The result as the reference documentation shows it::

            {"state": 2, "text": "Great success!",
             "request_timestamp": 1392414314, "start_timestamp": 1392414315,
             "finish_timestamp": 1392414316, "requestid": 234567832}
        """
        data: dict[str, Any] = {
            "state": self.state,
            "text": self.text,
            "request_timestamp": self.request_timestamp,
            "start_timestamp": self.start_timestamp,
            "finish_timestamp": self.finish_timestamp,
        }
        if include_requestid:
            data["requestid"] = self.requestid
        return data


def dictify_results(results: Iterable[ActionResult]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """
    Nest results as C{{slave: {action: {requestid: result dict}}}}.

    Request ids become strings because they are JSON object keys.
    """
    nested: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for result in results:
        by_action = nested.setdefault(result.slave, {})
        by_action.setdefault(result.action, {})[str(result.requestid)] = result.to_dict()
    return nested
