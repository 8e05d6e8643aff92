"""
What an action is, and what it is handed while it runs.

An action is an C{async def} taking an L{ActionRun} (plus the keyword
arguments its L{Action.arguments} parser made of the request's form fields)
and returning its payload on success. It raises L{ActionFailure} with the
payload to finish as FAILURE; any other exception also ends as FAILURE, with
a one-line reason, its traceback going to the log only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from slaveapi._yesno import NO, YES, parse_yes_no
from slaveapi.results import Payload

if TYPE_CHECKING:
    from slaveapi.context import Context
    from slaveapi.machines import Lookup


class ActionFailure(Exception):
    """
    The action could not do what was asked; C{payload} becomes the result text.
    """

    def __init__(self, payload: Payload) -> None:
        super().__init__(payload)
        self.payload = payload


class ArgumentError(ValueError):
    """
    A form field the action cannot take; the web layer answers it as a 400.

    @ivar field: the field at fault.
    @ivar expected: what was expected (and what came), as the message says it
        after the field's name: C{"bug: expected a bug number, got 'abc'"}.
    """

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: {expected}")
        self.field = field
        self.expected = expected


class MissingArguments(ArgumentError):
    """
    Required form fields that were not given (C{field} is the first of them).
    """

    def __init__(self, missing: Sequence[str], required: Sequence[str], received: str) -> None:
        super().__init__(missing[0], "required")
        self.missing = tuple(missing)
        self._message = f"missing field(s) {', '.join(missing)}; required: {', '.join(required)}; received: {received}"

    def __str__(self) -> str:
        return self._message


#: Parses a request's form fields (name -> first value) into an action's
#: keyword arguments, raising L{ArgumentError} for a field it cannot take.
Arguments = Callable[[Mapping[str, str]], dict[str, Any]]


def no_arguments(form: Mapping[str, str]) -> dict[str, Any]:
    """For actions that take no form fields: whatever the request carries is ignored."""
    return {}


@dataclass(frozen=True)
class FormField:
    """
    One form field an action takes, declared once: the OpenAPI document,
    the history (which leaves out C{secret} fields) and the clients read it.

    @ivar kind: its JSON Schema type: C{string}, C{integer}, C{number} or C{boolean}
        (yes/no words, see L{yes_no}).
    @ivar choices: the values it may take, when they are a fixed set.
    @ivar secret: never stored nor shown back (a password, a key).
    """

    name: str
    kind: Literal["string", "integer", "number", "boolean"] = "string"
    description: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    secret: bool = False


#: Any machine SlaveAPI knows (slavealloc, devices.json, loaner names).
MACHINES: Final = "machines"
#: Loaner names only, and C{default} (a name made from the request's fields).
LOANERS: Final = "loaners"

def yes_no(form: Mapping[str, str], field: str, default: bool) -> bool:
    """
    A yes/no field (L{slaveapi._yesno}'s words); C{default} when absent or empty.

    @raise ArgumentError: for any other word.
    """
    raw = form.get(field)
    if raw is None or raw.strip() == "":
        return default
    value = parse_yes_no(raw)
    if value is None:
        raise ArgumentError(field, f"expected one of {', '.join(YES + NO)} (any case), got {raw[:40]!r}")
    return value


@dataclass(frozen=True)
class Action:
    """
    A kind of request SlaveAPI can carry out on a slave.

    @ivar name: the name results are stored under (the reference's action name).
    @ivar run: the coroutine function doing the work.
    @ivar exclusive: hold the slave's lock while running, so that actions that
        change a machine never overlap on it. Read-only actions leave it free.
    @ivar single_flight: a request while one is pending or running answers
        that one instead of starting another.
    @ivar timeout: the overall limit in seconds, unless configuration says
        otherwise.
    @ivar scope: what an API token must allow for a client to request it
        (C{inspect}, C{reboot}, C{disable}, C{aws}: see
        L{slaveapi.config.API_SCOPES}); C{None}: only a token allowing
        everything may.
    @ivar arguments: makes the request's form fields into C{run}'s keyword
        arguments (see L{Arguments}).
    @ivar routes: the URL segments under C{/slaves/<slave>/actions/} that
        serve it; by default its name alone. Results are filed under C{name}
        whichever route asked.
    @ivar names: which slave names a request may act on: L{MACHINES} (every
        machine SlaveAPI knows) or L{LOANERS} (loaner names and C{default}).
    @ivar lookups: what the action needs known of the machine beyond its
        identity, address and buildbot host (L{slaveapi.machines.Lookup});
        only these are asked for.
    @ivar fields: the form fields C{arguments} takes, declared (see
        L{FormField}); C{waittime} is the web layer's and not listed.
    """

    name: str
    run: Callable[..., Awaitable[Payload]]
    exclusive: bool = False
    single_flight: bool = False
    timeout: float = 600.0
    scope: str | None = None
    arguments: Arguments = no_arguments
    routes: tuple[str, ...] = ()
    names: Literal["machines", "loaners"] = MACHINES
    lookups: frozenset[Lookup] = frozenset()
    fields: tuple[FormField, ...] = ()

    def __post_init__(self) -> None:
        if not self.routes:
            object.__setattr__(self, "routes", (self.name,))


class ActionLog:
    """
    A logger whose every event carries the slave name and the request id.
    """

    def __init__(self, logger: Logger, slave: str, requestid: int, action: str) -> None:
        self._logger = logger
        self._fields: dict[str, Any] = {"slave": slave, "requestid": requestid, "action": action}

    def _emit(self, method: Callable[..., None], format: str, fields: dict[str, Any]) -> None:
        method("[{slave} #{requestid} {action}] " + format, **self._fields, **fields)

    def debug(self, format: str, **fields: Any) -> None:
        self._emit(self._logger.debug, format, fields)

    def info(self, format: str, **fields: Any) -> None:
        self._emit(self._logger.info, format, fields)

    def warn(self, format: str, **fields: Any) -> None:
        self._emit(self._logger.warn, format, fields)

    def error(self, format: str, **fields: Any) -> None:
        self._emit(self._logger.error, format, fields)

    def failure(self, format: str, **fields: Any) -> None:
        """Log the exception being handled, with its traceback."""
        self._logger.failure("[{slave} #{requestid} {action}] " + format, **self._fields, **fields)


#: The outcome a step's history shows when a cancellation (a stop, the
#: action's time limit) ends it.
INTERRUPTED_STEP = "Interrupted"

#: The outcome a step's history shows when an error that is neither one of
#: its declared failures nor an L{ActionFailure} (a bug) ends it.
UNEXPECTED_STEP = "Failed: unexpected error"


@dataclass(frozen=True)
class StepChange:
    """
    A step of an action starting or ending, as L{StatusLines.step} reports it
    through L{ActionRun} (the processor records it in the machine's history,
    timing it by the reactor's clock).

    @ivar n: the step's number in its action, from 0.
    @ivar outcome: C{None} when it starts; its status line's outcome
        (C{Success!}, C{Failed: ...}) when it ends.
    """

    n: int
    heading: str
    finished: bool = False
    outcome: str | None = None


class ActionRun:
    """
    One running action: the context it runs in and the means to report.

    @ivar ctx: clients and configuration, as they were when the action started
        (a reload does not change them under a running action).
    @ivar client: the name of the API client that asked for it; C{None} when
        authentication is off.
    @ivar deadline: when (on C{ctx.reactor}'s clock) the action's time limit
        cancels it; C{None} when it has none. A wait that must end with the
        action's own words ends before then.
    @param steps: told of each step starting and ending (L{StepChange});
        by default nobody is.
    """

    def __init__(
        self,
        ctx: Context,
        slave: str,
        requestid: int,
        action: str,
        log: ActionLog,
        report: Callable[[str], None],
        client: str | None = None,
        deadline: float | None = None,
        steps: Callable[[StepChange], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.deadline = deadline
        self.slave = slave
        self.requestid = requestid
        self.action = action
        self.log = log
        self._report = report
        self._steps = steps
        self._steps_begun = 0
        self.status = ""

    def progress(self, text: str) -> None:
        """Show C{text} as the result's text while the action runs."""
        self.status = text
        self._report(text)

    def step_started(self, heading: str) -> int:
        """Report that a step called C{heading} starts; return its number."""
        n = self._steps_begun
        self._steps_begun += 1
        if self._steps is not None:
            self._steps(StepChange(n, heading))
        return n

    def step_ended(self, n: int, heading: str, outcome: str) -> None:
        """Report that step C{n} ended with C{outcome}."""
        if self._steps is not None:
            self._steps(StepChange(n, heading, finished=True, outcome=outcome))


class StepFailed(ActionFailure):
    """
    A step of L{StatusLines.step} failed: C{payload} is the whole status
    text, its last line saying why.

    @ivar heading: the step's heading.
    @ivar reason: the failure's own words (an L{ActionFailure}'s payload or
        the error's text), for the log and for callers that undo.
    """

    def __init__(self, text: str, heading: str, reason: str) -> None:
        super().__init__(text)
        self.heading = heading
        self.reason = reason


def failure_reason(error: BaseException) -> str:
    """What failed, in the error's words: an L{ActionFailure}'s payload, else its text."""
    return str(error.payload) if isinstance(error, ActionFailure) else str(error)


def failed_colon(error: BaseException) -> str:
    """The default outcome of a failed step: C{Failed: <reason>}."""
    return f"Failed: {failure_reason(error)}"


class StatusLines:
    """
    An action's status text, built one step a line and shown as its progress.

    Each step is a heading that gets its outcome appended, as the
    reference's status lines read ("Disabling in slavealloc...Success!");
    L{step} is the way to write one.
    """

    def __init__(self, run: ActionRun) -> None:
        self._run = run
        self.lines: list[str] = []
        self._heading: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def add(self, line: str) -> None:
        """Show a new line."""
        self.lines.append(line)
        self._run.progress(self.text)

    def replace_last(self, line: str) -> None:
        """Show C{line} instead of the last line."""
        self.lines[-1] = line
        self._run.progress(self.text)

    def fail(self, line: str) -> ActionFailure:
        """Show C{line} and return the failure carrying the whole text, to raise."""
        self.add(line)
        return ActionFailure(self.text)

    def show(self) -> None:
        """Show the text as it is now (after changing L{lines} directly)."""
        self._run.progress(self.text)

    async def step(
        self,
        heading: str,
        work: Callable[[], Awaitable[str | None]],
        *,
        failures: tuple[type[BaseException], ...] = (ActionFailure,),
        failed: Callable[[BaseException], str] = failed_colon,
        fatal: bool = True,
    ) -> bool:
        """
        Run one step, shown as C{heading...} then C{heading...<outcome>}.

        The contract:
          - C{work} returns the outcome's text (C{None}: C{Success!}); the
            step returns True.
          - C{work} raises one of C{failures}: the outcome is
            C{failed(error)} (by default C{Failed: <reason>}, see
            L{failed_colon}); then, if C{fatal}, L{StepFailed} is raised,
            carrying the whole text (the action ends as FAILURE with it
            unless the caller catches it), else the step returns False.
          - Anything else propagates unchanged, the line showing what it
            showed last: the heading, or what C{work} gave L{outcome}.

        The run is told when the step starts and ends, with the outcome its
        line shows (L{ActionRun.step_started}, L{ActionRun.step_ended}), for
        the machine's history; a step ended by anything else ends there as
        L{INTERRUPTED_STEP} when it was cancelled, as C{failed(error)} for
        another L{ActionFailure}, and as L{UNEXPECTED_STEP} otherwise.

        @param heading: the step, without the trailing C{...}.
        """
        self._heading = heading
        self.add(f"{heading}...")
        n = self._run.step_started(heading)
        try:
            text = await work()
        except failures as error:
            reason = failure_reason(error)
            self._run.log.warn("{step} failed: {reason}", step=heading, reason=reason)
            said = failed(error)
            self.outcome(said)
            self._run.step_ended(n, heading, said)
            if fatal:
                raise StepFailed(self.text, heading, reason) from None
            return False
        except BaseException as error:
            self._run.step_ended(n, heading, _ended_by(error, failed))
            raise
        said = "Success!" if text is None else text
        self.replace_last(f"{heading}...{said}")
        self._run.step_ended(n, heading, said)
        return True

    def outcome(self, text: str) -> None:
        """
        Show C{text} after the heading of the step running (or that just
        ran): an outcome so far, e.g. C{initiated, waiting...}.
        """
        if self._heading is None:
            raise RuntimeError("no step is running")
        self.replace_last(f"{self._heading}...{text}")


def _ended_by(error: BaseException, failed: Callable[[BaseException], str]) -> str:
    """The history outcome of a step that C{error}, not one of its declared failures, ended."""
    if isinstance(error, (CancelledError, asyncio.CancelledError)):
        return INTERRUPTED_STEP
    if isinstance(error, ActionFailure):
        return failed(error)
    return UNEXPECTED_STEP
