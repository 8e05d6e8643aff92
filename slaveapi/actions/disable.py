"""
The C{disable} action: take a machine out of service and say so on its tracking bug.

In the reference's order: the machine's slavealloc record and its
problem-tracking bug are loaded (the bug is filed when missing: alias the
short name, product, component and summary from C{[reboot] tracking_*}); a
machine already disabled is left alone ("Slave is already disabled. Nothing
to do."). Otherwise:

  1. Disable in slavealloc: C{enabled} becomes false (C{PUT} of the slave record).
  2. Stop the buildbot: gracefully through its master, confirmed from
     twistd.log (the C{shutdown_buildslave} steps), or with C{force} at
     once by a reboot that files no bugs.
  3. Update the problem-tracking bug: the status lines of steps 1 and 2 and
     the reason are commented on it, reopening it if it was closed.

The result text lists each step and its outcome, e.g.::

    Disabling in slavealloc...Success!
    Requesting graceful shutdown from master bm02-tests1...Accepted (Buildbot 0.8, HTTP 302).
    Waiting for the buildbot to shut down...Confirmed: it shut down gracefully on command from its master at ...
    Commenting on problem tracking bug 1003...Success!

It ends as FAILURE when any step failed (steps after a failed shutdown
still run; nothing runs after slavealloc refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slaveapi.actions._base import (
    Action,
    ActionFailure,
    ActionRun,
    ArgumentError,
    FormField,
    StatusLines,
    yes_no,
)
from slaveapi.actions._bugs import comment_on_tracking_bug, file_tracking_bug, requester
from slaveapi.actions._remote import locate
from slaveapi.actions.reboot import reboot
from slaveapi.actions.shutdown_buildslave import ACTION_TIMEOUT, stop_buildbot
from slaveapi.clients.bugzilla import Bug
from slaveapi.clients.http import RemoteError
from slaveapi.machines import Slave

ALREADY_DISABLED = "Slave is already disabled. Nothing to do."

#: The longest reason accepted (it goes into a public bug comment).
MAX_REASON_LENGTH = 500


def check_reason(raw: str) -> str:
    """
    C{raw} without surrounding spaces, if it is one line of at most
    L{MAX_REASON_LENGTH} printable characters (it is quoted in a public bug
    comment, where it must not be able to pass for SlaveAPI's own lines).

    @raise ArgumentError: naming the field and what was expected.
    """
    reason = raw.strip(" ")
    if len(reason) > MAX_REASON_LENGTH:
        raise ArgumentError("reason", f"expected at most {MAX_REASON_LENGTH} characters, got {len(reason)}")
    if not reason.isprintable():
        raise ArgumentError(
            "reason", "expected one line of printable characters (no newlines, tabs or control characters)"
        )
    return reason


#: A reason: the field C{disable} and C{pause_buildslave} take.
REASON_FIELD = FormField(
    "reason", description=f"why, one line of at most {MAX_REASON_LENGTH} printable characters, quoted on the "
    "machine's problem-tracking bug as the requester's words"
)
#: C{disable}'s form fields, declared.
DISABLE_FIELDS = (
    REASON_FIELD,
    FormField("force", "boolean", "stop the buildbot by a reboot rather than a graceful shutdown; default no"),
)


def disable_arguments(form: Mapping[str, str]) -> dict[str, Any]:
    """C{disable}'s form fields: C{reason} (one line of text) and C{force} (yes/no, default no)."""
    return {"reason": check_reason(form.get("reason") or ""), "force": yes_no(form, "force", default=False)}


def quoted_reason(run: ActionRun, reason: str) -> str:
    """The reason as the requester's words, e.g. C{Reason given by dashboard: "..."}."""
    if not reason:
        return f"No reason given by {requester(run)}."
    return f'Reason given by {requester(run)}: "{reason}"'


async def disable(run: ActionRun, reason: str = "", force: bool = False) -> str:
    """
    Disable the machine in slavealloc, stop its buildbot, and comment on its tracking bug.

    @param reason: why, for the tracking bug.
    @param force: reboot at once instead of a graceful shutdown.
    """
    slave = await locate(run)
    record = slave.slavealloc
    if record is None:
        problem = slave.errors.get("slavealloc") or "not in slavealloc"
        raise ActionFailure(f"{slave.name} - Cannot disable: {problem}.")
    status = StatusLines(run)
    tracking = await _tracking_bug(run, slave, status)
    if not record.enabled:
        return ALREADY_DISABLED

    async def disable_in_slavealloc() -> None:
        await run.ctx.clients.slavealloc.set_enabled(record, False)

    await status.step("Disabling in slavealloc", disable_in_slavealloc, failures=(RemoteError,), failed=_failed)
    run.log.info("Disabled in slavealloc")

    stopped = await (_force_reboot(run, status) if force else _graceful_shutdown(run, slave, status, reason))
    commented = await _comment(run, slave, tracking, status, reason)
    if not (stopped and commented):
        raise ActionFailure(status.text)
    return status.text


async def _graceful_shutdown(run: ActionRun, slave: Slave, status: StatusLines, reason: str) -> bool:
    why = f"disabled through SlaveAPI: {reason}" if reason else "disabled through SlaveAPI"
    try:
        await stop_buildbot(run, slave, status, why)
    except ActionFailure:
        return False
    return True


async def _force_reboot(run: ActionRun, status: StatusLines) -> bool:
    """Reboot now, without touching any bug; reboot's own lines go under a heading."""
    status.add("Forcing a reboot instead of a graceful shutdown:")

    def report(text: str) -> None:
        run.progress(f"{status.text}\n{text}" if text else status.text)

    inner = ActionRun(run.ctx, run.slave, run.requestid, run.action, run.log, report, client=run.client)
    try:
        text = await reboot(inner, update_bug=False)
        ok = True
    except ActionFailure as failure:
        text, ok = str(failure.payload), False
    for line in text.splitlines():
        status.add(line)
    return ok


async def _tracking_bug(run: ActionRun, slave: Slave, status: StatusLines) -> Bug | None:
    """The machine's problem-tracking bug, filed when missing; None (and a status line) if Bugzilla failed."""
    bugzilla = run.ctx.clients.bugzilla
    try:
        bug = await bugzilla.get_bug(slave.name)
        if bug is not None:
            return bug
        return await bugzilla.get_bug(await file_tracking_bug(run, slave.name))
    except RemoteError as error:
        status.add(f"Could not load or file the problem tracking bug: {error}")
        return None


async def _comment(run: ActionRun, slave: Slave, tracking: Bug | None, status: StatusLines, reason: str) -> bool:
    """Comment the status so far and the reason on the tracking bug, reopening it if closed."""
    if tracking is None:
        status.add("Not commenting on the problem tracking bug: there is none.")
        return False
    comment = f"{status.text}\n{quoted_reason(run, reason)}"
    heading = (
        f"Commenting on problem tracking bug {tracking.id}"
        if tracking.is_open
        else f"Reopening and commenting on problem tracking bug {tracking.id}"
    )

    async def post() -> None:
        await comment_on_tracking_bug(run, tracking.id, tracking.is_open, comment)

    return await status.step(heading, post, failures=(RemoteError,), failed=_failed, fatal=False)


def _failed(error: BaseException) -> str:
    """How disable's steps say they failed: C{Failed (<error>).}"""
    return f"Failed ({error})."


#: A graceful shutdown may wait C{[buildbot] max_wait} (5 hours by default).
ACTION = Action(
    name="disable",
    run=disable,
    exclusive=True,
    single_flight=True,
    timeout=ACTION_TIMEOUT,
    scope="disable",
    arguments=disable_arguments,
    fields=DISABLE_FIELDS,
)
