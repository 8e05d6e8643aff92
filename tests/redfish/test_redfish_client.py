"""Unit tests for slaveapi.clients.redfish against an in-memory Redfish service (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyClass, verifyObject

from slaveapi.clients import BootOverride
from slaveapi.clients.redfish import (
    RedfishAuthError,
    RedfishClient,
    RedfishError,
    RedfishTimeout,
    redfish_login,
)
from slaveapi.config import RedfishConfig, Secret
from slaveapi.interfaces import IRedfish

from .fakeredfish import PASSWORD, TOKEN, USER, FakeRedfish, system

T = TypeVar("T")
BMC = "bmc1.test"


def _client(fake: FakeRedfish, password: str = PASSWORD, **settings: Any) -> tuple[RedfishClient, StubTreq, Clock]:
    stub = StubTreq(fake)
    clock = Clock()
    config = RedfishConfig(scheme="http", **settings)
    return RedfishClient(config, USER, Secret(password), clock, http=stub), stub, clock


def _run(stub: StubTreq, work: Coroutine[Any, Any, T]) -> T:
    """The result of C{work}, which must finish once the in-memory requests are answered."""
    d = Deferred.fromCoroutine(work)
    stub.flush()
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the call did not finish"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


def test_the_client_provides_its_interface() -> None:
    client, _, _ = _client(FakeRedfish())
    assert verifyObject(IRedfish, client)
    assert verifyClass(IRedfish, RedfishClient)


def test_power_state_discovers_the_only_system_over_basic_auth() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    assert _run(stub, client.power_state(BMC)) == "on"
    assert [(seen.method, seen.path) for seen in fake.requests] == [
        ("GET", "/redfish/v1"),
        ("GET", "/redfish/v1/Systems"),
        ("GET", "/redfish/v1/Systems/1"),
    ]
    assert fake.requests[1].headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("redfish", "ours"),
    [("On", "on"), ("Off", "off"), ("PoweringOn", "on"), ("PoweringOff", "on"), ("Paused", "on")],
)
def test_power_states_are_mapped(redfish: str, ours: str) -> None:
    client, stub, _ = _client(FakeRedfish(systems={"1": system("1", power=redfish)}))
    assert _run(stub, client.power_state(BMC)) == ours


def test_an_unknown_power_state_is_an_error() -> None:
    client, stub, _ = _client(FakeRedfish(systems={"1": system("1", power="Sideways")}))
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.power_state(BMC))
    assert str(raised.value) == f"Redfish {BMC}: reading the power state failed: unknown PowerState 'Sideways'"


def test_several_systems_need_a_system_id() -> None:
    fake = FakeRedfish(systems={"a": system("a"), "b": system("b", power="Off")})
    client, stub, _ = _client(fake)
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.power_state(BMC))
    assert str(raised.value) == (f"Redfish {BMC}: finding the system failed: 2 systems (a, b); set [redfish] system_id")
    chosen, stub, _ = _client(fake, system_id="b")
    assert _run(stub, chosen.power_state(BMC)) == "off"
    missing, stub, _ = _client(fake, system_id="c")
    with pytest.raises(RedfishError, match=r"no system 'c'; the BMC has a, b$"):
        _run(stub, missing.power_state(BMC))


def test_health_prefers_the_rollup() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    assert _run(stub, client.health(BMC)) == "Warning"
    del fake.systems["1"]["Status"]["HealthRollup"]
    assert _run(stub, client.health(BMC)) == "OK"
    del fake.systems["1"]["Status"]
    assert _run(stub, client.health(BMC)) is None


def test_reset_posts_an_advertised_reset_type() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    _run(stub, client.reset(BMC, "ForceOff"))
    assert fake.requests[-1].method == "POST"
    assert fake.requests[-1].path == "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    assert fake.requests[-1].body == b'{"ResetType": "ForceOff"}'
    assert _run(stub, client.power_state(BMC)) == "off"


def test_a_reset_type_not_advertised_is_refused_before_sending() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.reset(BMC, "Nmi"))
    allowed = "On, ForceOff, ForceRestart"
    assert str(raised.value) == f"Redfish {BMC}: reset Nmi failed: not offered; the BMC allows {allowed}"
    assert not any(seen.method == "POST" for seen in fake.requests)


def test_boot_once_patches_the_override() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    _run(stub, client.set_boot_once(BMC, "Pxe"))
    assert fake.requests[-1].method == "PATCH"
    assert fake.systems["1"]["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    assert fake.systems["1"]["Boot"]["BootSourceOverrideEnabled"] == "Once"


def test_boot_override_reads_back_what_boot_once_set() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    assert _run(stub, client.boot_override(BMC)) is None  # Disabled, target None
    _run(stub, client.set_boot_once(BMC, "Hdd"))
    assert _run(stub, client.boot_override(BMC)) == BootOverride("Hdd", once=True)
    assert fake.requests[-1].method == "GET"


@pytest.mark.parametrize(
    ("boot", "expected"),
    [
        ({"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "Pxe"}, None),
        ({"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "None"}, None),
        ({"BootSourceOverrideEnabled": "Once"}, None),
        ({"BootSourceOverrideTarget": "Pxe"}, None),
        (
            {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "BiosSetup"},
            BootOverride("BiosSetup", once=True),
        ),
        # For every boot, the next one included: reported, and not as "once".
        (
            {"BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideTarget": "Pxe"},
            BootOverride("Pxe", once=False),
        ),
    ],
)
def test_boot_override_is_none_unless_enabled_with_a_target(
    boot: dict[str, Any], expected: BootOverride | None
) -> None:
    fake = FakeRedfish()
    fake.systems["1"]["Boot"] = boot
    client, stub, _ = _client(fake)
    assert _run(stub, client.boot_override(BMC)) == expected


def test_a_system_without_boot_has_no_override() -> None:
    fake = FakeRedfish()
    del fake.systems["1"]["Boot"]
    client, stub, _ = _client(fake)
    assert _run(stub, client.boot_override(BMC)) is None


@pytest.mark.parametrize(
    ("boot", "reason"),
    [
        ("Pxe", "Boot is not a JSON object"),
        (
            {"BootSourceOverrideEnabled": "Sometimes", "BootSourceOverrideTarget": "Pxe"},
            "unknown BootSourceOverrideEnabled 'Sometimes'",
        ),
        ({"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": 7}, "unknown BootSourceOverrideTarget 7"),
    ],
)
def test_an_unreadable_boot_override_is_an_error(boot: Any, reason: str) -> None:
    fake = FakeRedfish()
    fake.systems["1"]["Boot"] = boot
    client, stub, _ = _client(fake)
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.boot_override(BMC))
    assert str(raised.value) == f"Redfish {BMC}: reading the boot override failed: {reason}"


def test_a_boot_target_not_allowed_is_refused() -> None:
    fake = FakeRedfish()
    client, stub, _ = _client(fake)
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.set_boot_once(BMC, "BiosSetup"))
    assert str(raised.value) == (
        f"Redfish {BMC}: boot override BiosSetup failed: not offered; the BMC allows None, Pxe, Hdd"
    )
    assert not any(seen.method == "PATCH" for seen in fake.requests)
    with pytest.raises(ValueError, match="expected one of Pxe, Hdd, BiosSetup"):
        _run(stub, client.set_boot_once(BMC, "Floppy"))


def test_a_session_is_used_and_deleted() -> None:
    fake = FakeRedfish(sessions=True)
    client, stub, _ = _client(fake)
    assert _run(stub, client.power_state(BMC)) == "on"
    assert [(seen.method, seen.path) for seen in fake.requests] == [
        ("GET", "/redfish/v1"),
        ("POST", "/redfish/v1/SessionService/Sessions"),
        ("GET", "/redfish/v1/Systems"),
        ("GET", "/redfish/v1/Systems/1"),
        ("DELETE", "/redfish/v1/SessionService/Sessions/7"),
    ]
    assert all(seen.headers.get("x-auth-token") == TOKEN for seen in fake.requests[2:])
    assert not any("authorization" in seen.headers for seen in fake.requests)
    assert fake.open_sessions == set()


def test_the_session_is_deleted_when_the_call_fails() -> None:
    fake = FakeRedfish(sessions=True)
    client, stub, _ = _client(fake)
    with pytest.raises(RedfishError):
        _run(stub, client.reset(BMC, "Nmi"))
    assert fake.requests[-1].method == "DELETE"
    assert fake.open_sessions == set()


@pytest.mark.parametrize("status", [404, 405, 501, 503])
def test_refused_sessions_fall_back_to_basic_auth(status: int) -> None:
    fake = FakeRedfish(sessions=True, session_status=status)
    client, stub, _ = _client(fake)
    assert _run(stub, client.power_state(BMC)) == "on"
    assert fake.requests[2].headers["authorization"].startswith("Basic ")
    assert not any(seen.method == "DELETE" for seen in fake.requests)


@pytest.mark.parametrize("sessions", [False, True])
def test_wrong_credentials_say_so_without_the_password(sessions: bool) -> None:
    wrong = "wrong-Pa55word-xyz"
    fake = FakeRedfish(sessions=sessions)
    client, stub, _ = _client(fake, password=wrong)
    with capturedLogs() as events, pytest.raises(RedfishAuthError) as raised:
        _run(stub, client.power_state(BMC))
    step = "opening a session" if sessions else "reading the Systems collection"
    assert str(raised.value) == f"Redfish {BMC}: {step} failed: HTTP 401: credentials refused"
    lines = [formatEvent(event) for event in events] + [repr(event) for event in events]
    assert not any(wrong in line for line in lines + [str(raised.value), repr(raised.value)])


def test_a_hung_call_times_out_on_the_clock() -> None:
    fake = FakeRedfish(hang="/Systems")
    client, stub, clock = _client(fake, timeout=5.0)
    d = Deferred.fromCoroutine(client.power_state(BMC))
    stub.flush()
    assert not d.called
    clock.advance(5)
    clock.advance(0)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(RedfishTimeout)
    assert str(failures[0].value) == f"Redfish {BMC}: reading the Systems collection failed: no answer within 5s"


def test_a_refused_connection_is_retried_then_unavailable() -> None:
    class Refusing:
        calls = 0

        async def request(self, method: str, url: str, **kwargs: Any) -> Any:
            from twisted.internet.error import ConnectionRefusedError

            Refusing.calls += 1
            raise ConnectionRefusedError()

    clock = Clock()
    client = RedfishClient(RedfishConfig(retries=2), USER, Secret(PASSWORD), clock, http=Refusing())
    d = Deferred.fromCoroutine(client.power_state(BMC))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures
    assert str(failures[0].value) == f"Redfish {BMC}: reading the service root failed: connection refused"
    assert Refusing.calls == 3
    assert _run_available(client) is False


def _run_available(client: RedfishClient) -> bool:
    results: list[Any] = []
    Deferred.fromCoroutine(client.available(BMC)).addBoth(results.append)
    return bool(results[0])


def test_available_when_the_root_answers() -> None:
    client, stub, _ = _client(FakeRedfish())
    assert _run(stub, client.available(BMC)) is True


def test_a_redfish_error_message_is_quoted_without_the_password() -> None:
    class Echoing(FakeRedfish):
        def answer(self, seen: Any) -> tuple[int, Any, dict[str, str]]:
            if seen.method == "POST":
                return 400, {"error": {"message": f"bad request from {USER}:{PASSWORD}"}}, {}
            return super().answer(seen)

    client, stub, _ = _client(Echoing())
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.reset(BMC, "ForceRestart"))
    assert str(raised.value) == (
        f"Redfish {BMC}: reset ForceRestart failed: HTTP 400 Bad Request: bad request from {USER}:********"
    )


def test_login_falls_back_to_the_ipmi_user_and_password() -> None:
    ipmi, redfish = Secret("i"), Secret("r")
    assert redfish_login(RedfishConfig(), "ADMIN", ipmi, None) == ("ADMIN", ipmi)
    assert redfish_login(RedfishConfig(username="ops"), "ADMIN", ipmi, redfish) == ("ops", redfish)


def test_a_root_wanting_credentials_is_available_but_a_missing_one_is_not() -> None:
    class Guarded(FakeRedfish):
        status = 401

        def answer(self, seen: Any) -> tuple[int, Any, dict[str, str]]:
            return self.status, {"error": {"message": "no"}}, {}

    fake = Guarded()
    client, stub, _ = _client(fake)
    assert _run(stub, client.available(BMC)) is True
    fake.status = 404
    assert _run(stub, client.available(BMC)) is False


# -- powercycle ------------------------------------------------------------------------------


def _resets_sent(fake: FakeRedfish) -> list[str]:
    return [
        json.loads(seen.body)["ResetType"]
        for seen in fake.requests
        if seen.method == "POST" and seen.path.endswith("/Actions/ComputerSystem.Reset")
    ]


def _until_called(d: Deferred[Any], stub: StubTreq, clock: Clock, step: float = 1.0, most: int = 200) -> None:
    """Advance the clock C{step} at a time (answering requests) until C{d} has fired, at most C{most} times."""
    for _ in range(most):
        stub.flush()
        if d.called:
            return
        clock.advance(step)
    raise AssertionError("did not fire")


def test_powercycle_sends_force_off_waits_for_off_then_on_and_waits_for_on() -> None:
    fake = FakeRedfish(applied_after=1)
    client, stub, clock = _client(fake, poll_interval=2.0)
    lines: list[str] = []
    d = Deferred.fromCoroutine(client.powercycle(BMC, lines.append))
    results: list[Any] = []
    d.addBoth(results.append)
    _until_called(d, stub, clock)
    assert results == [None]
    assert _resets_sent(fake) == ["ForceOff", "On"]
    assert fake.systems["1"]["PowerState"] == "On"
    assert lines == ["ForceOff requested", "powered off", "power on requested", "powered on"]
    # The BMC showed each state one read late: one poll interval each.
    assert clock.seconds() == 4.0


def test_powercycle_of_a_machine_that_is_off_only_powers_it_on() -> None:
    fake = FakeRedfish(systems={"1": system("1", power="Off")})
    client, stub, _ = _client(fake)
    _run(stub, client.powercycle(BMC))
    assert _resets_sent(fake) == ["On"]
    assert fake.systems["1"]["PowerState"] == "On"


def test_powercycle_needs_force_off_and_on_and_sends_nothing_otherwise() -> None:
    fake = FakeRedfish()
    fake.systems["1"]["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = ["On", "PowerCycle"]
    client, stub, _ = _client(fake)
    with pytest.raises(RedfishError) as raised:
        _run(stub, client.powercycle(BMC))
    assert str(raised.value) == (
        f"Redfish {BMC}: choosing a reset failed: a power cycle needs ForceOff and On; the BMC offers On, PowerCycle"
    )
    assert _resets_sent(fake) == []


def test_cancelling_between_off_and_on_still_powers_the_machine_on() -> None:
    fake = FakeRedfish(applied_after=1)
    client, stub, clock = _client(fake, poll_interval=2.0)
    lines: list[str] = []
    d = Deferred.fromCoroutine(client.powercycle(BMC, lines.append))
    results: list[Any] = []
    d.addBoth(results.append)
    stub.flush()
    # ForceOff was sent; the first read still shows On, so the poll pauses.
    assert _resets_sent(fake) == ["ForceOff"] and not results
    with capturedLogs() as events:
        d.cancel()
        assert len(results) == 1 and isinstance(results[0].value, CancelledError)
        closed = Deferred.fromCoroutine(client.close())
        assert not closed.called
        _until_called(closed, stub, clock)
    assert _resets_sent(fake) == ["ForceOff", "On"]
    assert fake.systems["1"]["PowerState"] == "On"
    # Nothing is told to a caller that has gone.
    assert lines == ["ForceOff requested"]
    logged = [formatEvent(event) for event in events]
    assert f"Redfish {BMC}: finished the power-on despite the cancellation" in logged


def test_power_that_stays_on_after_force_off_still_gets_on_and_fails() -> None:
    fake = FakeRedfish(ignored={"ForceOff"})
    client, stub, clock = _client(fake, poll_interval=2.0, power_timeout=10.0)
    lines: list[str] = []
    d = Deferred.fromCoroutine(client.powercycle(BMC, lines.append))
    results: list[Any] = []
    d.addBoth(results.append)
    _until_called(d, stub, clock)
    assert isinstance(results[0].value, RedfishError)
    assert str(results[0].value) == f"Redfish {BMC}: ForceOff failed: the power was still on after 10s"
    assert _resets_sent(fake) == ["ForceOff", "On"]
    assert "ForceOff failed (the power was still on after 10s); power on requested all the same" in lines
    assert clock.seconds() == 10.0


def test_power_that_stays_off_after_on_fails_naming_the_step() -> None:
    fake = FakeRedfish(ignored={"On"})
    client, stub, clock = _client(fake, poll_interval=2.0, power_timeout=10.0)
    d = Deferred.fromCoroutine(client.powercycle(BMC))
    results: list[Any] = []
    d.addBoth(results.append)
    _until_called(d, stub, clock)
    assert str(results[0].value) == f"Redfish {BMC}: On failed: the power was still off after 10s"
    assert _resets_sent(fake) == ["ForceOff", "On"]


def test_a_force_off_without_an_answer_is_followed_by_on() -> None:
    fake = FakeRedfish(hang="ComputerSystem.Reset")
    client, stub, clock = _client(fake, timeout=5.0)
    d = Deferred.fromCoroutine(client.powercycle(BMC))
    results: list[Any] = []
    d.addBoth(results.append)
    stub.flush()
    clock.advance(5)
    clock.advance(0)
    stub.flush()
    # The ForceOff timed out; On is sent all the same (and hangs too).
    assert [seen.method for seen in fake.requests if seen.path.endswith("ComputerSystem.Reset")] == ["POST", "POST"]
    assert [json.loads(seen.body)["ResetType"] for seen in fake.requests if seen.method == "POST"] == [
        "ForceOff",
        "On",
    ]
    clock.advance(5)
    clock.advance(0)
    stub.flush()
    assert isinstance(results[0].value, RedfishTimeout)
    assert "reset On failed" in str(results[0].value)
