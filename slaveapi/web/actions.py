"""
The generic action view: GET reads results of one action, POST requests it.

This is the reference's C{ActionView}: a route for a new action is an
L{ActionView} with the L{Action} and, if it takes form fields, a function
that validates them into keyword arguments.

A POST acts only on a machine SlaveAPI knows (L{slaveapi.web.known}); GETs
read results by the name's canonical form, without asking anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.web.iweb import IRequest

from slaveapi.actions import Action
from slaveapi.admission import QueueFull
from slaveapi.context import Context
from slaveapi.processor import ActionProcessor
from slaveapi.store import IResultStore, StoreUnavailable
from slaveapi.web import known, params
from slaveapi.web.errors import HTTPProblem, json_body, not_found, store_unavailable


def no_arguments(request: IRequest) -> dict[str, Any]:
    """For actions that take no form fields."""
    return {}


@dataclass(frozen=True)
class ActionView:
    """
    GET and POST for C{/slaves/<slave>/actions/<route>}.

    @ivar parse_arguments: validates the request's form fields into the
        action's keyword arguments, raising a 400 for anything wrong.
    @ivar names: which names a POST may act on: C{known.MACHINES} (every
        machine SlaveAPI knows) or C{known.LOANERS} (loaner names only, and
        C{default}: for creating loaners).
    """

    action: Action
    parse_arguments: Callable[[IRequest], dict[str, Any]] = no_arguments
    names: str = known.MACHINES

    def get(self, store: IResultStore, request: IRequest, slave: str) -> bytes:
        """
        One result (C{?requestid=N}), or every result of this action for C{slave}
        as C{{"<action>": {"<requestid>": {...}}}}.
        """
        requestid = params.requestid(request)
        if requestid is not None:
            result = store.get(requestid)
            if result is None or result.slave != slave or result.action != self.action.name:
                raise not_found(f"requestid: no {self.action.name} request {requestid} for {slave}")
            return json_body(request, result.to_dict())
        found = store.find(slave=slave, action=self.action.name)
        return json_body(
            request, {self.action.name: {str(result.requestid): result.to_dict() for result in found}}
        )

    async def post(
        self, processor: ActionProcessor, request: IRequest, slave: str, client: str | None, ctx: Context
    ) -> bytes:
        """
        Queue the action, wait up to C{waittime} seconds for it, and answer its
        result with C{requestid}: 200 if it finished, 202 if it goes on.
        """
        waittime = params.waittime(request)
        arguments = self.parse_arguments(request)
        machine = await known.machine_name(ctx, slave, self.names)
        try:
            result = await processor.submit(machine, self.action, arguments, client)
        except StoreUnavailable as error:
            raise store_unavailable(str(error)) from None
        except QueueFull as full:
            retry_after = {b"Retry-After": str(full.retry_after).encode("ascii")}
            raise HTTPProblem(503, "queue_full", f"{self.action.name}: {full}", retry_after) from None
        await processor.wait(result, waittime)
        # Only what is on disk is answered: finished once its final row is written.
        shown = processor.recorded(result)
        return json_body(request, shown.to_dict(include_requestid=True), 200 if shown.is_done() else 202)
