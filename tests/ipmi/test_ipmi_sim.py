"""
slaveapi.clients.ipmi against OpenIPMI's ipmi_sim on loopback, and against BMCs that fail.

Also covers the worker pool: deadlines kill and replace a worker, queued
requests do not spend their deadline waiting, closing leaves no process,
and the password stays out of argv, logs and errors.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from slaveapi.clients.ipmi import _CLOSE_GRACE, IPMIAuthError, IPMIClient, IPMIError, IPMITimeout, IPMIUnavailable
from slaveapi.config import IPMIConfig, Secret

from .conftest import SIM_PASSWORD, SIM_USER, Clients, IPMISim, bounded, pid_alive

reactor: Any = _reactor

#: The deadline of the tests that end calls by it; they move a Clock past it.
DEADLINE = 5.0
#: Real deadlines and waits of calls that must succeed: never reached, however loaded the machine.
GENEROUS = 60.0


def _config(port: int, **changes: Any) -> IPMIConfig:
    values: dict[str, Any] = dict(
        port=port, timeout=GENEROUS, retries=1, workers=2, off_timeout=GENEROUS, poll_interval=0.05, power_delay=0.1
    )
    values.update(changes)
    return IPMIConfig(**values)


def _run(coroutine: Any, seconds: float = GENEROUS) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine).addTimeout(seconds, reactor)


class _ClockedReactor:
    """
    Worker processes on the real reactor, every timer of the client on a
    L{Clock}: its deadlines pass only when the test moves the clock, so a
    BMC that never answers cannot race pyghmi's own give-up.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self._waiting: list[tuple[float, Deferred[None]]] = []

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> IDelayedCall:
        call = self.clock.callLater(delay, f, *args, **kwargs)
        for entry in [entry for entry in self._waiting if entry[0] == delay]:
            self._waiting.remove(entry)
            # Told from the real reactor: the client finishes what it was doing first.
            reactor.callLater(0, entry[1].callback, None)
        return call

    def seconds(self) -> float:
        return self.clock.seconds()

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.spawnProcess(*args, **kwargs)

    def scheduled(self, delay: float) -> Deferred[None]:
        """Fires once the client schedules something C{delay} seconds ahead (a request's deadline)."""
        waiting: Deferred[None] = Deferred()
        self._waiting.append((delay, waiting))
        return waiting


def _clocked_client(clients: Clients, config: IPMIConfig) -> tuple[IPMIClient, _ClockedReactor]:
    clocked = _ClockedReactor()
    client = IPMIClient(clocked, config, SIM_USER, Secret(SIM_PASSWORD))
    clients.made.append(client)  # closed, and its workers checked, at teardown
    return client, clocked


def _count_requests(client: IPMIClient) -> list[str]:
    """The hosts of the requests the client hands its worker pool from now on (one per attempt)."""
    hosts: list[str] = []
    run = client._pool.run

    def counting(host: str, step: str, payload: dict[str, Any]) -> Deferred[dict[str, Any]]:
        hosts.append(host)
        return run(host, step, payload)

    client._pool.run = counting  # type: ignore[method-assign]  # counts the calls
    return hosts


class _Swallow(DatagramProtocol):
    """A hung BMC: takes every packet, answers none."""

    def __init__(self) -> None:
        self.received = 0
        self.first: Deferred[None] = Deferred()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received += 1
        if not self.first.called:
            self.first.callback(None)


@pytest_twisted.ensureDeferred
async def test_power_state_and_set_power(ipmi_sim: IPMISim, clients: Clients) -> None:
    client = clients.make(_config(ipmi_sim.port), SIM_PASSWORD)
    assert await _run(client.power_state("127.0.0.1")) is True
    await _run(client.set_power("127.0.0.1", "off"))
    assert ipmi_sim.powered is False
    assert await _run(client.power_state("127.0.0.1")) is False
    await _run(client.set_power("127.0.0.1", "on"))
    assert ipmi_sim.powered is True
    assert await _run(client.power_state("127.0.0.1")) is True
    assert ipmi_sim.control_calls() == ["0x20 set power 0", "0x20 set power 1"]
    assert await _run(client.available("127.0.0.1")) is True


