"""
How C{slaveapi-cli} shows things: rich tables and a live progress display
on a terminal; the same content without colour or cursor movement when the
output is a pipe or a file, so logs and scripts read it line by line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

STATE_NAMES = {0: "PENDING", 1: "RUNNING", 2: "SUCCESS", 3: "FAILURE"}
_STATE_STYLES = {0: "yellow", 1: "cyan", 2: "green", 3: "red"}


def state_name(state: object) -> str:
    return STATE_NAMES.get(state, str(state)) if isinstance(state, int) else str(state)


def styled_state(state: object) -> Text:
    return Text(state_name(state), style=_STATE_STYLES.get(state, "") if isinstance(state, int) else "")


def cell(value: Any) -> str:
    """A value as one table cell: text as is, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def table(console: Console, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    """Print rows under C{columns}; C{Text} cells keep their style."""
    shown = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        shown.add_column(column, overflow="fold")
    for row in rows:
        shown.add_row(*(value if isinstance(value, Text) else Text(cell(value)) for value in row))
    console.print(shown)


def mapping(console: Console, values: Mapping[str, Any], title: str | None = None) -> None:
    """Print a JSON object as a two-column table of its keys and values."""
    table(console, ("field", "value"), ((key, values[key]) for key in sorted(values)), title)


def status_lines(text: Any) -> list[str]:
    """An action's text as its status lines; a non-text payload has none."""
    return text.split("\n") if isinstance(text, str) and text else []


class PlainProgress:
    """
    Progress for a pipe: each status line printed when it first appears,
    and again when its outcome is appended
    (C{Attempting SSH reboot...} then C{Attempting SSH reboot...Success!}).
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._shown: list[str] = []
        self._state: object = None

    def update(self, result: Mapping[str, Any]) -> None:
        state = result.get("state")
        if state != self._state and state in (0, 1):
            self._console.print(f"[{state_name(state)}]", markup=False, highlight=False)
        self._state = state
        lines = status_lines(result.get("text"))
        for index, line in enumerate(lines):
            if index >= len(self._shown) or self._shown[index] != line:
                self._console.print(line, markup=False, highlight=False)
        self._shown = lines

    def close(self) -> None:
        """Nothing to undo on a pipe."""


class LiveProgress:
    """
    Progress on a terminal: the status lines redrawn in place as they grow,
    a spinner on the step in progress (a line still ending in C{...}).
    """

    def __init__(self, console: Console, title: str) -> None:
        self._title = title
        self._lines: list[str] = []
        self._state: object = 0
        self._live = Live(self._render(), console=console, refresh_per_second=8, transient=False)
        self._live.start()

    def _render(self) -> RenderableType:
        parts: list[RenderableType] = [Text.assemble((self._title, "bold"), " ", styled_state(self._state))]
        running = self._state in (0, 1)
        for index, line in enumerate(self._lines):
            last = index == len(self._lines) - 1
            if last and running and line.endswith("..."):
                parts.append(Spinner("dots", Text(line)))
            else:
                parts.append(Text("  " + line, style="red" if "Failed" in line else ""))
        if running and not self._lines:
            parts.append(Spinner("dots", Text("waiting for the action to start")))
        return Group(*parts)

    def update(self, result: Mapping[str, Any]) -> None:
        self._state = result.get("state")
        self._lines = status_lines(result.get("text"))
        self._live.update(self._render(), refresh=True)

    def close(self) -> None:
        self._live.stop()
