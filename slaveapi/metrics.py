"""
Prometheus metrics of one running service, served at C{GET /metrics}.

L{ServiceMetrics} holds a registry of its own (never prometheus_client's
global one: two services in one process, as in the tests, must not count
into each other) with:

  - what happens to actions, learnt from the result events
    (L{slaveapi.events}): requests, finishes by state, durations, and for
    a finished C{reboot} the escalation steps its final text reports (the
    status lines are the contract: C{Attempting <Method>
    reboot...Success!}, C{...Failed (...)}, C{Skipping <Method> reboot: ...});
  - every call made through the context's clients, timed and counted by
    client and outcome by a measuring proxy (L{ServiceMetrics.measure})
    that L{slaveapi.context.build_context} puts around each client;
  - gauges read at scrape time: queued requests, running actions, the
    health loop's verdicts and the build's version;
  - the process's own metrics (CPU, memory, open files, garbage collection).

Nothing here may break an action: the subscriber only counts, and the proxy
passes every result and exception through unchanged.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError

from slaveapi import __version__
from slaveapi.clients._errors import ClientTimeout
from slaveapi.events import FINISHED, REQUESTED, ResultEvent, ResultEvents
from slaveapi.results import FAILURE, SUCCESS

if TYPE_CHECKING:
    from slaveapi.health import IHealthStore

T = TypeVar("T")

#: The escalation's action, whose final text is read for its steps.
REBOOT: Final = "reboot"

#: Outcomes of an escalation step.
STEP_SUCCESS: Final = "success"
STEP_FAILED: Final = "failed"
STEP_SKIPPED: Final = "skipped"
STEP_STOPPED: Final = "stopped"

#: Outcomes of a remote call.
CALL_OK: Final = "ok"
CALL_ERROR: Final = "error"
CALL_TIMEOUT: Final = "timeout"

#: Seconds from an action's start to its finish: a quick read to a long reboot escalation.
ACTION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
#: Seconds of one remote call: an HTTP request to a wait for a machine to reboot.
CALL_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0)

#: Methods of a client that are not remote calls (releasing the client's own resources).
_NOT_CALLS: Final = frozenset({"close"})

_STATE_WORDS: Final = {SUCCESS: "success", FAILURE: "failure"}
_ATTEMPT: Final = re.compile(r"^Attempting (?P<method>\w+) reboot\.\.\.(?P<outcome>.*)$")
_SKIP: Final = re.compile(r"^Skipping (?P<method>\w+) reboot: ")


@dataclass(frozen=True)
class EscalationStep:
    """One method of a reboot's escalation and how it went (one of the C{STEP_*} outcomes)."""

    method: str
    outcome: str


def escalation_steps(text: object) -> list[EscalationStep]:
    """
    The escalation steps a reboot's final text reports, in order; the method
    in lower case (C{ssh}, C{mozpool}, C{redfish}, C{ipmi}, C{pdu}).

    An attempt whose line ends in C{Success!} succeeded, one ending in
    C{Failed ...} failed; one left with any other ending (stopped while
    SSH stayed busy, or interrupted halfway) was C{stopped}. Other lines
    (a bug filed, an interruption notice) are not steps. A text that is not
    a string has none.
    """
    if not isinstance(text, str):
        return []
    steps = []
    for line in text.splitlines():
        attempt = _ATTEMPT.match(line)
        if attempt is not None:
            steps.append(EscalationStep(attempt["method"].lower(), _attempt_outcome(attempt["outcome"])))
            continue
        skip = _SKIP.match(line)
        if skip is not None:
            steps.append(EscalationStep(skip["method"].lower(), STEP_SKIPPED))
    return steps


def _attempt_outcome(said: str) -> str:
    if said == "Success!":
        return STEP_SUCCESS
    if said.startswith("Failed"):
        return STEP_FAILED
    return STEP_STOPPED


