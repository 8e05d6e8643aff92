"""
The C{reboot} action: escalate from peacefully to mercilessly until the machine is back.

In the reference order: SSH (only if the machine answers the probe; C{reboot},
C{sudo reboot}, C{shutdown -f -t 3 -r} until one is accepted), Mozpool (for a
device with an imaging server), Redfish (when C{<name>-mgmt} resolves and
its BMC speaks Redfish), IPMI (when C{<name>-mgmt} resolves and the BMC
answers), the PDU outlet, and finally a bug for the datacenter. Each method
is followed by a bounded wait for the machine to come back; the first method
after which it does ends the action with SUCCESS. Steps that do not apply
say so in the status text, which reads like the reference's::

    Attempting SSH reboot...Failed.
    Skipping Mozpool reboot: no imaging server in inventory.
    Attempting Redfish reboot...Success!

Redfish and IPMI share the BMC's name and its one DNS lookup. Whether the
BMC speaks Redfish is discovered once per BMC and remembered by the Redfish
client (L{slaveapi.clients.redfish.BMCDiscovery}); a failed Redfish or IPMI
step makes it forget, so the next reboot asks the BMC again. The Redfish
step resets with C{GracefulRestart} when the BMC advertises it and the
machine answered the probe (the request goes to its OS): that returns as
soon as the BMC accepted it, while the machine may still be up, so the
wait after it is the one after SSH and Mozpool (down, then up). A machine
that never went down after it (a hung OS ignores the request) gets the
power cycle next, in the same step. Otherwise it is the Redfish client's power cycle
(L{slaveapi.clients.redfish.RedfishClient.powercycle}: C{ForceOff}, power
read off, C{On}, power read on, finished even if the action is cancelled
halfway), after which the wait is IPMI's (up). When the Redfish step was tried,
whatever its outcome, the IPMI step is skipped: it is the same BMC, and
one that speaks Redfish may not speak IPMI at all; the PDU comes next.

When everything failed and C{update_bug} is on, the status goes to Bugzilla:
an existing open reboot bug is left alone; otherwise the problem-tracking
bug is created if missing, a reboot bug blocking it is filed, and the status
is commented on the tracking bug (reopening it if closed).

SSH places to a host are limited (C{[ssh] per_host}); L{SSHBusy} says that
SlaveAPI's own other sessions to the machine hold them all. That is no
failure of the machine, and no evidence about a reboot: the machine answers
(those sessions are logged in to it). So a busy host is tried again, up to
L{BUSY_TRIES} times L{BUSY_PAUSE} seconds apart (each try itself waits up to
C{[ssh] connect_timeout} for a place); if it stays busy, the action stops
there and fails saying so, without Mozpool, Redfish, IPMI, the PDU or a bug: cutting
the power of a machine that is up and answering, or filing a bug about it,
because SlaveAPI was busy with it, would do harm for no reason. The bound
keeps the whole wait for places at a few minutes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from slaveapi.actions._base import Action, ActionFailure, ActionRun, StatusLines
from slaveapi.actions._bugs import comment_on_tracking_bug, file_tracking_bug, signed
from slaveapi.actions._channels import NEVER_WENT_DOWN, look_up_bmc, reboot_problem
from slaveapi.actions._remote import OFFLINE_ERRORS, locate, read_uptime
from slaveapi.clients import ClientError
from slaveapi.clients.bugzilla import Bug
from slaveapi.clients.ssh import SSHBusy, SSHError, SSHTimeout
from slaveapi.interfaces import SSHSessionSpec
from slaveapi.machines import Lookup, Slave
from slaveapi.work import pause

#: Tried in order until one is accepted.
REBOOT_COMMANDS = ("reboot", "sudo reboot", "shutdown -f -t 3 -r")


#: How many times a step tries to get an SSH session to a machine whose places are all taken.
BUSY_TRIES = 3
#: Seconds between those tries (on top of the C{connect_timeout} each try waits for a place).
BUSY_PAUSE = 30.0

#: The Redfish reset used when the BMC advertises it (else the client's power cycle).
REDFISH_RESTART = "GracefulRestart"


class _StayedBusy(Exception):
    """
    SSH to the machine stayed busy through every try of a step: the reboot
    stops there, without power control (see the module docstring).

    @ivar step: what was being done, for the status text.
    @ivar error: the last L{SSHBusy}.
    """

    def __init__(self, step: str, error: SSHBusy) -> None:
        super().__init__(f"{step}: {error}")
        self.step = step
        self.error = error


async def _session_when_free(run: ActionRun, slave: Slave, step: str) -> SSHSessionSpec:
    """
    An SSH session to the machine, trying again (a bounded number of times)
    while its places are all taken.

    @param step: what the session is for, for the text if it stays busy.
    @raise _StayedBusy: still busy after L{BUSY_TRIES} tries.
    @raise SSHError: any other failure to log in, at once.
    """
    for attempt in range(1, BUSY_TRIES + 1):
        try:
            return await run.ctx.clients.ssh.session(slave.address)
        except SSHBusy as error:
            run.log.info(
                "SSH to {host} busy ({step}, try {attempt} of {tries}): {reason}",
                host=slave.address, step=step, attempt=attempt, tries=BUSY_TRIES, reason=str(error),
            )
            if attempt == BUSY_TRIES:
                raise _StayedBusy(step, error) from None
            await pause(run.ctx.reactor, BUSY_PAUSE)
    raise AssertionError("unreachable: the last try returns or raises")


def _stayed_busy_text(slave: Slave) -> str:
    """The last line of a reboot that stopped because SSH to the machine stayed busy."""
    return (
        f"{slave.name} answers, but SSH to it stayed busy after {BUSY_TRIES} tries:"
        " no power control was used (Mozpool, Redfish, IPMI and the PDU were not tried) and no bug was filed."
    )


class _Escalation(StatusLines):
    """The status text of one reboot, built step by step, and the waits between."""

    def __init__(self, run: ActionRun, slave: Slave) -> None:
        super().__init__(run)
        self.run = run
        self.slave = slave
        #: The Redfish step reset the BMC (whatever came of it): the IPMI step is skipped.
        self.redfish_tried = False
        #: Whether the machine answered the probe before the SSH step (None: not known).
        self.answered: bool | None = None
        self._bmc: tuple[str | None, str | None] | None = None

    async def bmc(self, method: str) -> str | None:
        """
        The address of the machine's BMC (C{<name>-mgmt}, looked up once
        for the Redfish and IPMI steps), or C{None} after a skip line for
        C{method} saying why there is none.
        """
        if self._bmc is None:
            self._bmc = await look_up_bmc(self.run.ctx, self.slave)
        address, why = self._bmc
        if why is not None:
            self.skip(method, why)
        return address

    def skip(self, method: str, why: str) -> None:
        self.add(f"Skipping {method} reboot: {why}.")
        self.run.log.info("Skipping {method} reboot: {why}", method=method, why=why)

    async def attempt(
        self, method: str, start: Callable[[], Awaitable[None]], wait: Callable[[], Awaitable[str | None]]
    ) -> bool:
        """
        Run one method: C{start} initiates it, C{wait} returns C{None} once the
        machine is back or a reason it is not. True when the machine is back.

        @raise _StayedBusy: SSH to the machine stayed busy (the line says
            when); the escalation stops.
        """
        self.run.log.info("Attempting {method} reboot", method=method)

        async def work() -> str:
            try:
                await start()
            except _StayedBusy as busy:
                self.outcome(f"Stopped while {busy.step} ({_one_line(busy.error)}).")
                raise
            except ClientError as error:
                raise _NotRebooted(_one_line(error)) from None
            self.outcome("initiated, waiting for it to come back...")
            try:
                problem = await wait()
            except _StayedBusy as busy:
                self.outcome(f"initiated, then stopped while {busy.step} ({_one_line(busy.error)}).")
                raise
            if problem is not None:
                raise _NotRebooted(problem)
            return "Success!"

        return await self.step(
            f"Attempting {method} reboot",
            work,
            failures=(_NotRebooted,),
            failed=lambda error: f"Failed ({error}).",
            fatal=False,
        )


class _NotRebooted(Exception):
    """A method could not be started, or the machine did not come back after it: why."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