@pytest_twisted.ensureDeferred
async def test_set_power_rejects_unknown_states(clients: Clients) -> None:
    client = clients.make(_config(9), SIM_PASSWORD)
    with pytest.raises(ValueError, match="unknown power state 'boot'"):
        await client.set_power("127.0.0.1", "boot")
    assert clients.workers() == []


def test_the_client_provides_its_interface() -> None:
    from zope.interface.verify import verifyClass

    from slaveapi.interfaces import IIPMI

    assert verifyClass(IIPMI, IPMIClient)


@pytest_twisted.ensureDeferred
async def test_set_boot_device_reaches_ipmi_sim_which_never_marks_it_valid(ipmi_sim: IPMISim, clients: Clients) -> None:
    client = clients.make(_config(ipmi_sim.port), SIM_PASSWORD)
    warnings: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "slaveapi.clients.ipmi":
            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        # ipmi_sim's names: "default" is its name for the default hard drive (selector 0010b).
        for device, sim_name in (("pxe", "pxe"), ("disk", "default"), ("bios", "bios")):
            await _run(client.set_boot_device("127.0.0.1", device))
            assert ipmi_sim.boot == sim_name
            # ipmi_sim answers the device but never the flags' "valid" bit: per the spec, no override.
            assert await _run(client.boot_device("127.0.0.1")) is None
    finally:
        globalLogPublisher.removeObserver(observe)
    assert ipmi_sim.control_calls() == ["0x20 set boot pxe", "0x20 set boot default", "0x20 set boot bios"]
    # ipmi_sim took parameter 3 (keep the flags valid past 60 s) before each device.
    assert not [line for line in warnings if "valid bit clearing" in line]


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"\x01\x05\x80\x04\x00\x00\x00", {"ok": True, "valid": True, "persistent": False, "selector": 1}),
        (b"\x01\x05\xc0\x18\x00\x00\x00", {"ok": True, "valid": True, "persistent": True, "selector": 6}),
        (b"\x01\x05\x00\x08\x00\x00\x00", {"ok": True, "valid": False, "persistent": False, "selector": 2}),
        (b"\x01\x04\x80\x04", {"ok": False, "kind": "command", "message": "unreadable boot flags answer"}),
        (b"\x01\x05\x80", {"ok": False, "kind": "command", "message": "unreadable boot flags answer"}),
        # Bit 7 of the parameter byte: the BMC marks the parameter invalid or locked.
        (
            b"\x01\x85\x80\x04\x00\x00\x00",
            {"ok": False, "kind": "command", "message": "the BMC marks its boot flags invalid or locked"},
        ),
    ],
)
def test_the_worker_reads_the_boot_flags_bits(data: bytes, answer: dict[str, Any]) -> None:
    from slaveapi.clients._ipmi_worker import _boot_flags

    assert _boot_flags(3, data) == dict(answer, id=3)


class _ScriptedCommand:
    """Stands in for pyghmi's C{Command} in the worker: records raw commands, answers by parameter."""

    sent: list[tuple[int, int, list[int]]] = []
    answers: dict[int, dict[str, Any]] = {}

    def __init__(self, **_: Any) -> None:
        self.ipmi_session = self

    def raw_command(self, netfn: int, command: int, data: Any = ()) -> dict[str, Any]:
        self.sent.append((netfn, command, list(data)))
        return self.answers.get(data[0], {"data": b""}) if data else {"data": b""}

    def logout(self) -> None:
        pass


def _set_boot(monkeypatch: pytest.MonkeyPatch, answers: dict[int, dict[str, Any]]) -> tuple[dict[str, Any], list[Any]]:
    from slaveapi.clients import _ipmi_worker

    monkeypatch.setattr("pyghmi.ipmi.command.Command", _ScriptedCommand)
    monkeypatch.setattr(_ScriptedCommand, "sent", [])
    monkeypatch.setattr(_ScriptedCommand, "answers", answers)
    request = {"id": 4, "host": "127.0.0.1", "port": 623, "username": "u", "password": "pw-Secret-9", "op": "set_boot",
               "selector": 1}
    return _ipmi_worker._serve(request), _ScriptedCommand.sent


