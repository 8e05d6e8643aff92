"""
Remote and error text made fit for one line of a result, an error message or a log.
"""

from __future__ import annotations

#: The most characters of someone else's text quoted in one of our lines.
MAX_QUOTED = 200


def one_line(text: str, limit: int = MAX_QUOTED) -> str:
    """C{text} with each run of whitespace (newlines included) as one space, cut at C{limit} characters."""
    return " ".join(text.split())[:limit]


def error_line(error: BaseException, limit: int = MAX_QUOTED) -> str:
    """C{error}'s message as L{one_line}, or its type's name when the message is empty."""
    return one_line(str(error), limit) or type(error).__name__
