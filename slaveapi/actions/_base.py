"""
What an action is, and what it is handed while it runs.

An action is an C{async def} taking an L{ActionRun} (plus the keyword
arguments its route validated) and returning its payload on success. It
raises L{ActionFailure} with the payload to finish as FAILURE; any other
exception also ends as FAILURE, with a one-line reason, its traceback going to
the log only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.logger import Logger

from slaveapi.results import Payload

if TYPE_CHECKING:
    from slaveapi.context import Context


class ActionFailure(Exception):
    """
    The action could not do what was asked; C{payload} becomes the result text.
    """

    def __init__(self, payload: Payload) -> None:
        super().__init__(payload)
        self.payload = payload


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
    """

    name: str
    run: Callable[..., Awaitable[Payload]]
    exclusive: bool = False
    single_flight: bool = False
    timeout: float = 600.0
    scope: str | None = None


class ActionLog:
    """
    A logger whose every event carries the slave name and the request id.
    """

    def __init__(self, logger: Logger, slave: str, requestid: int, action: str) -> None:
        self._logger = logger
        self._fields = {"slave": slave, "requestid": requestid, "action": action}

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
    """

    def __init__(
        self,
        ctx: "Context",
        slave: str,
        requestid: int,
        action: str,
        log: ActionLog,
        report: Callable[[str], None],
        client: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.deadline = deadline
        self.slave = slave
        self.requestid = requestid
        self.action = action
        self.log = log
        self._report = report
        self.status = ""

    def progress(self, text: str) -> None:
        """Show C{text} as the result's text while the action runs."""
        self.status = text
        self._report(text)

    def step(self, line: str) -> None:
        """Append C{line} to the progress text (the reference's status style)."""
        self.progress(self.status + line)


class StatusLines:
    """
    An action's status text, built one step a line and shown as its progress.

    Each step is a heading that gets its outcome appended, as the
    reference's status lines read ("Disabling in slavealloc...Success!").
    """

    def __init__(self, run: ActionRun) -> None:
        self._run = run
        self.lines: list[str] = []

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