def test_the_worker_keeps_the_boot_flags_valid_past_60s_before_setting_them(monkeypatch: pytest.MonkeyPatch) -> None:
    answer, sent = _set_boot(monkeypatch, {})
    assert answer == {"id": 4, "ok": True, "kept": True}
    # Parameter 3 with bit 3 ("do not clear after the 60 s timeout") first, as pyghmi's set_bootdev does.
    assert sent == [(0, 8, [3, 0x08]), (0, 8, [5, 0x80, 0x04, 0, 0, 0])]


def test_a_bmc_without_parameter_3_still_gets_the_device_but_the_answer_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer, sent = _set_boot(monkeypatch, {3: {"error": "Parameter not supported", "code": 0x80}})
    assert answer == {"id": 4, "ok": True, "kept": False}
    assert [data[0] for _, _, data in sent] == [3, 5]


def test_a_refused_parameter_3_fails_without_setting_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    answer, sent = _set_boot(monkeypatch, {3: {"error": "Insufficient privilege level", "code": 0xD4}})
    assert answer == {"id": 4, "ok": False, "kind": "command",
                      "message": "boot flag valid bit clearing: Insufficient privilege level"}
    assert [data[0] for _, _, data in sent] == [3]


@pytest_twisted.ensureDeferred
async def test_set_boot_device_rejects_unknown_devices_before_sending(clients: Clients) -> None:
    client = clients.make(_config(9), SIM_PASSWORD)
    with pytest.raises(ValueError, match="unknown boot device 'cdrom'; expected one of pxe, disk, bios"):
        await client.set_boot_device("127.0.0.1", "cdrom")
    assert clients.workers() == []


@pytest_twisted.ensureDeferred
async def test_a_refused_boot_device_is_a_clear_error_not_retried(ipmi_sim: IPMISim, clients: Clients) -> None:
    ipmi_sim.refuse_boot_device()
    client = clients.make(_config(ipmi_sim.port, retries=2), SIM_PASSWORD)
    hosts = _count_requests(client)
    with pytest.raises(IPMIError) as raised:
        await _run(client.set_boot_device("127.0.0.1", "pxe"))
    assert not isinstance(raised.value, IPMIUnavailable)
    assert str(raised.value).startswith("IPMI set boot device pxe on 127.0.0.1: ")
    assert SIM_PASSWORD not in str(raised.value)
    assert hosts == ["127.0.0.1"]
    assert ipmi_sim.boot == "none"


@pytest_twisted.ensureDeferred
async def test_powercycle_soft_off_then_on(ipmi_sim: IPMISim, clients: Clients) -> None:
    client = clients.make(_config(ipmi_sim.port), SIM_PASSWORD)
    lines: list[str] = []
    await _run(client.powercycle("127.0.0.1", lines.append))
    assert lines == ["soft power off requested", "powered off", "power on requested", "powered on"]
    assert ipmi_sim.control_calls() == ["0x20 set shutdown 1", "0x20 set power 1"]
    assert ipmi_sim.powered is True


@pytest_twisted.ensureDeferred
async def test_powercycle_goes_hard_when_the_bmc_refuses_a_soft_off(ipmi_sim: IPMISim, clients: Clients) -> None:
    ipmi_sim.refuse_soft_off()
    client = clients.make(_config(ipmi_sim.port), SIM_PASSWORD)
    lines: list[str] = []
    await _run(client.powercycle("127.0.0.1", lines.append))
    assert lines == [
        "soft power off refused (Unspecified); hard power off",
        "powered off",
        "power on requested",
        "powered on",
    ]
    assert ipmi_sim.control_calls() == ["0x20 set shutdown 1", "0x20 set power 0", "0x20 set power 1"]
    assert ipmi_sim.powered is True