async def reboot(run: ActionRun, update_bug: bool = True) -> str:
    """Reboot the machine by the gentlest method that works; file a bug if none does."""
    slave = await locate(run, ACTION.lookups)
    escalation = _Escalation(run, slave)
    for method in (_ssh, _mozpool, _redfish, _ipmi, _pdu):
        try:
            rebooted = await method(escalation)
        except _StayedBusy as busy:
            # Not a failed method: the machine is up; escalating would cut its power.
            escalation.add(_stayed_busy_text(slave))
            run.log.warn("SSH to the machine stayed busy {step}; no power control used", step=busy.step)
            raise ActionFailure(escalation.text) from None
        if rebooted:
            run.log.info("Rebooted")
            return escalation.text
    if not update_bug:
        raise ActionFailure(escalation.text + "\nAll reboot methods failed; not filing a bug, as asked.")
    raise ActionFailure(await _hand_off_to_bugzilla(escalation))


async def _wait_for_reboot(escalation: _Escalation, check_uptime: bool = False) -> str | None:
    """
    Wait for the machine to go down and come back (after SSH or Mozpool).

    @param check_uptime: when the probe never saw it down, ask the machine
        over SSH whether it booted meanwhile (a reboot quicker than the polls).
    @raise _StayedBusy: SSH to the machine stayed busy while checking its
        uptime, so whether it rebooted is not known.
    """
    outcome = await escalation.run.ctx.clients.prober.wait_for_reboot(escalation.slave.address)
    problem = reboot_problem(outcome)
    if (
        problem == NEVER_WENT_DOWN
        and check_uptime
        and await _rebooted_since(escalation.run, escalation.slave, outcome.waited)
    ):
        return None
    return problem


