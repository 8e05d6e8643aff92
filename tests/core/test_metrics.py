"""
The service's Prometheus metrics: what result events count, the reboot
escalation read from its final text, remote calls timed by the measuring
proxy on a L{Clock}, the gauges read at scrape time, the clients a reload
keeps, and C{GET /metrics} with and without C{protect_reads}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from slaveapi.actions import Action, ActionRun
from slaveapi.clients.ipmi import IPMITimeout
from slaveapi.clients.ssh import SSHAuthenticationFailed, SSHClient
from slaveapi.config import load_config
from slaveapi.context import measured_clients
from slaveapi.events import FINISHED, REQUESTED, STARTED, ResultEvents
from slaveapi.health import DOWN, OK, VERDICTS, HealthRecord
from slaveapi.metrics import EscalationStep, MeasuredClient, ServiceMetrics, escalation_steps, unwrapped
from slaveapi.processor import ActionProcessor
from slaveapi.results import FAILURE, SUCCESS, ActionResult
from slaveapi.service import ContextHolder
from slaveapi.testing import FakeHost, Outcome, make_fakes
from slaveapi.web.routes import SlaveAPIWeb
from tests.core.conftest import make_config
from tests.core.reboots import run_reboot
from tests.core.test_health_sweep import MemoryHealthStore
from tests.core.test_reload_release import _write

Labels = frozenset[tuple[str, str]]

_WALK = "\n".join(
    [
        "Attempting SSH reboot...Failed (ssh 127.0.9.1:22: every login was rejected).",
        "Skipping Mozpool reboot: no imaging server in inventory.",
        "Skipping Redfish reboot: the BMC at bld-1-mgmt.example.test does not speak Redfish.",
        "Attempting IPMI reboot...Failed (IPMI power off on 127.0.10.1: no answer within 30s).",
        "Attempting PDU reboot...Success!",
    ]
)


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, Labels], float]:
    """Every sample of a scrape, parsed as Prometheus would, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: Mapping[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _result(state: int, text: Any, action: str = "reboot", requestid: int = 1) -> ActionResult:
    return ActionResult("bld-1", action, requestid, state=state, text=text, request_timestamp=1000)


# The escalation, from the final text.


def test_the_escalation_steps_are_read_from_the_status_lines() -> None:
    assert escalation_steps(_WALK) == [
        EscalationStep("ssh", "failed"),
        EscalationStep("mozpool", "skipped"),
        EscalationStep("redfish", "skipped"),
        EscalationStep("ipmi", "failed"),
        EscalationStep("pdu", "success"),
    ]


def test_an_attempt_that_did_not_end_is_stopped_and_other_lines_are_not_steps() -> None:
    text = (
        "Attempting SSH reboot...Stopped while logging in (ssh 127.0.9.1:22: busy).\n"
        "SSH to bld-1 stayed busy; no power control used.\n"
        "Attempting Redfish reboot...initiated, waiting for it to come back...\n"
        "Interrupted: SlaveAPI stopped while the action was running."
    )
    assert escalation_steps(text) == [EscalationStep("ssh", "stopped"), EscalationStep("redfish", "stopped")]
    assert escalation_steps({"not": "text"}) == []
    assert escalation_steps("") == []


def test_the_parser_reads_what_a_real_escalation_writes() -> None:
    fakes = make_fakes([FakeHost("bld-1", "127.0.9.1", bmc_ip="127.0.10.1", outlet="pdu1.example.test:AA1")])
    fakes.ssh.script_logins("127.0.9.1", then=SSHAuthenticationFailed("ssh 127.0.9.1:22: every login was rejected"))
    text, _ = run_reboot(fakes)
    steps = escalation_steps(text)
    assert [step.method for step in steps] == ["ssh", "mozpool", "redfish", "ipmi"]
    assert steps[0].outcome == "failed" and steps[-1].outcome == "success"


# Counting result events.


def test_result_events_count_requests_finishes_durations_and_escalation_steps() -> None:
    hub = ResultEvents()
    metrics = ServiceMetrics()
    stop = metrics.follow(hub)
    reboot = _result(0, "")
    hub.publish(REQUESTED, reboot)
    reboot.state, reboot.start_timestamp = 1, 1000
    hub.publish(STARTED, reboot)
    reboot.state, reboot.text, reboot.finish_timestamp = SUCCESS, _WALK, 1400
    hub.publish(FINISHED, reboot)
    failed = _result(FAILURE, "Not started: its start could not be recorded (disk full).", "uptime", 2)
    hub.publish(REQUESTED, failed)
    hub.publish(FINISHED, failed)

    samples = _samples(metrics)
    assert _value(samples, "slaveapi_actions_requested_total", action="reboot") == 1
    assert _value(samples, "slaveapi_actions_requested_total", action="uptime") == 1
    assert _value(samples, "slaveapi_actions_finished_total", action="reboot", state="success") == 1
    assert _value(samples, "slaveapi_actions_finished_total", action="uptime", state="failure") == 1
    # 400 seconds: in the 600 s bucket, not the 300 s one; a result that never started has no duration.
    assert _value(samples, "slaveapi_action_duration_seconds_bucket", action="reboot", le="300.0") == 0
    assert _value(samples, "slaveapi_action_duration_seconds_bucket", action="reboot", le="600.0") == 1
    assert _value(samples, "slaveapi_action_duration_seconds_sum", action="reboot") == 400
    assert _value(samples, "slaveapi_action_duration_seconds_count", action="uptime") is None
    assert _value(samples, "slaveapi_escalation_steps_total", method="ssh", outcome="failed") == 1
    assert _value(samples, "slaveapi_escalation_steps_total", method="mozpool", outcome="skipped") == 1
    assert _value(samples, "slaveapi_escalation_steps_total", method="pdu", outcome="success") == 1

    stop()
    hub.publish(REQUESTED, _result(0, "", requestid=3))
    assert _value(_samples(metrics), "slaveapi_actions_requested_total", action="reboot") == 1


def test_only_reboots_have_escalation_steps() -> None:
    hub = ResultEvents()
    metrics = ServiceMetrics()
    metrics.follow(hub)
    hub.publish(FINISHED, _result(SUCCESS, "Attempting SSH reboot...Success!", action="uptime"))
    assert not [key for key in _samples(metrics) if key[0] == "slaveapi_escalation_steps_total"]


def test_two_services_count_apart_and_the_process_metrics_are_there() -> None:
    first, second = ServiceMetrics(), ServiceMetrics(version="9.9")
    hub = ResultEvents()
    first.follow(hub)
    hub.publish(REQUESTED, _result(0, ""))
    assert _value(_samples(first), "slaveapi_actions_requested_total", action="reboot") == 1
    samples = _samples(second)
    assert _value(samples, "slaveapi_actions_requested_total", action="reboot") is None
    assert _value(samples, "slaveapi_build_info", version="9.9") == 1
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert "python_gc_collections_total" in names


# Remote calls.


def test_remote_calls_are_counted_by_client_and_outcome_and_timed_on_the_clock() -> None:
    fakes = make_fakes([FakeHost("bld-1", "127.0.9.1", bmc_ip="127.0.10.1", outlet="pdu1.example.test:AA1")])
    fakes.ssh.script_logins("127.0.9.1", then=SSHAuthenticationFailed("ssh 127.0.9.1:22: every login was rejected"))
    fakes.ipmi.outcomes["127.0.10.1"] = Outcome(IPMITimeout("IPMI power off on 127.0.10.1: no answer"), after=30.0)
    metrics = ServiceMetrics()
    measured = measured_clients(fakes.clients(), metrics, fakes.clock)
    for field in dataclasses.fields(measured):
        setattr(fakes, field.name, getattr(measured, field.name))

    text, _ = run_reboot(fakes)

    assert text.endswith("Attempting PDU reboot...Success!")
    samples = _samples(metrics)
    assert _value(samples, "slaveapi_remote_calls_total", client="ssh", outcome="error") == 1
    assert _value(samples, "slaveapi_remote_calls_total", client="ipmi", outcome="timeout") == 1
    assert _value(samples, "slaveapi_remote_calls_total", client="ipmi", outcome="ok") == 1  # available()
    assert _value(samples, "slaveapi_remote_calls_total", client="pdu", outcome="ok") == 1
    assert (_value(samples, "slaveapi_remote_calls_total", client="prober", outcome="ok") or 0) >= 2
    # The IPMI power cycle gave up after 30 s of the clock; availability took none.
    assert _value(samples, "slaveapi_remote_call_seconds_sum", client="ipmi") == 30.0
    assert _value(samples, "slaveapi_remote_call_seconds_bucket", client="ipmi", le="10.0") == 1
    assert _value(samples, "slaveapi_remote_call_seconds_bucket", client="ipmi", le="30.0") == 2


def test_the_proxy_passes_results_attributes_and_plain_methods_through_and_skips_cancelled_calls() -> None:
    clock = Clock()
    metrics = ServiceMetrics()

    class Remote:
        name = "remote"

        def __init__(self) -> None:
            self.waiting: Deferred[str] = Deferred()
            self.closed = False

        async def ask(self, what: str) -> str:
            return await self.waiting + what

        def qualify(self, name: str) -> str:
            return name + ".example.test"

        async def close(self) -> None:
            self.closed = True

    remote = Remote()
    proxy = metrics.measure("dns", remote, clock)
    assert isinstance(proxy, MeasuredClient) and unwrapped(proxy) is remote
    assert metrics.measure("dns", proxy, clock) is proxy
    assert proxy.name == "remote" and proxy.qualify("bld-1") == "bld-1.example.test"

    answered = Deferred.fromCoroutine(proxy.ask("!"))
    clock.advance(2)
    remote.waiting.callback("yes")
    assert answered.result == "yes!"
    remote.waiting = Deferred()
    cancelled = Deferred.fromCoroutine(proxy.ask("?"))
    cancelled.cancel()
    cancelled.addErrback(lambda _: None)
    Deferred.fromCoroutine(proxy.close())
    assert remote.closed

    samples = _samples(metrics)
    assert _value(samples, "slaveapi_remote_calls_total", client="dns", outcome="ok") == 1
    assert _value(samples, "slaveapi_remote_call_seconds_sum", client="dns") == 2.0
    assert _value(samples, "slaveapi_remote_calls_total", client="dns", outcome="error") is None


@pytest_twisted.ensureDeferred
async def test_a_reload_keeps_measured_clients_and_shares_the_real_ssh_client(tmp_path: Any) -> None:
    from twisted.internet import reactor

    holder = ContextHolder(load_config(_write(tmp_path, 10)), reactor, str(tmp_path), metrics=ServiceMetrics())
    old = holder.context()
    holder.startService()
    try:
        assert isinstance(old.clients.ssh, MeasuredClient) and isinstance(unwrapped(old.clients.ssh), SSHClient)
        _write(tmp_path, 20)
        assert holder.reload() is True
        new = holder.context()
        # Kept clients are kept as they were measured: one proxy, released once.
        assert new.clients.pdu is old.clients.pdu and new.clients.prober is old.clients.prober
        assert new.clients.ipmi is not old.clients.ipmi
        assert isinstance(new.clients.ssh, MeasuredClient) and isinstance(unwrapped(new.clients.ssh), SSHClient)
        assert unwrapped(new.clients.ssh) is not unwrapped(old.clients.ssh)
    finally:
        await holder.stopService()


# Gauges read at scrape time.


@pytest_twisted.ensureDeferred
async def test_the_processor_gauges_show_a_running_action(store: Any, context_box: SimpleNamespace) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    hub = ResultEvents()
    metrics = ServiceMetrics()
    metrics.follow(hub)
    processor = ActionProcessor(store, lambda: context_box.context, concurrency=1, reactor=clock, events=hub)
    metrics.watch_processor(processor.queued, processor.in_flight)
    gate: Deferred[str] = Deferred()
    began: Deferred[None] = Deferred()

    async def body(run: ActionRun) -> str:
        if not began.called:
            began.callback(None)
        return await gate

    both_finished: Deferred[None] = Deferred()
    finished: list[int] = []

    def heard(event: Any) -> None:
        # "finished" is published once the final row is written, after wait() fires.
        if event.kind == "finished":
            finished.append(event.requestid)
            if len(finished) == 2:
                both_finished.callback(None)

    hub.subscribe(heard)
    action = Action(name="fake_action", run=body, exclusive=True)
    result = await processor.submit("bld-1", action)
    second = await processor.submit("bld-2", action)
    await began
    samples = _samples(metrics)
    assert _value(samples, "slaveapi_actions_in_flight") == 1
    assert _value(samples, "slaveapi_actions_queued", kind="changing") == 1
    assert _value(samples, "slaveapi_actions_queued", kind="read-only") == 0

    clock.advance(90)
    gate.callback("done")
    await processor.wait(result, 3600)
    await processor.wait(second, 3600)
    await both_finished
    samples = _samples(metrics)
    assert _value(samples, "slaveapi_actions_in_flight") == 0
    assert _value(samples, "slaveapi_actions_queued", kind="changing") == 0
    assert _value(samples, "slaveapi_actions_finished_total", action="fake_action", state="success") == 2
    assert _value(samples, "slaveapi_action_duration_seconds_bucket", action="fake_action", le="60.0") == 1
    assert _value(samples, "slaveapi_action_duration_seconds_bucket", action="fake_action", le="120.0") == 2


def test_health_verdicts_are_counted_from_the_store() -> None:
    store = MemoryHealthStore()
    store.save_sweep(
        [
            HealthRecord(name=name, verdict=verdict, evidence=(), since=1.0, checked_at=2.0, pool=None)
            for name, verdict in (("bld-1", OK), ("bld-2", OK), ("bld-3", DOWN))
        ],
        3.0,
    )
    store.open()
    metrics = ServiceMetrics()
    metrics.watch_health(store, VERDICTS)
    samples = _samples(metrics)
    assert [_value(samples, "slaveapi_health_verdicts", verdict=verdict) for verdict in VERDICTS] == [2, 0, 1, 0]


# The route.


async def _get(web: SlaveAPIWeb, token: str | None = None) -> tuple[int, bytes, list[bytes]]:
    stub: Any = StubTreq(web.resource())  # StubTreq builds its methods at run time
    headers = {b"Authorization": [b"Bearer " + token.encode()]} if token else {}
    response = await stub.get("http://127.0.0.1/metrics", headers=headers)
    return response.code, await stub.content(response), response.headers.getRawHeaders(b"content-type")


@pytest_twisted.ensureDeferred
async def test_the_route_serves_the_exposition_and_needs_a_token_only_under_protect_reads() -> None:
    box = SimpleNamespace(context=SimpleNamespace(config=make_config(tokens={"dash": "d" * 32})))
    metrics = ServiceMetrics()
    web = SlaveAPIWeb(cast(Any, None), cast(Any, None), lambda: box.context, metrics=metrics)

    status, body, content_type = await _get(web)
    assert status == 200
    assert content_type == [b"text/plain; version=0.0.4; charset=utf-8"]
    names = {family.name for family in text_string_to_metric_families(body.decode("utf-8"))}
    assert {"slaveapi_build_info", "process_cpu_seconds"} <= names

    box.context = SimpleNamespace(config=make_config(tokens={"dash": "d" * 32}, protect_reads=True))
    status, body, _ = await _get(web)
    assert status == 401 and b'"unauthorized"' in body
    assert (await _get(web, token="not-the-token-at-all-0123456789"))[0] == 401
    assert (await _get(web, token="d" * 32))[0] == 200


@pytest_twisted.ensureDeferred
async def test_a_service_without_metrics_answers_503() -> None:
    box = SimpleNamespace(context=SimpleNamespace(config=make_config()))
    status, body, _ = await _get(SlaveAPIWeb(cast(Any, None), cast(Any, None), lambda: box.context))
    assert status == 503 and b"metrics: this service does not collect metrics" in body


@pytest.mark.parametrize("state", [SUCCESS, FAILURE])
def test_finished_states_are_words(state: int) -> None:
    hub = ResultEvents()
    metrics = ServiceMetrics()
    metrics.follow(hub)
    hub.publish(FINISHED, _result(state, "", action="uptime"))
    word = {SUCCESS: "success", FAILURE: "failure"}[state]
    assert _value(_samples(metrics), "slaveapi_actions_finished_total", action="uptime", state=word) == 1
