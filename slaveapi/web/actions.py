"""
The generic action view: GET reads results of one action, POST requests it.

This is the reference's C{ActionView}. Everything specific to an action comes
from its L{Action}: the routes serving it, the parser of its form fields and
which slave names it acts on; L{route_table} makes the views of a set of
actions, so a new action needs no change here.

A POST acts only on a machine SlaveAPI knows (L{slaveapi.web.known}); GETs
read results by the name's canonical form, without asking anyone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from twisted.web.iweb import IRequest

from slaveapi.actions import Action, ArgumentError
from slaveapi.admission import QueueFull
from slaveapi.context import Context
from slaveapi.processor import ActionProcessor
from slaveapi.store import IResultStore, StoreUnavailable
from slaveapi.web import known, params
from slaveapi.web.errors import (
    HTTPProblem,
    bad_request,
    json_body,
    not_found,
    store_unavailable,
    store_unreadable,
)


class _Form(Mapping[str, str]):
    """
    A request's form fields (query string and body), the first value of each.

    A value is decoded when it is read, so that a field the action does not
    look at cannot make its request a 400.
    """

    def __init__(self, request: IRequest) -> None:
        self._request = request
        self._names = [raw.decode("ascii") for raw in request.args or {} if isinstance(raw, bytes) and raw.isascii()]

    def __getitem__(self, name: str) -> str:
        found = params.value(self._request, name) if name in self._names else None
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def history_fields(action: Action, form: Mapping[str, str]) -> dict[str, str]:
    """The form fields C{action} declares and are not secret, as C{form} gives them: what history keeps."""
    return {field.name: form[field.name] for field in action.fields if not field.secret and field.name in form}


@dataclass(frozen=True)
class ActionView:
    """GET and POST for C{/slaves/<slave>/actions/<route>}, for each route of C{action}."""

    action: Action

    async def get(self, store: IResultStore, request: IRequest, slave: str) -> bytes:
        """
        One result (C{?requestid=N}), or every result of this action for C{slave}
        as C{{"<action>": {"<requestid>": {...}}}}.
        """
        requestid = params.requestid(request)
        try:
            if requestid is not None:
                result = await store.reads.get(requestid)
                if result is None or result.slave != slave or result.action != self.action.name:
                    raise not_found(f"requestid: no {self.action.name} request {requestid} for {slave}")
                return json_body(request, result.to_dict())
            # Read through the (slave, action) index, in request-id order.
            found = await store.reads.find(slave=slave, action=self.action.name)
        except StoreUnavailable as error:
            raise store_unreadable(str(error)) from None
        return json_body(request, {self.action.name: {str(result.requestid): result.to_dict() for result in found}})

    async def post(
        self, processor: ActionProcessor, request: IRequest, slave: str, client: str | None, ctx: Context
    ) -> bytes:
        """
        Queue the action, wait up to C{waittime} seconds for it, and answer its
        result with C{requestid}: 200 if it finished, 202 if it goes on.
        """
        waittime = params.waittime(request)
        form = _Form(request)
        try:
            arguments = self.action.arguments(form)
        except ArgumentError as error:
            raise bad_request(str(error)) from None
        # Read here, where a value that is not UTF-8 is a plain 400, not once the request is counted.
        fields = history_fields(self.action, form)
        machine = await known.machine_name(ctx, slave, self.action.names)
        try:
            result = await processor.submit(machine, self.action, arguments, client, fields=fields)
        except StoreUnavailable as error:
            raise store_unavailable(str(error)) from None
        except QueueFull as full:
            retry_after = {b"Retry-After": str(full.retry_after).encode("ascii")}
            raise HTTPProblem(503, "queue_full", f"{self.action.name}: {full}", retry_after) from None
        # Recorded and queued from here on: whatever happens, the answer says
        # so (never a 5xx, which a client would retry, acting twice).
        try:
            await processor.wait(result, waittime)
            # Only what is on disk is answered: finished once its final row is written.
            shown = await processor.recorded(result)
        except StoreUnavailable:
            # Cannot read the store just now: the last state it confirmed writing.
            shown = processor.last_written(result)
        return json_body(request, shown.to_dict(include_requestid=True), 200 if shown.is_done() else 202)


def route_table(actions: Iterable[Action]) -> Mapping[str, ActionView]:
    """
    Every route of C{actions} -> its view.

    @raise ValueError: when two actions claim the same route.
    """
    views: dict[str, ActionView] = {}
    for action in actions:
        for route in action.routes:
            if route in views:
                raise ValueError(f"route {route!r} is claimed by both {views[route].action.name} and {action.name}")
            views[route] = ActionView(action)
    return MappingProxyType(views)