@pytest_twisted.ensureDeferred
async def test_powercycle_of_a_machine_that_is_off_just_powers_it_on(ipmi_sim: IPMISim, clients: Clients) -> None:
    ipmi_sim.set_powered(False)
    client = clients.make(_config(ipmi_sim.port), SIM_PASSWORD)
    lines: list[str] = []
    await _run(client.powercycle("127.0.0.1", lines.append))
    assert lines == ["already off", "power on requested", "powered on"]
    assert ipmi_sim.control_calls() == ["0x20 set power 1"]


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_an_auth_error_and_never_shown(ipmi_sim: IPMISim, clients: Clients) -> None:
    wrong = "not-the-Password-42"
    seen: list[str] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        seen.append(formatEvent(event) or "")
        seen.append(repr(event))

    client = clients.make(_config(ipmi_sim.port, retries=2), wrong)
    asked = _count_requests(client)
    globalLogPublisher.addObserver(observer)
    try:
        with pytest.raises(IPMIAuthError) as caught:
            await _run(client.power_state("127.0.0.1"))
        # One quick refusal: not retried (retries=2), not ended by a deadline (that is IPMITimeout).
        assert asked == ["127.0.0.1"]
        # The argv of the worker has no password either.
        for pid in clients.workers():
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                assert wrong.encode() not in handle.read()
        assert await _run(client.available("127.0.0.1")) is False
    finally:
        globalLogPublisher.removeObserver(observer)
    assert str(caught.value) == "IPMI power status on 127.0.0.1: credentials refused (Incorrect password provided)"
    assert isinstance(caught.value, IPMIError)
    assert seen and not any(wrong in line for line in seen)


@pytest_twisted.ensureDeferred
async def test_nothing_listening_ends_at_the_deadline_without_a_retry(ipmi_sim: IPMISim, clients: Clients) -> None:
    client, clocked = _clocked_client(clients, _config(ipmi_sim.port, retries=2, timeout=DEADLINE))
    assert await _run(client.power_state("127.0.0.1")) is True  # a ready worker takes the next call at once
    asked = _count_requests(client)
    deadline_set = clocked.scheduled(DEADLINE)
    call = _run(client.power_state("127.0.0.3"))  # nothing on this address
    await bounded(deadline_set, GENEROUS)
    clocked.clock.advance(DEADLINE - 0.5)
    assert not call.called
    clocked.clock.advance(0.5)
    with pytest.raises(IPMITimeout) as caught:
        await call
    # Our own deadline ended it (pyghmi alone gives up later), and it was not retried.
    assert str(caught.value) == f"IPMI power status on 127.0.0.3: no answer within {DEADLINE:g}s"
    assert asked == ["127.0.0.3"]
    # The killed worker's replacement serves the next calls.
    assert await _run(client.power_state("127.0.0.1")) is True
    deadline_set = clocked.scheduled(DEADLINE)
    unavailable = _run(client.available("127.0.0.3"))
    await bounded(deadline_set, GENEROUS)
    clocked.clock.advance(DEADLINE)
    assert await unavailable is False


@pytest_twisted.ensureDeferred
async def test_hung_bmc_times_out_its_worker_is_replaced_and_the_queue_waits_free(
    ipmi_sim: IPMISim, clients: Clients
) -> None:
    swallow = _Swallow()
    hung = reactor.listenUDP(ipmi_sim.port, swallow, interface="127.0.0.2")
    try:
        client, clocked = _clocked_client(clients, _config(ipmi_sim.port, workers=1, timeout=DEADLINE))
        assert await _run(client.power_state("127.0.0.1")) is True
        [worker] = client._pool._workers
        first = worker.pid
        # One worker: the second call waits in the queue for the whole deadline of
        # the first, then runs on the replacement worker with a deadline of its own.
        stuck = Deferred.fromCoroutine(client.power_state("127.0.0.2"))
        behind = Deferred.fromCoroutine(client.power_state("127.0.0.1"))
        await bounded(swallow.first, GENEROUS)  # the worker is in pyghmi, talking to the hung BMC
        clocked.clock.advance(DEADLINE - 0.5)
        assert not stuck.called and not behind.called
        clocked.clock.advance(0.5)
        with pytest.raises(IPMITimeout) as caught:
            await stuck
        assert str(caught.value) == f"IPMI power status on 127.0.0.2: no answer within {DEADLINE:g}s"
        # The queued call's deadline started only when the replacement took it: the clock has
        # moved a whole deadline since it was queued, and it is still allowed its answer.
        assert await bounded(behind, GENEROUS) is True
        await bounded(worker.ended, GENEROUS)
        assert not pid_alive(first)
        [second] = clients.workers()
        assert second != first
    finally:
        await hung.stopListening()


