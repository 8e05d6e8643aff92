"""
Reading and validating request parameters (query string and form body alike).

Every check that fails raises a 400 naming the field and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from twisted.web.iweb import IRequest

from slaveapi._yesno import NO, YES, parse_yes_no
from slaveapi.machines import is_valid_slave_name
from slaveapi.web.errors import bad_request

#: The longest a POST may hold its HTTP request open waiting for the action.
MAX_WAITTIME = 3600.0

#: Longer digit strings are refused before conversion (Python refuses to
#: convert more than 4300 digits; nothing valid here has more than 19).
MAX_DIGITS = 20

_T = TypeVar("_T")


def values(request: IRequest, name: str) -> list[str]:
    """Every value given for C{name}, in the query string or the form body."""
    raw = (request.args or {}).get(name.encode("ascii"), [])
    try:
        return [value.decode("utf-8") for value in raw]
    except UnicodeDecodeError:
        raise bad_request(f"{name}: expected UTF-8 text") from None


def value(request: IRequest, name: str) -> str | None:
    """The first value given for C{name}, or C{None}."""
    found = values(request, name)
    return found[0] if found else None


def slave_name(name: str) -> str:
    """C{name} if it is a hostname; a 400 before any lookup otherwise."""
    if not is_valid_slave_name(name):
        raise bad_request(
            "slave: expected a hostname (letters, digits, '.' and '-', at most 253 characters)"
        )
    return name


def requestid(request: IRequest) -> int | None:
    """The C{requestid} argument as an integer, if given."""
    raw = value(request, "requestid")
    if raw is None:
        return None
    try:
        number = int(raw.strip())
    except ValueError:
        raise bad_request(f"requestid: expected an integer, got {raw[:40]!r}") from None
    if number < 0:
        raise bad_request(f"requestid: expected a non-negative integer, got {number}")
    return number


def waittime(request: IRequest) -> float:
    """
    Seconds to wait for the action before answering; 0 by default.

    Longer than L{MAX_WAITTIME} is shortened to it: the action goes on, and
    the answer says so with a 202.
    """
    raw = value(request, "waittime")
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        seconds = float(raw.strip())
    except ValueError:
        raise bad_request(f"waittime: expected a number of seconds >= 0, got {raw[:40]!r}") from None
    if math.isnan(seconds) or seconds < 0:
        raise bad_request(f"waittime: expected a number of seconds >= 0, got {raw[:40]!r}")
    return min(seconds, MAX_WAITTIME)


def boolean(request: IRequest, name: str, default: bool | None = None) -> bool | None:
    """A yes/no argument in the one vocabulary of L{slaveapi._yesno}; empty or absent is C{default}."""
    raw = value(request, name)
    if raw is None or raw.strip() == "":
        return default
    answer = parse_yes_no(raw)
    if answer is None:
        raise bad_request(f"{name}: expected one of {', '.join(YES + NO)} (any case), got {raw[:40]!r}")
    return answer


def is_number(text: str) -> bool:
    """Digits only, and few enough to convert (see L{MAX_DIGITS})."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def whole_number(request: IRequest, name: str, low: int, high: int) -> int | None:
    """The parameter C{name} as a whole number from C{low} to C{high}; C{None} when absent."""
    raw = value(request, name)
    if raw is None:
        return None
    text = raw.strip()
    if not is_number(text) or not low <= int(text) <= high:
        raise bad_request(f"{name}: expected a whole number from {low} to {high}, got {raw[:40]!r}")
    return int(text)


def limit(request: IRequest, default: int, maximum: int) -> int:
    """The C{limit} of a page: from 1 to C{maximum}, C{default} when absent."""
    given = whole_number(request, "limit", 1, maximum)
    return default if given is None else given


def page(found: Sequence[_T], size: int) -> tuple[Sequence[_T], bool]:
    """
    A page of C{size} out of C{found}, read with one more than C{size}; and
    whether another page follows (that one more was there).
    """
    return found[:size], len(found) > size