async def _wait_for_up(escalation: _Escalation) -> str | None:
    """Wait for the machine to come back after its power was cycled (it was seen off)."""
    ctx = escalation.run.ctx
    if await ctx.clients.prober.wait_for(escalation.slave.address, up=True, limit=ctx.config.probes.up_timeout):
        return None
    return "it did not come back"


async def _ssh(escalation: _Escalation) -> bool:
    run, slave = escalation.run, escalation.slave
    clients = run.ctx.clients
    try:
        answers = await clients.prober.alive(slave.address)
    except ClientError as error:
        escalation.skip("SSH", f"cannot probe the machine: {_one_line(error)}")
        return False
    escalation.answered = answers
    if not answers:
        escalation.skip("SSH", "the machine does not answer")
        return False

    async def start() -> None:
        try:
            session = await _session_when_free(run, slave, "logging in to send the reboot command")
        except OFFLINE_ERRORS as error:
            raise SSHError(f"could not connect: {_one_line(error)}") from None
        async with session:
            refusals = []
            for command in REBOOT_COMMANDS:
                try:
                    result = await session.run(command)
                except SSHTimeout:
                    # A command that hangs as the machine goes down; the wait decides.
                    run.log.info("'{command}' did not return; waiting for the machine", command=command)
                    return
                if result.exit_code is None or result.ok:
                    run.log.info("'{command}' accepted", command=command)
                    return
                refusals.append(f"'{command}' exited {result.exit_code}")
            raise SSHError("every reboot command was refused: " + ", ".join(refusals))

    return await escalation.attempt("SSH", start, lambda: _wait_for_reboot(escalation, check_uptime=True))


async def _rebooted_since(run: ActionRun, slave: Slave, seconds: float) -> bool:
    """
    Whether the machine booted within the last C{seconds}: a reboot faster
    than the probe's polls looks as if the machine never went down.

    False when the machine cannot be asked (it does not answer, refuses the
    login, or its uptime cannot be read). Busy SSH places say nothing either
    way, so they are waited for, a bounded number of times.

    @raise _StayedBusy: they stayed busy: not known.
    """
    try:
        session = await _session_when_free(run, slave, "checking its uptime after the reboot command")
    except SSHError as error:
        run.log.info("Cannot read the uptime over SSH: {reason}", reason=_one_line(error))
        return False
    async with session:
        try:
            uptime = await read_uptime(run, slave, session)
        except ActionFailure:
            return False
    run.log.info("Uptime after the reboot command: {uptime}s", uptime=uptime)
    return uptime <= seconds


async def _mozpool(escalation: _Escalation) -> bool:
    run, slave = escalation.run, escalation.slave
    if not slave.mozpool_server:
        escalation.skip("Mozpool", "no imaging server in inventory")
        return False
    server = slave.mozpool_server
    return await escalation.attempt(
        "Mozpool",
        lambda: run.ctx.clients.mozpool.power_cycle(server, slave.name),
        lambda: _wait_for_reboot(escalation),
    )


async def _redfish(escalation: _Escalation) -> bool:
    run, slave = escalation.run, escalation.slave
    redfish = run.ctx.clients.redfish
    bmc = await escalation.bmc("Redfish")
    if bmc is None:
        return False
    if not await redfish.speaks_redfish(bmc):
        escalation.skip("Redfish", f"the BMC at {slave.ipmi} does not speak Redfish")
        return False
    escalation.redfish_tried = True
    # Set by start(): whether the machine's power was cycled (seen off, then on)
    # rather than a restart merely accepted.
    cycled = False

    async def start() -> None:
        nonlocal cycled
        # A graceful restart asks the OS: only worth it while the machine answers.
        if escalation.answered and REDFISH_RESTART in await redfish.reset_types(bmc):
            run.log.info("Redfish reset {kind} of {bmc}", kind=REDFISH_RESTART, bmc=bmc)
            await redfish.reset(bmc, REDFISH_RESTART)
            return
        run.log.info("Redfish power cycle (ForceOff, then On) of {bmc}", bmc=bmc)
        await redfish.powercycle(bmc)
        cycled = True

    async def wait() -> str | None:
        if cycled:
            return await _wait_for_up(escalation)
        problem = await _wait_for_reboot(escalation)
        if problem != NEVER_WENT_DOWN:
            return problem
        # An OS that hangs ignores the restart request as it would the SSH command: cut the power.
        run.log.info(
            "{kind} did not take the machine down; Redfish power cycle of {bmc}", kind=REDFISH_RESTART, bmc=bmc
        )
        escalation.outcome(f"{REDFISH_RESTART} ignored, power cycling...")
        try:
            await redfish.powercycle(bmc)
        except ClientError as error:
            return f"{REDFISH_RESTART} ignored, then the power cycle failed: {_one_line(error)}"
        return await _wait_for_up(escalation)

    rebooted = await escalation.attempt("Redfish", start, wait)
    if not rebooted:
        redfish.forget(bmc)
    return rebooted


