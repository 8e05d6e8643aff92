"""
Tests for slaveapi.clients.pdu against a real net-snmp snmpd on loopback.

snmpd serves the Sentry3 outlet table and the APC outlet branch through a
C{pass_persist} handler (see L{tests.pdu.peers}); the handler logs every SET
it applies, so the tests can assert exactly what was sent. The PDU host
names resolve to 127.0.0.1 through the client's C{resolve} hook, as lab
names do through the lab's DNS.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from slaveapi.clients.inventory import PDUOutlet
from slaveapi.clients.pdu import PDUClient, PDUError, _NoAnswer
from slaveapi.config import Secret, SNMPConfig
from tests.pdu.peers import APC_HOST, SENTRY_HOST, V3_USER, Snmpd

SENTRY_CONTROL = ".1.3.6.1.4.1.1718.3.2.3.1.11"
APC_CONTROL = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"


async def _resolve(host: str) -> str | None:
    return {SENTRY_HOST: "127.0.0.1", APC_HOST: "127.0.0.1"}.get(host)


def _client(snmpd: Snmpd, community: str | None = None, **overrides: Any) -> PDUClient:
    from twisted.internet import reactor

    # Generous timeouts: snmpd answers at once, and a busy machine must not turn that into a failure.
    settings: dict[str, Any] = {
        "port": snmpd.port,
        "timeout": 5.0,
        "retries": 1,
        "pdu_types": {APC_HOST: "apc"},
        "state_timeout": 30.0,
        "poll_interval": 0.05,
        "power_delay": 0.05,
    }
    settings.update(overrides)
    return PDUClient(
        reactor,
        SNMPConfig(**settings),
        Secret(community if community is not None else snmpd.community),
        Secret(snmpd.auth_key),
        Secret(snmpd.priv_key),
        resolve=_resolve,
    )


@pytest_twisted.ensureDeferred
async def test_sentry_off_on_with_read_back(snmpd: Snmpd) -> None:
    client = _client(snmpd)
    outlet = PDUOutlet(SENTRY_HOST, "AA2")
    try:
        assert await client.outlet_state(outlet) is True
        await client.set_outlet(outlet, False)
        assert await client.outlet_state(outlet) is False
        await client.set_outlet(outlet, True)
        assert await client.outlet_state(outlet) is True
        # Tower B of the same PDU is a different row: still off.
        assert await client.outlet_state(PDUOutlet(SENTRY_HOST, "BA1")) is False
    finally:
        await client.close()
    assert snmpd.sets() == [f"{SENTRY_CONTROL}.1.1.2 2", f"{SENTRY_CONTROL}.1.1.2 1"]


@pytest_twisted.ensureDeferred
async def test_sentry_powercycle_waits_through_wait_states(snmpd: Snmpd) -> None:
    client = _client(snmpd)
    steps: list[str] = []
    try:
        await client.powercycle(PDUOutlet(SENTRY_HOST, "AA3"), steps.append)
        assert await client.outlet_state(PDUOutlet(SENTRY_HOST, "AA3")) is True
    finally:
        await client.close()
    assert snmpd.sets() == [f"{SENTRY_CONTROL}.1.1.3 2", f"{SENTRY_CONTROL}.1.1.3 1"]
    assert steps == [
        f"switching PDU outlet {SENTRY_HOST}:AA3 off",
        f"PDU outlet {SENTRY_HOST}:AA3 is off; switching it on in 0.05s",
        f"switching PDU outlet {SENTRY_HOST}:AA3 on",
        f"PDU outlet {SENTRY_HOST}:AA3 is on",
    ]


@pytest_twisted.ensureDeferred
async def test_apc_off_on_and_powercycle(snmpd: Snmpd) -> None:
    client = _client(snmpd)
    outlet = PDUOutlet(APC_HOST, "AA1")
    try:
        assert client.pdu_type(APC_HOST) == "apc"
        assert await client.outlet_state(outlet) is True
        await client.set_outlet(outlet, False)
        assert await client.outlet_state(outlet) is False
        await client.set_outlet(outlet, True)
        assert await client.outlet_state(outlet) is True
        await client.powercycle(PDUOutlet(APC_HOST, "AA3"))
        assert await client.outlet_state(PDUOutlet(APC_HOST, "AA3")) is True
    finally:
        await client.close()
    assert snmpd.sets() == [
        f"{APC_CONTROL}.1 2",
        f"{APC_CONTROL}.1 1",
        f"{APC_CONTROL}.3 2",
        f"{APC_CONTROL}.3 1",
    ]


@pytest_twisted.ensureDeferred
async def test_v3_sha_aes_set(snmpd: Snmpd) -> None:
    client = _client(snmpd, version="3", v3_user=V3_USER, v3_auth_protocol="sha", v3_priv_protocol="aes")
    try:
        await client.set_outlet(PDUOutlet(SENTRY_HOST, "AA1"), False)
        assert await client.outlet_state(PDUOutlet(SENTRY_HOST, "AA1")) is False
        await client.set_outlet(PDUOutlet(APC_HOST, "AA2"), False)
        assert await client.outlet_state(PDUOutlet(APC_HOST, "AA2")) is False
    finally:
        await client.close()
    assert snmpd.sets() == [f"{SENTRY_CONTROL}.1.1.1 2", f"{APC_CONTROL}.2 2"]


@pytest_twisted.ensureDeferred
async def test_v3_wrong_key_is_refused_without_showing_it(snmpd: Snmpd) -> None:
    from twisted.internet import reactor

    config = SNMPConfig(port=snmpd.port, timeout=5.0, retries=0, version="3", v3_user=V3_USER)
    client = PDUClient(reactor, config, None, Secret("wrong-auth-key-1"), Secret(snmpd.priv_key), resolve=_resolve)
    try:
        with pytest.raises(PDUError) as caught:
            await client.set_outlet(PDUOutlet(SENTRY_HOST, "AA1"), False)
    finally:
        await client.close()
    message = str(caught.value)
    assert message == f"{SENTRY_HOST}:{snmpd.port} outlet AA1: set off: Wrong SNMP PDU digest"
    assert "wrong-auth-key-1" not in message and snmpd.priv_key not in message
    assert snmpd.sets() == []


@pytest_twisted.ensureDeferred
async def test_wrong_community_times_out_bounded(snmpd: Snmpd) -> None:
    # snmpd drops requests with a wrong community: pysnmp's own timeout and retries end the call.
    # The client's reactor deadline is on a clock that stands still, so it cannot end it first.
    config = SNMPConfig(port=snmpd.port, timeout=0.3, retries=1)
    client = PDUClient(Clock(), config, Secret("not-the-community"), None, None, resolve=_resolve)
    try:
        with pytest.raises(PDUError) as caught:
            await client.set_outlet(PDUOutlet(SENTRY_HOST, "AA1"), False)
    finally:
        await client.close()
    assert str(caught.value) == f"{SENTRY_HOST}:{snmpd.port} outlet AA1: set off: no answer after 2 tries"
    assert "not-the-community" not in str(caught.value)
    assert snmpd.sets() == []


@pytest_twisted.ensureDeferred
async def test_unknown_outlet_is_no_such_instance(snmpd: Snmpd) -> None:
    client = _client(snmpd)
    try:
        with pytest.raises(PDUError) as caught:
            await client.outlet_state(PDUOutlet(SENTRY_HOST, "AA9"))
        with pytest.raises(PDUError) as refused:
            await client.set_outlet(PDUOutlet(SENTRY_HOST, "AA9"), False)
    finally:
        await client.close()
    assert str(caught.value) == (
        f"{SENTRY_HOST}:{snmpd.port} outlet AA9: read state: "
        "no such outlet (noSuchInstance at 1.3.6.1.4.1.1718.3.2.3.1.5.1.1.9)"
    )
    assert str(refused.value) == f"{SENTRY_HOST}:{snmpd.port} outlet AA9: set off: SET refused: notWritable"


@pytest_twisted.ensureDeferred
async def test_stuck_outlet_did_not_reach(snmpd: Snmpd) -> None:
    client = _client(snmpd, state_timeout=0.4, poll_interval=0.1)
    try:
        with pytest.raises(PDUError) as sentry:
            await client.set_outlet(PDUOutlet(SENTRY_HOST, "AA4"), False)
        with pytest.raises(PDUError) as apc:
            await client.powercycle(PDUOutlet(APC_HOST, "AA4"))
    finally:
        await client.close()
    # A stuck outlet never changes: only the state timeout can end the wait.
    assert str(sentry.value) == (
        f"{SENTRY_HOST}:{snmpd.port} outlet AA4: wait for off: did not reach off within 0.4s (last state: on (1))"
    )
    assert sentry.value.step == "wait for off"
    assert str(apc.value) == (
        f"{APC_HOST}:{snmpd.port} outlet AA4: wait for off: did not reach off within 0.4s (last state: on (1))"
    )
    # The power cycle stopped at the off step: no "on" was sent.
    assert snmpd.sets() == [f"{SENTRY_CONTROL}.1.1.4 2", f"{APC_CONTROL}.4 2"]


@pytest_twisted.ensureDeferred
async def test_missing_credentials_and_unresolvable_host(snmpd: Snmpd) -> None:
    from twisted.internet import reactor

    no_community = PDUClient(reactor, SNMPConfig(port=snmpd.port), None, None, None, resolve=_resolve)
    with pytest.raises(PDUError) as caught:
        await no_community.outlet_state(PDUOutlet(SENTRY_HOST, "AA1"))
    assert str(caught.value) == (
        f"{SENTRY_HOST}:{snmpd.port} outlet AA1: read state: no snmp_community in the credentials"
    )
    client = _client(snmpd)
    try:
        with pytest.raises(PDUError) as unknown:
            await client.outlet_state(PDUOutlet("nowhere.pdu.test", "AA1"))
    finally:
        await client.close()
    assert str(unknown.value) == (
        f"nowhere.pdu.test:{snmpd.port} outlet AA1: read state: nowhere.pdu.test does not resolve"
    )


@pytest_twisted.ensureDeferred
async def test_concurrent_calls_share_one_client(snmpd: Snmpd) -> None:
    from twisted.internet.defer import gatherResults

    client = _client(snmpd)
    sentry, apc = PDUOutlet(SENTRY_HOST, "AA1"), PDUOutlet(APC_HOST, "AA2")
    try:
        await gatherResults(
            [Deferred.fromCoroutine(client.powercycle(sentry)), Deferred.fromCoroutine(client.powercycle(apc))]
        )
        states = await gatherResults(
            [Deferred.fromCoroutine(client.outlet_state(sentry)), Deferred.fromCoroutine(client.outlet_state(apc))]
        )
    finally:
        await client.close()
    assert states == [True, True]
    assert sorted(snmpd.sets()) == sorted(
        [f"{SENTRY_CONTROL}.1.1.1 2", f"{SENTRY_CONTROL}.1.1.1 1", f"{APC_CONTROL}.2 2", f"{APC_CONTROL}.2 1"]
    )


@pytest_twisted.ensureDeferred
async def test_deadlines_bound_resolver_and_snmp(snmpd: Snmpd) -> None:
    def never(host: str) -> Deferred[str | None]:
        return Deferred()

    clock = Clock()
    config = SNMPConfig(port=snmpd.port, timeout=0.1, retries=0)
    client = PDUClient(clock, config, Secret(snmpd.community), None, None, resolve=never)
    reading = Deferred.fromCoroutine(client.outlet_state(PDUOutlet(SENTRY_HOST, "AA1")))
    clock.advance(0.5)
    assert not reading.called
    clock.advance(0.1)  # pysnmp's bound (0.1 s, one try) plus the slack
    with pytest.raises(PDUError) as caught:
        await reading
    assert str(caught.value) == (
        f"{SENTRY_HOST}:{snmpd.port} outlet AA1: read state: cannot resolve {SENTRY_HOST}: no answer within 0.6s"
    )
    # The reactor deadline also cancels an asyncio coroutine that never finishes.
    sleeper = asyncio.ensure_future(asyncio.sleep(30))
    running = Deferred.fromCoroutine(client._run(sleeper, 0.1))
    assert not running.called
    clock.advance(0.1)
    with pytest.raises(_NoAnswer):
        await running
    with pytest.raises(asyncio.CancelledError):
        await Deferred.fromFuture(sleeper)
    await client.close()
