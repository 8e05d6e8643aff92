"""
Remote and error text made fit for one line of a result, an error message or a log,
and URLs shown without what may be secret in them.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: The most characters of someone else's text quoted in one of our lines.
MAX_QUOTED = 200


def one_line(text: str, limit: int = MAX_QUOTED) -> str:
    """C{text} with each run of whitespace (newlines included) as one space, cut at C{limit} characters."""
    return " ".join(text.split())[:limit]


def error_line(error: BaseException, limit: int = MAX_QUOTED) -> str:
    """C{error}'s message as L{one_line}, or its type's name when the message is empty."""
    return one_line(str(error), limit) or type(error).__name__


def shown_url(url: str, *, whole: bool = True) -> str:
    """
    C{url} as a message or a log line may show it: never its user info (a
    password may hide there); with C{whole=False}, only C{scheme://host:port},
    for URLs whose path or query may themselves hold a secret (webhooks).
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if not whole:
        return f"{parts.scheme}://{host}"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=host))