@pytest_twisted.ensureDeferred
async def test_close_stops_a_busy_worker_and_fails_what_waits(ipmi_sim: IPMISim, clients: Clients) -> None:
    swallow = _Swallow()
    hung = reactor.listenUDP(ipmi_sim.port, swallow, interface="127.0.0.2")
    try:
        client, clocked = _clocked_client(clients, _config(ipmi_sim.port, workers=1, timeout=DEADLINE))
        assert await _run(client.power_state("127.0.0.1")) is True
        [pid] = clients.workers()
        # The ready worker takes the hung BMC at once; the next call queues behind it.
        stuck = Deferred.fromCoroutine(client.power_state("127.0.0.2"))
        queued = Deferred.fromCoroutine(client.power_state("127.0.0.1"))
        await bounded(swallow.first, GENEROUS)  # the worker is in pyghmi, talking to the hung BMC
        closing = Deferred.fromCoroutine(client.close())
        # The busy worker cannot finish on its own: close waits out the grace period, then SIGKILLs it.
        clocked.clock.advance(_CLOSE_GRACE - 0.5)
        assert not closing.called and not stuck.called and pid_alive(pid)
        clocked.clock.advance(0.5)
        await bounded(closing, GENEROUS)
        assert clients.workers() == []
        assert not pid_alive(pid)
        with pytest.raises(IPMIError, match=r"^IPMI power status on 127.0.0.2: worker process died$"):
            await bounded(stuck, 1)
        with pytest.raises(IPMIError, match=r"^IPMI power status on 127.0.0.1: client closed$"):
            await bounded(queued, 1)
        with pytest.raises(IPMIError, match=r"^IPMI power status on 127.0.0.1: client closed$"):
            await client.power_state("127.0.0.1")
    finally:
        await hung.stopListening()


@pytest_twisted.ensureDeferred
async def test_session_set_up_failures_are_retried_then_unavailable(clients: Clients) -> None:
    client = clients.make(_config(9, retries=2), SIM_PASSWORD)
    answers: list[dict[str, Any]] = [
        {"ok": False, "kind": "setup", "message": "Session no longer connected"},
        {"ok": True, "powered": False},
        {"ok": False, "kind": "setup", "message": "no answer from the BMC"},
        {"ok": False, "kind": "setup", "message": "no answer from the BMC"},
        {"ok": False, "kind": "setup", "message": "no answer from the BMC"},
        {"ok": False, "kind": "command", "message": "Unrecognized command"},
    ]
    asked: list[dict[str, Any]] = []

    def run(host: str, step: str, payload: dict[str, Any]) -> Deferred[dict[str, Any]]:
        asked.append(payload)
        return succeed(answers.pop(0))

    client._pool.run = run  # type: ignore[method-assign]  # scripted BMC answers
    assert await client.power_state("bmc.example.test") is False
    with pytest.raises(IPMIUnavailable) as caught:
        await client.power_state("bmc.example.test")
    assert str(caught.value) == (
        "IPMI power status on bmc.example.test: no BMC session after 3 attempts (no answer from the BMC)"
    )
    with pytest.raises(IPMIError) as failed:
        await client.set_power("bmc.example.test", "cycle")
    assert type(failed.value) is IPMIError
    assert str(failed.value) == "IPMI power cycle on bmc.example.test: Unrecognized command"
    assert len(asked) == 6
    assert asked[-1] == {
        "op": "control", "directive": 2, "host": "bmc.example.test", "port": 9, "username": "ADMIN",
        "password": SIM_PASSWORD,
    }