class ServiceMetrics:
    """
    The metrics of one service, in a registry of their own.

    @param version: what C{slaveapi_build_info} says.
    @ivar registry: what C{GET /metrics} exposes.
    """

    def __init__(self, version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._requested = Counter(
            "slaveapi_actions_requested",
            "Actions requested (joined requests not counted again).",
            ["action"],
            registry=self.registry,
        )
        self._finished = Counter(
            "slaveapi_actions_finished",
            "Actions finished, by final state (success or failure).",
            ["action", "state"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "slaveapi_action_duration_seconds",
            "Seconds from an action's start to its finish.",
            ["action"],
            buckets=ACTION_BUCKETS,
            registry=self.registry,
        )
        self._steps = Counter(
            "slaveapi_escalation_steps",
            "Reboot escalation steps, by method and outcome.",
            ["method", "outcome"],
            registry=self.registry,
        )
        self._calls = Counter(
            "slaveapi_remote_calls",
            "Calls to remote systems, by client and outcome (ok, error, timeout).",
            ["client", "outcome"],
            registry=self.registry,
        )
        self._call_seconds = Histogram(
            "slaveapi_remote_call_seconds",
            "Seconds a call to a remote system took, however it ended.",
            ["client"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self._gauges = _ScrapeTimeGauges(version)
        self.registry.register(self._gauges)

    def follow(self, events: ResultEvents) -> Callable[[], None]:
        """Count the actions C{events} reports from now on; returns what stops it."""
        return events.subscribe(self._on_event)

    def watch_processor(self, queued: Callable[[], Mapping[str, int]], in_flight: Callable[[], int]) -> None:
        """Read the queue depth by kind and the running actions from these at each scrape (the processor's)."""
        self._gauges.queued = queued
        self._gauges.in_flight = in_flight

    def watch_health(self, store: IHealthStore, verdicts: Iterable[str]) -> None:
        """Count the health loop's stored verdicts at each scrape, each of C{verdicts} shown even at 0."""
        self._gauges.health = store
        self._gauges.verdicts = tuple(verdicts)

    def measure(self, name: str, client: T, clock: Any) -> T:
        """
        C{client}, with each of its coroutine methods timed on C{clock} and
        counted under C{name} (see L{RemoteCall}); C{client} itself when it
        is measured already (a client a reload keeps).
        """
        if isinstance(client, MeasuredClient):
            return client
        # The one place the proxy passes for the client it stands for.
        return cast(T, MeasuredClient(name, client, clock, self.remote_call))

    def remote_call(self, call: RemoteCall) -> None:
        """Count one finished remote call."""
        self._calls.labels(client=call.client, outcome=call.outcome).inc()
        self._call_seconds.labels(client=call.client).observe(call.seconds)

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text format."""
        return generate_latest(self.registry)

    def _on_event(self, event: ResultEvent) -> None:
        if event.kind == REQUESTED:
            self._requested.labels(action=event.action).inc()
        elif event.kind == FINISHED:
            self._finished.labels(action=event.action, state=_STATE_WORDS.get(event.state, "unknown")).inc()
            if event.start_timestamp:
                self._duration.labels(action=event.action).observe(
                    max(0, event.finish_timestamp - event.start_timestamp)
                )
            if event.action == REBOOT:
                for step in escalation_steps(event.text):
                    self._steps.labels(method=step.method, outcome=step.outcome).inc()


@dataclass(frozen=True)
class RemoteCall:
    """
    One call made through a client, once it ended.

    @ivar outcome: C{ok} (it returned), C{timeout} (it raised
        L{ClientTimeout}) or C{error} (any other exception).
    """

    client: str
    method: str
    outcome: str
    seconds: float


class MeasuredClient:
    """
    Stands for a client: its coroutine methods are timed and reported to
    C{observe} when they end (a cancelled call is not reported: it did not
    end on its own); anything else (plain methods, attributes, C{close}) is
    the client's own, untouched.

    @ivar client: the client measured.
    """

    def __init__(self, name: str, client: object, clock: Any, observe: Callable[[RemoteCall], None]) -> None:
        self.client = client
        self._name = name
        self._clock = clock
        self._observe = observe

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self.client, attribute)
        if attribute in _NOT_CALLS or not asyncio.iscoroutinefunction(value):
            return value
        return self._timed(attribute, value)

    def __repr__(self) -> str:
        return f"<measured {self._name} {self.client!r}>"

    def _timed(self, method: str, call: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = self._clock.seconds()
            try:
                value = await call(*args, **kwargs)
            except (CancelledError, asyncio.CancelledError):
                raise
            except ClientTimeout:
                self._report(method, CALL_TIMEOUT, began)
                raise
            except Exception:
                self._report(method, CALL_ERROR, began)
                raise
            self._report(method, CALL_OK, began)
            return value

        return timed

    def _report(self, method: str, outcome: str, began: float) -> None:
        self._observe(RemoteCall(self._name, method, outcome, max(0.0, self._clock.seconds() - began)))


def unwrapped(client: T) -> T:
    """The client a L{MeasuredClient} stands for, or C{client} itself."""
    if isinstance(client, MeasuredClient):
        return cast(T, client.client)
    return client


class _ScrapeTimeGauges(Collector):
    """The gauges read when scraped: queue, running actions, health verdicts, build."""

    def __init__(self, version: str) -> None:
        self._version = version
        self.queued: Callable[[], Mapping[str, int]] | None = None
        self.in_flight: Callable[[], int] | None = None
        self.health: IHealthStore | None = None
        self.verdicts: tuple[str, ...] = ()

    def describe(self) -> Iterable[Metric]:
        # Known before any scrape, so the registry can check for clashing names.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "slaveapi_build_info", "The running SlaveAPI's version (always 1).", labels=["version"]
        )
        build.add_metric([self._version], 1)
        yield build
        if self.queued is not None:
            queued = GaugeMetricFamily(
                "slaveapi_actions_queued",
                "Requests waiting for a work slot, by kind (read-only, changing).",
                labels=["kind"],
            )
            for kind, count in sorted(self.queued().items()):
                queued.add_metric([kind], count)
            yield queued
        if self.in_flight is not None:
            yield GaugeMetricFamily("slaveapi_actions_in_flight", "Actions running now.", value=self.in_flight())
        if self.health is not None:
            yield self._verdict_family(self.health)

    def _verdict_family(self, store: IHealthStore) -> Metric:
        family = GaugeMetricFamily(
            "slaveapi_health_verdicts", "Machines by the health loop's latest verdict.", labels=["verdict"]
        )
        counts = Tally({verdict: 0 for verdict in self.verdicts})
        if store.unavailable() is None:
            counts.update(record.verdict for record in store.records().values())
        for verdict, count in sorted(counts.items()):
            family.add_metric([verdict], count)
        return family
