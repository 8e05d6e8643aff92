"""
The commands of C{slaveapi-cli}: list and show machines, run an action and
follow it to its end, page through results, read the fleet's health.

Exit codes say how it went, for scripts: 0 success (for C{run}: the action
succeeded), 1 the action failed (state 3), 2 a usage error or an error
answered by the server (its C{msg} is printed), 3 the action had not
finished within C{run --timeout}. Anything unexpected (a bug, an
interruption) is 2 as well, never 1: a script must not read it as the
action's failure.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from rich.console import Console

from slaveapi._text import one_line
from slaveapi.cli import _display
from slaveapi.cli._client import REQUEST_TIMEOUT, APIError, SlaveAPIClient, Unreachable
from slaveapi.cli._config import ConfigError, resolve
from slaveapi.cli._follow import POLL_INTERVAL, Follower, FollowTimeout, Target, is_done

EXIT_SUCCESS, EXIT_FAILURE, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3
#: Seconds C{run} follows an action by default: longer than any action's own limit.
DEFAULT_RUN_TIMEOUT = 1800.0
#: Columns of plain output to a pipe or a file.
_PIPE_WIDTH = 200


@dataclass
class _Session:
    """What every command needs: the client, where to print, and how."""

    client: SlaveAPIClient
    out: Console
    err: Console
    as_json: bool

    def fail(self, message: str, code: int = EXIT_ERROR) -> NoReturn:
        self.err.print(f"slaveapi-cli: {message}", markup=False, highlight=False)
        raise SystemExit(code)

    def print_json(self, value: Any) -> None:
        click.echo(json.dumps(value, indent=2, sort_keys=True))

    def get(self, path: str, query: Iterable[tuple[str, str]] = ()) -> Any:
        try:
            return self.client.get(path, query)
        except (APIError, Unreachable) as error:
            self.fail(_error_text(error))


def _error_text(error: APIError | Unreachable) -> str:
    if isinstance(error, APIError):
        return f"{error.msg} (HTTP {error.status} {error.error})"
    return str(error)


def _timestamp(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _machine_filters(
    purpose: str | None, environment: str | None, pools: Sequence[str], enabled: bool | None
) -> list[tuple[str, str]]:
    query = [(name, value) for name, value in (("purpose", purpose), ("environment", environment)) if value]
    query += [("pool", pool) for pool in pools]
    if enabled is not None:
        query.append(("enabled", "yes" if enabled else "no"))
    return query


def _machine_filter_options(command: Any) -> Any:
    for option in reversed(
        (
            click.option("--purpose", help="Only machines of this purpose (build, tests, ...)."),
            click.option("--environment", help="Only machines of this environment (prod, dev, ...)."),
            click.option("--pool", "pools", multiple=True, help="Only machines in this pool; repeatable."),
            click.option("--enabled/--disabled", default=None, help="Only enabled (or disabled) machines."),
        )
    ):
        command = option(command)
    return command


def _console(stderr: bool) -> Console:
    """
    A console for stdout or stderr: colours and live display on a terminal
    only; on a pipe, plain text as wide as C{COLUMNS} says (wide otherwise,
    so that tables do not fold for C{grep}).
    """
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return console


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="SlaveAPI's URL [env SLAVEAPI_URL; config file; default http://127.0.0.1:9999].")
@click.option("--token", help="Bearer token [env SLAVEAPI_TOKEN; config file]. Never printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON instead of tables.")
@click.option("--request-timeout", type=click.FloatRange(min=0.1), default=REQUEST_TIMEOUT, show_default=True,
              help="Seconds each HTTP request may take.")
@click.pass_context
def cli(context: click.Context, url: str | None, token: str | None, as_json: bool, request_timeout: float) -> None:
    """
    Talk to SlaveAPI: list machines, run actions and follow them, read results and health.

    The config file is ~/.config/slaveapi/cli.ini (or $SLAVEAPI_CLI_CONFIG),
    section [slaveapi], keys url and token.
    """
    out, err = _console(stderr=False), _console(stderr=True)
    try:
        settings = resolve(url, token, os.environ)
    except ConfigError as error:
        err.print(f"slaveapi-cli: {error}", markup=False)
        raise SystemExit(EXIT_ERROR) from None
    context.obj = _Session(SlaveAPIClient(settings, request_timeout), out, err, as_json)


@cli.command()
@_machine_filter_options
@click.pass_obj
def slaves(
    session: _Session, purpose: str | None, environment: str | None, pools: tuple[str, ...], enabled: bool | None
) -> None:
    """List the machines slavealloc knows, filtered."""
    answer = session.get("/slaves", _machine_filters(purpose, environment, pools, enabled))
    if session.as_json:
        session.print_json(answer)
        return
    columns = ("name", "purpose", "environment", "pool", "enabled", "current_master", "notes")
    machines = answer.get("slaves", [])
    _display.table(
        session.out,
        columns,
        ([machine.get(column) for column in columns] for machine in machines),
        title=f"{len(machines)} machine(s)",
    )


@cli.command()
@click.argument("name")
@click.pass_obj
def show(session: _Session, name: str) -> None:
    """Show what is known of the machine NAME."""
    answer = session.get(f"/slaves/{_quoted(name)}")
    if session.as_json:
        session.print_json(answer)
        return
    _display.mapping(session.out, answer, title=str(answer.get("name", name)))


def _fields(pairs: Sequence[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--field")
        fields[key] = value
    return fields


def _declared_fields(client: SlaveAPIClient, route: str) -> set[str] | None:
    """
    The form fields the action at C{route} takes, as the server's OpenAPI
    document declares them (C{waittime} included); C{None} when the server
    has no such document or it does not describe the route (the server then
    judges the fields itself).
    """
    try:
        document = client.get("/openapi.json")
        post = document["paths"][f"/slaves/{{slave}}/actions/{route}"]["post"]
        content = post["requestBody"]["content"]["application/x-www-form-urlencoded"]
        return set(content["schema"]["properties"])
    except (APIError, Unreachable, KeyError, TypeError):
        return None


@cli.command()
@click.argument("action")
@click.argument("name")
@click.option("--field", "-f", "pairs", multiple=True, metavar="NAME=VALUE",
              help="A form field of the action (e.g. reason=disk full); repeatable.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_RUN_TIMEOUT, show_default=True,
              help="Seconds to follow the action before giving up (exit 3); it goes on in the server.")
@click.option("--follow/--no-follow", default=True, help="Follow the action to its end (default), or only request it.")
@click.option("--verbose", "-v", is_flag=True, help="Say how the action is followed (events or polling).")
@click.option("--poll-interval", type=click.FloatRange(min=0.0), default=POLL_INTERVAL, hidden=True)
@click.option("--no-events", is_flag=True, hidden=True, help="Poll even when the server has /events.")
@click.pass_obj
def run(
    session: _Session, action: str, name: str, pairs: tuple[str, ...], timeout: float, follow: bool,
    verbose: bool, poll_interval: float, no_events: bool,
) -> None:
    """
    Run ACTION on the machine NAME and follow it live.

    Exits 0 when the action succeeds, 1 when it fails, 2 when the server refuses
    the request, 3 when it has not finished within --timeout.
    """
    fields = _fields(pairs)
    declared = _declared_fields(session.client, action)
    unknown = sorted(set(fields) - declared) if declared is not None else []
    if unknown:
        expected = ", ".join(sorted(declared or ()))
        session.fail(f"--field: {action} takes no field {unknown[0]!r}; expected one of {expected}")
    path = f"/slaves/{_quoted(name)}/actions/{_quoted(action)}"
    try:
        answer = session.client.post(path, fields)
    except (APIError, Unreachable) as error:
        session.fail(_error_text(error))
    requestid = answer.get("requestid")
    if not isinstance(requestid, int):
        session.fail(f"POST {path}: the answer has no requestid: {answer!r}")
    if not follow or is_done(answer):
        _finish(session, action, name, requestid, answer, progress_shown=False)
    title = f"{action} {name} (request {requestid})"
    if not session.as_json:
        session.err.print(f"Requested {title}.", markup=False)
    progress: _display.LiveProgress | _display.PlainProgress | None = None
    if not session.as_json:
        progress = _display.LiveProgress(session.out, title) if session.out.is_terminal else _display.PlainProgress(
            session.out
        )
    follower = Follower(
        session.client, progress.update if progress else (lambda _result: None), poll_interval, not no_events
    )
    try:
        result = follower.follow(Target(name, action, requestid), timeout)
    except FollowTimeout:
        result = None
    except (APIError, Unreachable) as error:
        session.fail(f"following request {requestid}: {_error_text(error)}")
    finally:
        if progress is not None:
            progress.close()
    if verbose:
        received = f" ({follower.received} received)" if follower.how == "events" else ""
        session.err.print(f"followed by {follower.how}{received}", markup=False)
    if result is None:
        session.fail(
            f"request {requestid} had not finished after {timeout:g}s; it goes on: "
            f"GET {path}?requestid={requestid}",
            EXIT_TIMEOUT,
        )
    _finish(session, action, name, requestid, result, progress_shown=progress is not None)


def _finish(
    session: _Session, action: str, name: str, requestid: int, result: dict[str, Any], progress_shown: bool
) -> NoReturn:
    """Print the result (the text when no progress showed it) and exit by its state."""
    state = result.get("state")
    if session.as_json:
        session.print_json(result)
    else:
        text = result.get("text")
        if not _display.status_lines(text) or not progress_shown:
            shown = text if isinstance(text, str) else json.dumps(text, sort_keys=True)
            if shown:
                session.out.print(shown, markup=False, highlight=False)
        line = _display.styled_state(state)
        line.append(f" {action} {name} (request {requestid})")
        session.out.print(line)
    if state == 3:
        raise SystemExit(EXIT_FAILURE)
    raise SystemExit(EXIT_SUCCESS)


@cli.command()
@click.option("--slave", help="Only this machine's results.")
@click.option("--action", help="Only this action's results (a name or a route).")
@click.option("--state", help="Only results in this state: 0-3 or PENDING, RUNNING, SUCCESS, FAILURE.")
@click.option("--since", help="A request id (results after it) or a time (@unix, ISO-8601 with offset).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Results per page.")
@click.pass_obj
def results(
    session: _Session, slave: str | None, action: str | None, state: str | None, since: str | None, limit: int
) -> None:
    """One page of results, in request order; the next page's command is printed after it."""
    query = [(key, value) for key, value in (("slave", slave), ("action", action), ("state", state), ("since", since))
             if value]
    query.append(("limit", str(limit)))
    answer = session.get("/results", query)
    if session.as_json:
        session.print_json(answer)
        return
    entries = answer.get("results", [])
    _display.table(
        session.out,
        ("requestid", "slave", "action", "state", "requested", "text"),
        (
            (
                entry.get("requestid"), entry.get("slave"), entry.get("action"),
                _display.styled_state(entry.get("state")), _timestamp(entry.get("request_timestamp")),
                _display.cell(entry.get("text")),
            )
            for entry in entries
        ),
        title=f"{len(entries)} result(s)",
    )
    if answer.get("next"):
        session.out.print(f"next page: GET {answer['next']}", markup=False, highlight=False)


