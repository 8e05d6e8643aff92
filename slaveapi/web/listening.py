"""
Whether a Twisted server endpoint string listens for this machine only.

Used at start-up (and on reload) to refuse serving the network without
authentication, and to give the listening socket a backlog fit for bursts
(L{with_backlog}). The string is read the way Twisted reads it: fields
separated by C{:}, a backslash escaping the next character, C{key=value}
fields naming arguments. C{tcp} and C{ssl} listen on every interface unless given an
C{interface}; C{tcp6} on every IPv6 one; C{unix} sockets are local by
nature. Any other kind (systemd, onion services, ...) counts as reaching
beyond loopback.
"""

from __future__ import annotations

from twisted.logger import Logger

from slaveapi.config import Config, ConfigError
from slaveapi.hostnames import is_loopback

_EVERY_INTERFACE = {"tcp": "", "ssl": "", "tcp6": "::"}

#: The listen backlog given to a tcp, tcp6, ssl or unix endpoint that names none.
#: Twisted's default, 50, overflows when a dashboard sends a reboot for a
#: whole pool at once: the kernel then drops or resets the connections it
#: has no room for, and clients see errors or retry seconds later.
DEFAULT_BACKLOG = 1024


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """C{description} with C{backlog=} added when it is a kind that takes one and names none."""
    fields = _fields(description)
    if fields[0].lower() not in (*_EVERY_INTERFACE, "unix"):
        return description
    if any(field.split("=", 1)[0].lower() == "backlog" for field in fields[1:] if "=" in field):
        return description
    return f"{description}:backlog={backlog}"


def listens_on_loopback_only(description: str) -> bool:
    """Whether only this machine can connect to an endpoint listening as C{description}."""
    fields = _fields(description)
    kind = fields[0].lower()
    if kind == "unix":
        return True
    if kind not in _EVERY_INTERFACE:
        return False
    named = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
    interface = named.get("interface", _EVERY_INTERFACE[kind])
    return bool(interface) and is_loopback(interface)


def _fields(description: str) -> list[str]:
    fields = [""]
    escaped = False
    for character in description:
        if escaped:
            fields[-1] += character
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append("")
        else:
            fields[-1] += character
    return fields


def check_anonymous_exposure(config: Config, listen: str) -> None:
    """
    Refuse to serve beyond loopback without authentication, unless
    C{[auth] allow_anonymous} says so; then say so in the log.

    @param listen: the endpoint string actually listened on (C{--listen} or
        the configuration's).
    @raise ConfigError: one line saying what to do.
    """
    if listens_on_loopback_only(listen) or config.credentials.api_tokens:
        return
    if not config.auth.allow_anonymous:
        raise ConfigError(
            f"{config.path}: listening on {listen} reaches beyond this machine and the credentials file has "
            "no api_tokens, so anyone who can connect could act on the fleet; add api_tokens, listen on "
            "127.0.0.1, or set [auth] allow_anonymous = true"
        )
    Logger(namespace="slaveapi.auth").warn(
        "[auth] allow_anonymous = true: listening on {listen} without api_tokens; "
        "anyone who can connect can act on the fleet",
        listen=listen,
    )
