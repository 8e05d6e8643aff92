"""
The machine's problem-tracking bug, as the actions that report to it use it.

Its alias is the machine's short name; product, component and summary come
from C{[reboot] tracking_*}. Errors are the Bugzilla client's
L{slaveapi.clients.http.RemoteError}s, for the caller to report.

Everything SlaveAPI writes to Bugzilla ends with a line saying which API
client asked for it (L{signed}), so that a public comment always says who
is behind it.
"""

from __future__ import annotations

from slaveapi.actions._base import ActionRun


def requester(run: ActionRun) -> str:
    """The API client behind C{run}, as bug comments name it."""
    return run.client if run.client is not None else "an anonymous client (authentication is off)"


def signed(run: ActionRun, text: str) -> str:
    """C{text} with a last line saying who asked for it, and which request it was."""
    return f"{text}\n\n(SlaveAPI {run.action} request {run.requestid}, requested by {requester(run)}.)"


async def file_tracking_bug(run: ActionRun, name: str) -> int:
    """File the problem-tracking bug of machine C{name}; returns its id."""
    settings = run.ctx.config.reboot
    bug_id = await run.ctx.clients.bugzilla.create_bug(
        product=settings.tracking_product,
        component=settings.tracking_component,
        summary=settings.tracking_summary.format(name=name),
        alias=name,
        version="other",
        description=signed(run, f"Problem tracking bug for {name}, filed by SlaveAPI."),
    )
    run.log.info("Filed problem tracking bug {bug}", bug=bug_id)
    return bug_id


async def comment_on_tracking_bug(run: ActionRun, bug_id: int, is_open: bool, text: str) -> None:
    """Comment C{text}, signed, on the tracking bug, reopening it first if it was closed."""
    bugzilla = run.ctx.clients.bugzilla
    if not is_open:
        await bugzilla.update_bug(bug_id, status="REOPENED")
    await bugzilla.add_comment(bug_id, signed(run, text))