@cli.command()
@_machine_filter_options
@click.pass_obj
def health(
    session: _Session, purpose: str | None, environment: str | None, pools: tuple[str, ...], enabled: bool | None
) -> None:
    """The fleet health loop's verdicts, counted, and the machines that are down."""
    answer = session.get("/health", _machine_filters(purpose, environment, pools, enabled))
    if session.as_json:
        session.print_json(answer)
        return
    verdicts = answer.get("verdicts", {})
    _display.table(
        session.out, ("verdict", "machines"), ((name, verdicts[name]) for name in verdicts),
        title=f"{answer.get('machines', 0)} machine(s), checked {_timestamp(answer.get('checked_at')) or 'never'}",
    )
    down = answer.get("down", [])
    session.out.print("down: " + (", ".join(down) if down else "none"), markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    The console script's entry point. Click's own handling would exit 1 on
    an interruption or some usage errors, and a bug would end in a traceback
    with 1: both would read as "the action failed", so they exit 2 here.
    """
    try:
        code = cli.main(
            args=list(argv) if argv is not None else sys.argv[1:], prog_name="slaveapi-cli", standalone_mode=False
        )
    except click.exceptions.Abort:
        click.echo("slaveapi-cli: interrupted", err=True)
        code = EXIT_ERROR
    except click.ClickException as error:
        error.show()
        code = EXIT_ERROR
    except Exception as error:  # the last resort: a message and exit 2, not a traceback and 1
        click.echo(f"slaveapi-cli: unexpected error: {type(error).__name__}: {one_line(str(error))}", err=True)
        code = EXIT_ERROR
    raise SystemExit(code if isinstance(code, int) else EXIT_SUCCESS)
