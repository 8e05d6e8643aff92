"""
The power actions (power_status, power_on, power_off, power_cycle,
boot_device) on the shipped fakes and a C{Clock}: which channel is used,
what a channel that cannot or fails says, the read-back, and the form fields.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import deferLater
from twisted.logger import Logger

from slaveapi.actions import ActionFailure, ActionLog, ActionRun, ArgumentError
from slaveapi.actions.power import ACTIONS, power_channels
from slaveapi.actions.registry import ACTIONS as REGISTERED
from slaveapi.clients import BootOverride
from slaveapi.clients.ipmi import IPMIError
from slaveapi.clients.redfish import RedfishError
from slaveapi.config import API_SCOPES
from slaveapi.machines import ALL_LOOKUPS, find_slave, load_slave_info
from slaveapi.testing import FakeHost, Fakes, Outcome, make_fakes, run_on_clock

IP = "127.0.9.1"
BMC = "127.0.10.1"
MGMT = "bld-1-mgmt.example.test"
OUTLET = "pdu1.example.test:AA1"
BOOT = 60.0

_BY_NAME = {action.name: action for action in ACTIONS}


def _fakes(**machine: Any) -> Fakes:
    return make_fakes([FakeHost("bld-1", IP, boot_seconds=BOOT, **machine)])


def _host(fakes: Fakes) -> FakeHost:
    host = fakes.hosts.find("bld-1")
    assert host is not None
    return host


def _run(fakes: Fakes, name: str, **arguments: Any) -> tuple[Any, bool, list[str]]:
    """Run the action C{name} on bld-1 to its end: (payload, succeeded, progress texts shown)."""
    shown: list[str] = []
    log = ActionLog(Logger(), "bld-1", 1, name)
    run = ActionRun(fakes.context(), "bld-1", 1, name, log, shown.append)

    async def work() -> Any:
        return await _BY_NAME[name].run(run, **arguments)

    try:
        return run_on_clock(fakes.clock, work()), True, shown
    except ActionFailure as failure:
        return failure.payload, False, shown


def _changes(fakes: Fakes) -> list[tuple[str, str]]:
    """Every call that changes power or boot device, to any channel."""
    reads = {"available", "power_state", "reset_types", "boot_override", "boot_device", "outlet_state", "forget"}
    calls = fakes.redfish.calls + fakes.ipmi.calls + fakes.pdu.calls + fakes.mozpool.calls
    return [call for call in calls if call[0] not in reads]


# -- power_status -----------------------------------------------------------------------------


def test_status_is_read_through_redfish_first() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    payload, ok, shown = _run(fakes, "power_status")
    assert ok and payload == {"power": "on", "via": "redfish"}
    assert shown[-1] == "Reading the power state via Redfish...Success! (power is on)"
    assert fakes.ipmi.calls == [] and fakes.pdu.calls == []


def test_status_of_a_machine_whose_power_is_off_through_ipmi() -> None:
    fakes = _fakes(bmc_ip=BMC)
    fakes.hosts.power_off(_host(fakes))
    payload, ok, _ = _run(fakes, "power_status")
    assert ok and payload == {"power": "off", "via": "ipmi"}


def test_status_falls_back_to_the_pdu_and_mozpool_says_it_cannot() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET, imaging_server="mobile-imaging-1")
    fakes.ipmi.silent.add(BMC)
    payload, ok, _ = _run(fakes, "power_status")
    assert ok and payload == {"power": "on", "via": "pdu"}

    only_mozpool = _fakes(imaging_server="mobile-imaging-1")
    payload, ok, _ = _run(only_mozpool, "power_status")
    assert not ok
    assert payload.split("\n") == [
        "Mozpool: cannot read the power state.",
        "No power channel could read the power state (Redfish and IPMI: no -mgmt interface in DNS;"
        " PDU: no PDU outlet in inventory).",
    ]


def test_a_failed_read_says_why_and_the_next_channel_answers() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)

    async def broken(host: str) -> str:
        raise RedfishError(host, "reading the power state", "HTTP 500")

    fakes.redfish.power_state = broken  # type: ignore[method-assign]
    payload, ok, shown = _run(fakes, "power_status")
    assert ok and payload == {"power": "on", "via": "pdu"}
    assert shown[-1].split("\n") == [
        f"Reading the power state via Redfish...Failed (Redfish {BMC}: reading the power state failed: HTTP 500).",
        "Reading the power state via PDU...Success! (power is on)",
    ]
    # A failure through the BMC makes the Redfish client ask it again next time.
    assert ("forget", BMC) in fakes.redfish.calls
    # The BMC spoke Redfish: IPMI is not tried on it too.
    assert fakes.ipmi.calls == []


def test_a_machine_without_any_channel_fails_saying_why() -> None:
    payload, ok, _ = _run(_fakes(), "power_status")
    assert not ok
    assert payload == (
        "bld-1 has no power channel (Redfish and IPMI: no -mgmt interface in DNS;"
        " PDU: no PDU outlet in inventory; Mozpool: no imaging server in inventory)."
    )


# -- power_off, power_on ---------------------------------------------------------------------------


def test_power_off_by_redfish_reads_the_power_back() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    text, ok, shown = _run(fakes, "power_off")
    assert ok and text == "Powering off via Redfish...Success! (power is off)"
    assert "Powering off via Redfish...requested, waiting for the power to read off..." in shown
    assert _changes(fakes) == [("reset ForceOff", BMC)]
    host = _host(fakes)
    assert not fakes.hosts.powered(host)
    # Still off long after: power_off is no reboot.
    fakes.clock.advance(10 * BOOT)
    assert not host.up


def test_power_on_boots_the_machine() -> None:
    fakes = _fakes(bmc_ip=BMC)
    host = _host(fakes)
    fakes.hosts.power_off(host)
    text, ok, _ = _run(fakes, "power_on")
    assert ok and text == "Powering on via IPMI...Success! (power is on)"
    assert _changes(fakes) == [("set_power on", BMC)]
    fakes.clock.advance(BOOT)
    assert host.up


def test_power_on_of_a_machine_already_on_sends_nothing() -> None:
    fakes = _fakes(outlet=OUTLET)
    text, ok, _ = _run(fakes, "power_on")
    assert ok and text == "Powering on via PDU...Success! (power was already on)"
    assert _changes(fakes) == []


def test_power_that_never_reads_off_fails_the_channel_and_the_next_one_works() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.redfish.power_states[BMC] = ["on"]
    text, ok, _ = _run(fakes, "power_off")
    timeout = fakes.config.power.verify_timeout
    # The BMC misreports: the machine did go off, as the outlet's own reading shows.
    assert ok and text.split("\n") == [
        f"Powering off via Redfish...Failed (the power was still on after {timeout:g}s).",
        "Powering off via PDU...Success! (power was already off)",
    ]
    assert _changes(fakes) == [("reset ForceOff", BMC)]


def test_a_refused_command_fails_the_channel() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)
    fakes.ipmi.outcomes[BMC] = Outcome(IPMIError(f"IPMI power on on {BMC}: refused"))
    fakes.hosts.power_off(_host(fakes))
    text, ok, _ = _run(fakes, "power_on")
    assert ok and text.split("\n") == [
        f"Powering on via IPMI...Failed (IPMI power on on {BMC}: refused).",
        "Powering on via PDU...Success! (power is on)",
    ]


_OUTLET_CANNOT_TELL = (
    "Powering on via PDU...Failed (the outlet is on, but the BMC did not read the machine on, and an outlet that"
    " is on cannot tell whether the machine is)."
)


def test_an_outlet_that_is_on_is_no_answer_when_the_bmc_could_not_power_the_machine_on() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)
    host = _host(fakes)
    # Powered off by its BMC: the outlet stays on.
    fakes.pdu.outlets[OUTLET] = True
    fakes.hosts.power_off(host)
    fakes.ipmi.outcomes[BMC] = Outcome(IPMIError(f"IPMI power on on {BMC}: refused"))
    text, ok, _ = _run(fakes, "power_on")
    assert not ok
    assert text.split("\n") == [
        f"Powering on via IPMI...Failed (IPMI power on on {BMC}: refused).",
        _OUTLET_CANNOT_TELL,
        "No power channel could power it on (Mozpool: no imaging server in inventory).",
    ]
    assert _changes(fakes) == [("set_power on", BMC)]
    assert not fakes.hosts.powered(host)


def test_an_outlet_that_is_on_is_no_answer_after_a_bmc_that_reads_off() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.pdu.outlets[OUTLET] = True
    fakes.hosts.power_off(_host(fakes))
    # The BMC takes the request, and the machine never reads on.
    fakes.redfish.power_states[BMC] = ["off"]
    text, ok, _ = _run(fakes, "power_on")
    assert not ok
    timeout = fakes.config.power.verify_timeout
    assert text.split("\n")[:2] == [
        f"Powering on via Redfish...Failed (the power was still off after {timeout:g}s).",
        _OUTLET_CANNOT_TELL,
    ]


def test_an_outlet_that_is_on_still_answers_when_no_bmc_was_asked() -> None:
    fakes = _fakes(outlet=OUTLET)
    fakes.pdu.outlets[OUTLET] = True
    fakes.hosts.power_off(_host(fakes))
    text, ok, _ = _run(fakes, "power_on")
    # Without a BMC the outlet is all there is to go by (and what the result says is about the outlet).
    assert ok and text == "Powering on via PDU...Success! (power was already on)"


def test_every_channel_failing_is_a_failure_naming_each() -> None:
    fakes = _fakes(outlet=OUTLET, imaging_server="mobile-imaging-1")
    fakes.pdu.power_states[OUTLET] = ["on"]
    text, ok, _ = _run(fakes, "power_off")
    assert not ok
    timeout = fakes.config.power.verify_timeout
    assert text.split("\n") == [
        f"Powering off via PDU...Failed (the power was still on after {timeout:g}s).",
        "Mozpool: cannot power off (it can only cycle the power).",
        "No power channel could power it off (Redfish and IPMI: no -mgmt interface in DNS).",
    ]


def test_soft_off_uses_only_channels_that_shut_down_gracefully() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.redfish.reset_kinds[BMC] = ("On", "ForceOff", "ForceRestart")
    text, ok, _ = _run(fakes, "power_off", soft=True)
    assert not ok
    assert text.split("\n") == [
        "Redfish: cannot shut down gracefully (the BMC does not offer GracefulShutdown).",
        "PDU: cannot shut down gracefully.",
        "No power channel could shut it down gracefully (Mozpool: no imaging server in inventory).",
    ]
    # Never a hard off instead.
    assert _changes(fakes) == []
    assert _host(fakes).up


def test_soft_off_of_a_machine_already_off_needs_no_graceful_shutdown() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET)
    fakes.redfish.reset_kinds[BMC] = ("On", "ForceOff")
    fakes.hosts.power_off(_host(fakes))
    text, ok, _ = _run(fakes, "power_off", soft=True)
    assert ok and text == "Shutting down gracefully via Redfish...Success! (power was already off)"
    assert _changes(fakes) == []
    assert fakes.pdu.calls == []


def test_soft_off_by_redfish_and_by_ipmi() -> None:
    redfish = _fakes(bmc_ip=BMC, redfish=True)
    text, ok, _ = _run(redfish, "power_off", soft=True)
    assert ok and text == "Shutting down gracefully via Redfish...Success! (power is off)"
    assert _changes(redfish) == [("reset GracefulShutdown", BMC)]

    ipmi = _fakes(bmc_ip=BMC)
    text, ok, _ = _run(ipmi, "power_off", soft=True)
    assert ok and text == "Shutting down gracefully via IPMI...Success! (power is off)"
    assert _changes(ipmi) == [("set_power soft", BMC)]


def test_a_soft_off_may_take_the_soft_off_timeout() -> None:
    fakes = _fakes(bmc_ip=BMC)
    settings = fakes.config.power
    # The OS takes longer than verify_timeout (not soft_off_timeout) to shut down.
    polls = int(settings.verify_timeout / settings.poll_interval) + 40
    fakes.ipmi.power_states[BMC] = ["on"] * (polls + 1) + ["off"]
    text, ok, _ = _run(fakes, "power_off", soft=True)
    assert ok and text == "Shutting down gracefully via IPMI...Success! (power is off)"
    assert settings.verify_timeout < fakes.clock.seconds() == polls * settings.poll_interval
    assert fakes.clock.seconds() < settings.soft_off_timeout


# -- power_cycle ----------------------------------------------------------------------------------


def test_cycle_by_redfish_is_the_clients_power_cycle_when_force_off_and_on_are_offered() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    text, ok, _ = _run(fakes, "power_cycle")
    assert ok and text == "Power-cycling via Redfish...Success! (power is on)"
    # ForceRestart is offered too, but a one-request reset is not used.
    assert _changes(fakes) == [("powercycle", BMC)]
    assert _host(fakes).reboots == 1
    fakes.clock.advance(BOOT)
    assert _host(fakes).up


def test_cycle_of_a_machine_that_is_off_powers_it_on() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    fakes.hosts.power_off(_host(fakes))
    text, ok, _ = _run(fakes, "power_cycle")
    assert ok and text == "Power-cycling via Redfish...Success! (power is on)"
    assert _changes(fakes) == [("powercycle", BMC)]
    fakes.clock.advance(BOOT)
    assert _host(fakes).up


@pytest.mark.parametrize("kind", ["PowerCycle", "ForceRestart"])
def test_a_one_request_cycle_is_confirmed_by_the_probe(kind: str) -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    fakes.redfish.reset_kinds[BMC] = ("GracefulShutdown", kind)
    text, ok, shown = _run(fakes, "power_cycle")
    assert ok and text == "Power-cycling via Redfish...Success! (it went down and came back)"
    assert f"Power-cycling via Redfish...{kind} requested..." in shown
    assert _changes(fakes) == [(f"reset {kind}", BMC)]
    assert _host(fakes).up and _host(fakes).reboots == 1


def test_a_one_request_cycle_the_bmc_accepts_but_does_not_do_fails() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    fakes.redfish.reset_kinds[BMC] = ("ForceRestart",)

    async def ignored(host: str, reset_type: str) -> None:
        # Accepted, and nothing happens: the power reads on before and after.
        fakes.redfish.calls.append((f"reset {reset_type}", host))

    fakes.redfish.reset = ignored  # type: ignore[method-assign]
    text, ok, _ = _run(fakes, "power_cycle")
    assert not ok
    assert text.split("\n")[0] == "Power-cycling via Redfish...Failed (it never went down)."
    assert _changes(fakes) == [("reset ForceRestart", BMC)]
    assert _host(fakes).reboots == 0


def test_a_bmc_offering_no_cycle_at_all_says_what_it_offers() -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    fakes.redfish.reset_kinds[BMC] = ("On", "Nmi")
    text, ok, _ = _run(fakes, "power_cycle")
    assert not ok
    assert text.split("\n")[0] == (
        f"Power-cycling via Redfish...Failed (Redfish {BMC}: choosing a reset failed: it offers neither"
        " ForceOff and On nor PowerCycle or ForceRestart (On, Nmi))."
    )
    assert _changes(fakes) == []


def test_cycle_by_ipmi_and_by_pdu_use_their_clients_power_cycles() -> None:
    ipmi = _fakes(bmc_ip=BMC)
    text, ok, _ = _run(ipmi, "power_cycle")
    assert ok and text == "Power-cycling via IPMI...Success! (power is on)"
    assert _changes(ipmi) == [("powercycle", BMC)]

    pdu = _fakes(outlet=OUTLET)
    text, ok, _ = _run(pdu, "power_cycle")
    assert ok and text == "Power-cycling via PDU...Success! (power is on)"
    assert _changes(pdu) == [("powercycle", OUTLET)]


def test_cycle_by_mozpool_is_confirmed_by_the_probe() -> None:
    fakes = _fakes(imaging_server="mobile-imaging-1")
    text, ok, _ = _run(fakes, "power_cycle")
    assert ok and text == "Power-cycling via Mozpool...Success! (it went down and came back)"
    assert _changes(fakes) == [("power_cycle via mobile-imaging-1", "bld-1")]
    assert _host(fakes).up and _host(fakes).reboots == 1


def test_a_mozpool_cycle_after_which_the_machine_stays_down_fails() -> None:
    fakes = _fakes(imaging_server="mobile-imaging-1", comes_back=False)
    text, ok, _ = _run(fakes, "power_cycle")
    assert not ok
    assert text.split("\n")[0] == "Power-cycling via Mozpool...Failed (it went down but did not come back)."


# -- boot_device ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "target"), [("pxe", "Pxe"), ("disk", "Hdd"), ("bios", "BiosSetup")])
def test_boot_device_by_redfish_is_read_back(device: str, target: str) -> None:
    fakes = _fakes(bmc_ip=BMC, redfish=True)
    text, ok, _ = _run(fakes, "boot_device", device=device)
    assert ok and text == f"Setting the next boot device to {device} via Redfish...Success! (next boot: {device})"
    assert fakes.redfish.boot_once == {BMC: target}
    assert ("boot_override", BMC) in fakes.redfish.calls


def test_a_boot_device_the_bmc_keeps_for_every_boot_is_set_and_says_so() -> None:
    redfish = _fakes(bmc_ip=BMC, redfish=True)
    redfish.redfish.continuous.add(BMC)
    text, ok, _ = _run(redfish, "boot_device", device="pxe")
    assert ok and text == (
        "Setting the next boot device to pxe via Redfish...Success! (next boot: pxe; the BMC keeps it for every"
        " boot, not only the next)"
    )
    assert redfish.redfish.boot_once == {BMC: "Pxe"}

    ipmi = _fakes(bmc_ip=BMC)
    ipmi.ipmi.persistent.add(BMC)
    text, ok, _ = _run(ipmi, "boot_device", device="bios")
    assert ok and text == (
        "Setting the next boot device to bios via IPMI...Success! (next boot: bios; the BMC keeps it for every"
        " boot, not only the next)"
    )


def test_boot_device_by_ipmi() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)
    text, ok, _ = _run(fakes, "boot_device", device="pxe")
    assert ok and text == "Setting the next boot device to pxe via IPMI...Success! (next boot: pxe)"
    assert fakes.ipmi.boot_devices == {BMC: "pxe"}


def test_a_boot_device_that_does_not_read_back_fails_and_the_pdu_cannot() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)

    async def forgetful(host: str) -> BootOverride | None:
        return None

    fakes.ipmi.boot_device = forgetful  # type: ignore[method-assign]
    text, ok, _ = _run(fakes, "boot_device", device="bios")
    assert not ok
    timeout = fakes.config.power.verify_timeout
    assert text.split("\n") == [
        f"Setting the next boot device to bios via IPMI...Failed (the next boot device read none, not bios,"
        f" after {timeout:g}s).",
        "PDU: cannot set a boot device.",
        "No power channel could set its next boot device (Mozpool: no imaging server in inventory).",
    ]


# -- the actions' form fields, limits and scopes -------------------------------------------------------


def test_boot_device_requires_a_known_device() -> None:
    parse = _BY_NAME["boot_device"].arguments
    assert parse({"device": "PXE"}) == {"device": "pxe"}
    with pytest.raises(ArgumentError) as missing:
        parse({})
    assert (missing.value.field, str(missing.value)) == ("device", "device: required: one of pxe, disk, bios")
    with pytest.raises(ArgumentError) as wrong:
        parse({"device": "floppy"})
    assert str(wrong.value) == "device: expected one of pxe, disk, bios, got 'floppy'"


def test_soft_is_yes_or_no() -> None:
    parse = _BY_NAME["power_off"].arguments
    assert parse({}) == {"soft": False}
    assert parse({"soft": "yes"}) == {"soft": True}
    with pytest.raises(ArgumentError) as wrong:
        parse({"soft": "maybe"})
    assert wrong.value.field == "soft"


def test_registered_exclusive_and_scoped() -> None:
    for action in ACTIONS:
        assert REGISTERED[action.name] is action
        assert action.single_flight
        assert action.scope in API_SCOPES
    assert (_BY_NAME["power_status"].exclusive, _BY_NAME["power_status"].scope) == (False, "inspect")
    for name in ("power_on", "power_off", "power_cycle", "boot_device"):
        assert (_BY_NAME[name].exclusive, _BY_NAME[name].scope) == (True, "power")


# -- power_channels in GET /slaves/<slave> ----------------------------------------------------------


def _channels(fakes: Fakes) -> tuple[list[str], dict[str, str]]:
    async def look() -> tuple[list[str], dict[str, str]]:
        ctx = fakes.context()
        slave = await find_slave(ctx, "bld-1")
        await load_slave_info(ctx, slave, ALL_LOOKUPS)
        channels = await power_channels(ctx, slave)
        assert slave.to_dict()["power_channels"] is None  # set by the web layer
        return channels, slave.errors

    return run_on_clock(fakes.clock, look())


def test_power_channels_in_order() -> None:
    assert _channels(_fakes(bmc_ip=BMC, redfish=True, outlet=OUTLET))[0] == ["redfish", "pdu"]
    assert _channels(_fakes(bmc_ip=BMC, outlet=OUTLET, imaging_server="im-1"))[0] == ["ipmi", "pdu", "mozpool"]
    assert _channels(_fakes())[0] == []


def test_a_bmc_that_answers_nothing_is_no_channel() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)
    fakes.ipmi.silent.add(BMC)
    assert _channels(fakes) == (["pdu"], {})


def test_a_bmc_slow_to_answer_is_left_out_within_the_discovery_timeout() -> None:
    fakes = _fakes(bmc_ip=BMC, outlet=OUTLET)

    async def slow(host: str) -> bool:
        await deferLater(fakes.clock, 3600, lambda: None)
        return True

    fakes.ipmi.available = slow  # type: ignore[method-assign]
    channels, errors = _channels(fakes)
    timeout = fakes.config.power.discovery_timeout
    assert channels == ["pdu"]
    assert errors == {"power": f"the BMC at {MGMT}: BMC discovery timed out after {timeout:g}s"}
    assert fakes.clock.seconds() == timeout
