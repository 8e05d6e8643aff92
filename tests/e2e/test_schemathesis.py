"""
Schemathesis against a real C{twistd slaveapi --lab} process, driven by the
document the service serves at C{/openapi.json}.

Every GET is tried, and the POSTs of the actions that change nothing
(C{x-changes-machine} false: uptime, last activity, power status), with
requests generated from the document: none may be a 5xx, and every answer
(status, content type, body) must be one the document describes. C{/events}
is left out: its answer is a stream that does not end (tests/e2e covers it).
The run is bounded: a few examples per operation, no shrinking, and a
timeout on every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NOT_SET
from schemathesis.filters import HasAPIOperation

from tests.e2e.harness import ServiceProcess, start_service

#: Examples generated per operation: enough to reach each parameter's edges, quick on 2 cores.
EXAMPLES = 12
#: Seconds any one request may take (a POST's waittime is capped below it).
REQUEST_TIMEOUT = 30.0
#: A machine of the lab: each operation on a machine is also asked about it, so that
#: answers about a known machine (not only 400s and 404s) are checked too.
LAB_MACHINE = "bld-linux64-lab-001"
#: Left out: its answer never ends.
STREAMS = ("/events",)
_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: Any) -> Iterator[ServiceProcess]:
    running = start_service(str(tmp_path_factory.mktemp("schemathesis")), "--lab", "6")
    yield running
    running.stop()


def _tried(ctx: HasAPIOperation) -> bool:
    """GETs (but the streams), and the POSTs of the actions that change no machine."""
    operation = ctx.operation
    if operation.path in STREAMS:
        return False
    if operation.method.upper() == "GET":
        return True
    return operation.definition.raw.get("x-changes-machine") is False


@pytest.fixture(scope="module")
def lab_schema(lab: ServiceProcess) -> Any:
    schema = schemathesis.openapi.from_url(f"{lab.url}/openapi.json", timeout=REQUEST_TIMEOUT)
    return schema.include(_tried)


def _limit_waittime(case: Any) -> None:
    """A read-only action on a lab machine ends within seconds: never hold a request longer."""
    for fields in (case.body, case.query):
        if isinstance(fields, dict) and isinstance(fields.get("waittime"), int | float):
            fields["waittime"] = min(fields["waittime"], 5)


def _run(operation: Any, base_url: str) -> list[int]:
    """
    Up to L{EXAMPLES} generated requests to C{operation}, then one about
    L{LAB_MACHINE} when it is about a machine; raises at the first answer
    that breaks a check, else returns the statuses, that one last.
    """
    made = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def examples(case: Any) -> None:
        _limit_waittime(case)
        made.append(case.call_and_validate(base_url=base_url, checks=_CHECKS, timeout=REQUEST_TIMEOUT).status_code)

    examples()
    if "{slave}" in operation.path:
        known = operation.Case(
            path_parameters={"slave": LAB_MACHINE},
            body={"waittime": 5} if operation.method.upper() == "POST" else NOT_SET,
            media_type="application/x-www-form-urlencoded" if operation.method.upper() == "POST" else None,
        )
        made.append(known.call_and_validate(base_url=base_url, checks=_CHECKS, timeout=REQUEST_TIMEOUT).status_code)
    return made


def test_answers_conform_to_the_document(lab: ServiceProcess, lab_schema: Any) -> None:
    failed = {}
    made = {}
    for found in lab_schema.get_all_operations():
        operation = found.ok()
        label = f"{operation.method.upper()} {operation.path}"
        try:
            made[label] = _run(operation, lab.url)
        except (Exception, BaseExceptionGroup) as error:
            failed[label] = str(error)[:2000]
    assert failed == {}
    assert made and all(made.values()), made
    # The answers about a known machine were real ones, checked against their schemas.
    assert made["GET /slaves/{slave}"][-1] == 200
    assert made["GET /slaves/{slave}/actions/reboot"][-1] == 200
    assert made["POST /slaves/{slave}/actions/buildslave_uptime"][-1] in (200, 202)


def test_the_served_document_lists_the_routes_tried(lab_schema: Any) -> None:
    tried = {(result.ok().method.upper(), result.ok().path) for result in lab_schema.get_all_operations()}
    assert ("GET", "/slaves/{slave}") in tried
    assert ("POST", "/slaves/{slave}/actions/buildslave_uptime") in tried
    assert ("POST", "/slaves/{slave}/actions/reboot") not in tried
    assert ("GET", "/events") not in tried
