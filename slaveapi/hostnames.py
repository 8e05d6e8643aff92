"""What counts as a hostname, for names from requests and from remote systems alike."""

from __future__ import annotations

import re

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def is_valid_hostname(name: str) -> bool:
    """Letters, digits, dots and dashes, at most 253 characters, no empty label."""
    return bool(_HOSTNAME.match(name)) and ".." not in name