async def _ipmi(escalation: _Escalation) -> bool:
    run, slave = escalation.run, escalation.slave
    clients = run.ctx.clients
    bmc = await escalation.bmc("IPMI")
    if bmc is None:
        return False
    if escalation.redfish_tried:
        escalation.skip("IPMI", f"the BMC at {slave.ipmi} speaks Redfish (tried above)")
        return False
    if not await clients.ipmi.available(bmc):
        # Perhaps it speaks Redfish now: the next reboot asks it again.
        clients.redfish.forget(bmc)
        escalation.skip("IPMI", f"the BMC at {slave.ipmi} does not answer")
        return False
    rebooted = await escalation.attempt(
        "IPMI", lambda: clients.ipmi.powercycle(bmc), lambda: _wait_for_up(escalation)
    )
    if not rebooted:
        clients.redfish.forget(bmc)
    return rebooted


async def _pdu(escalation: _Escalation) -> bool:
    run, slave = escalation.run, escalation.slave
    outlet = slave.pdu
    if outlet is None:
        escalation.skip("PDU", "no PDU outlet in inventory")
        return False
    return await escalation.attempt(
        "PDU", lambda: run.ctx.clients.pdu.powercycle(outlet), lambda: _wait_for_up(escalation)
    )


async def _hand_off_to_bugzilla(escalation: _Escalation) -> str:
    """File (or find) the datacenter's reboot bug; returns the final status text."""
    run, slave = escalation.run, escalation.slave
    bugzilla = run.ctx.clients.bugzilla
    settings = run.ctx.config.reboot
    try:
        tracking = slave.bug or await bugzilla.get_bug(slave.name)
        if tracking is not None:
            existing = await _open_reboot_bug(run, tracking)
            if existing is not None:
                return f"{escalation.text}\n{slave.name} already has reboot bug ({existing.id}), nothing to do."
        escalation.add("Filing a bug for the datacenter...")
        if tracking is None:
            tracking_id, is_open = await file_tracking_bug(run, slave.name), True
        else:
            tracking_id, is_open = tracking.id, tracking.is_open
        bug_id = await bugzilla.create_bug(
            product=settings.bug_product,
            component=settings.bug_component,
            summary=settings.bug_summary.format(name=slave.name),
            blocks=[tracking_id],
            version="other",
            description=signed(
                run,
                f"{slave.fqdn or slave.name} did not come back from any reboot SlaveAPI tried:\n\n" + escalation.text,
            ),
        )
        escalation.replace_last(f"Filed reboot bug {bug_id}.")
        await comment_on_tracking_bug(run, tracking_id, is_open, escalation.text)
    except ClientError as error:
        return f"{escalation.text}\nCould not update Bugzilla: {_one_line(error)}"
    return escalation.text


async def _open_reboot_bug(run: ActionRun, tracking: Bug) -> Bug | None:
    settings = run.ctx.config.reboot
    summary = settings.bug_summary.format(name=run.slave)
    candidates = await run.ctx.clients.bugzilla.search(
        product=settings.bug_product,
        component=settings.bug_component,
        blocks=tracking.id,
        resolution="---",
        summary=summary,
    )
    return next((bug for bug in candidates if bug.is_open and bug.summary == summary), None)


#: Power control needs inventory (PDU, Mozpool) and the BMC's name. The
#: tracking bug is looked up only when every method failed: a wave of a
#: thousand reboots that work asks Bugzilla nothing. Recent jobs and the
#: master are not used.
ACTION = Action(
    name="reboot",
    run=reboot,
    exclusive=True,
    single_flight=True,
    timeout=3 * 3600.0,
    scope="reboot",
    lookups=frozenset({Lookup.INVENTORY, Lookup.BMC}),
)
