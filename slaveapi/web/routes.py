"""
Every HTTP route of SlaveAPI, in one place.

The routes only check the request (slave name, authentication) and hand over
to the views in L{slaveapi.web.actions}, L{slaveapi.web.slaves} and
L{slaveapi.web.results}. The action routes are those the actions declare
(L{slaveapi.actions.registry.ACTIONS}). Every answer, errors included, is JSON,
but for the fleet page at C{/} and its files under C{/static/} (L{slaveapi.web.page}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from slaveapi import __version__
from slaveapi.actions import Action
from slaveapi.actions.registry import ACTIONS
from slaveapi.context import Context
from slaveapi.events import ResultEvents
from slaveapi.health import IHealthStore
from slaveapi.metrics import ServiceMetrics
from slaveapi.processor import ActionProcessor
from slaveapi.store import IResultStore
from slaveapi.web import known, params
from slaveapi.web.actions import ActionView, route_table
from slaveapi.web.auth import Client, authenticate, authorize
from slaveapi.web.errors import HTTPProblem, json_body, not_found, problem_body
from slaveapi.web.events import EventStreams
from slaveapi.web.health import fleet_health, machine_health
from slaveapi.web.history import machine_history
from slaveapi.web.metrics import scrape
from slaveapi.web.openapi import build_document
from slaveapi.web.page import serve_static
from slaveapi.web.results import all_results
from slaveapi.web.slaves import list_slaves, show_slave


class SlaveAPIWeb:
    """
    The Klein application.

    @param context: the current context (configuration and clients); asked
        on every request so that a reload takes effect at once.
    @param actions: the actions served, each under its routes.
    @param health: the health loop's verdicts (L{slaveapi.health}); without
        it C{/health} and C{/slaves/<slave>/health} answer 503.
    @param events: the result events C{/events} streams (L{slaveapi.events});
        without them it answers 503.
    @param clock: the reactor the event streams' keepalives run on.
    @param metrics: what C{/metrics} serves (L{slaveapi.metrics}); without
        them it answers 503.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        processor: ActionProcessor,
        store: IResultStore,
        context: Callable[[], Context],
        actions: Iterable[Action] = ACTIONS.values(),
        health: IHealthStore | None = None,
        events: ResultEvents | None = None,
        clock: Any = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._processor = processor
        self._metrics = metrics
        self._store = store
        self._context = context
        self._health = health
        self._action_views = route_table(actions)
        if clock is None:
            from twisted.internet import reactor as clock
        #: The open C{/events} streams; a service, so that stopping closes them.
        self.streams = EventStreams(events, clock, lambda: self._context().config)

    def resource(self) -> Any:
        """The twisted.web resource serving this application."""
        return self.app.resource()

    def _client(self, request: IRequest, write: bool) -> Client | None:
        """Who asks (401 without a valid token where one is needed); GETs under C{protect_reads} need C{read}."""
        config = self._context().config
        client = authenticate(request, config.credentials.api_tokens, write or config.auth.protect_reads)
        if not write:
            authorize(client, "read", "reading")
        return client

    def _view(self, route: str) -> ActionView:
        view = self._action_views.get(route)
        if view is None:
            raise not_found(f"action: no action {route!r}; expected one of {', '.join(sorted(self._action_views))}")
        return view

    @app.route("/results", methods=["GET"])
    def results(self, request: IRequest) -> bytes | Deferred[bytes]:
        self._client(request, write=False)
        actions = [view.action for view in self._action_views.values()]
        return all_results(self._store, request, self._context(), actions)

    @app.route("/slaves", methods=["GET"])
    async def slaves(self, request: IRequest) -> bytes:
        self._client(request, write=False)
        return await list_slaves(self._context(), request)

    @app.route("/slaves/<string:slave>", methods=["GET"])
    async def slave(self, request: IRequest, slave: str) -> bytes:
        self._client(request, write=False)
        return await show_slave(self._context(), request, params.slave_name(slave))

    def _health_store(self) -> IHealthStore:
        if self._health is None:
            raise HTTPProblem(503, "unavailable", "health: the health loop is not running in this service")
        return self._health

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        self._client(request, write=False)
        return await fleet_health(self._health_store(), self._context(), request)

    @app.route("/slaves/<string:slave>/health", methods=["GET"])
    async def slave_health(self, request: IRequest, slave: str) -> bytes:
        self._client(request, write=False)
        return await machine_health(self._health_store(), self._context(), request, params.slave_name(slave))

    @app.route("/slaves/<string:slave>/history", methods=["GET"])
    async def slave_history(self, request: IRequest, slave: str) -> bytes:
        self._client(request, write=False)
        return await machine_history(self._store, self._context(), request, params.slave_name(slave))

    @app.route("/events", methods=["GET"])
    def events(self, request: IRequest) -> Deferred[None]:
        self._client(request, write=False)
        return self.streams.serve(request, {view.action.name for view in self._action_views.values()})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        self._client(request, write=False)
        return scrape(self._metrics, request)

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        self._client(request, write=False)
        actions = [view.action for view in self._action_views.values()]
        return json_body(request, build_document(self.app.url_map, actions, __version__))

    @app.route("/slaves/<string:slave>/actions/<string:action>", methods=["GET", "POST"])
    async def action(self, request: IRequest, slave: str, action: str) -> bytes:
        # Authentication first: a stranger learns nothing, not even which names are valid.
        write = request.method == b"POST"
        client = self._client(request, write=write)
        name = params.slave_name(slave)
        view = self._view(action)
        if write:
            authorize(client, view.action.scope, view.action.name)
            who = client.name if client is not None else None
            return await view.post(self._processor, request, name, who, self._context())
        return await view.get(self._store, request, known.read_name(self._context(), name))

    @app.route("/", methods=["GET"])
    def page(self, request: IRequest) -> bytes:
        # The page holds no data (it asks the API, with a token where needed), so it needs no token itself.
        return serve_static(request, ["index.html"])

    @app.route("/static/<path:path>", methods=["GET"])
    def static(self, request: IRequest, path: str) -> bytes:
        return serve_static(request, path.split("/"))

    @app.handle_errors(HTTPProblem)
    def _problem(self, request: IRequest, failure: Failure) -> bytes:
        problem = cast(HTTPProblem, failure.value)
        if problem.status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="slaveapi"')
        return problem_body(request, problem)

    @app.handle_errors(HTTPException)
    def _routing(self, request: IRequest, failure: Failure) -> bytes:
        error = cast(HTTPException, failure.value)
        status = error.code or 500
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        msg = {
            404: f"no such endpoint: {request.path.decode('latin-1', 'replace')[:200]}",
            405: f"method {request.method.decode('latin-1', 'replace')} is not allowed here",
        }.get(status, error.description or "bad request")
        return problem_body(request, HTTPProblem(status, kind, msg))

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("Unexpected error answering {path}", failure, path=request.path)
        return json_body(request, {"error": "internal_error", "msg": "internal error; see the server log"}, 500)
