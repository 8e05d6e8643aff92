"""
Where C{slaveapi-cli} finds its server and token.

Each setting comes from the first place that has it: the command-line option,
then the environment (C{SLAVEAPI_URL}, C{SLAVEAPI_TOKEN}), then the config
file (C{~/.config/slaveapi/cli.ini}, or C{SLAVEAPI_CLI_CONFIG}), so a shell
can override a file without editing it and a script can override both.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass

#: The address C{make run} serves on.
DEFAULT_URL = "http://127.0.0.1:9999"
URL_VARIABLE = "SLAVEAPI_URL"
TOKEN_VARIABLE = "SLAVEAPI_TOKEN"  # noqa: S105  # the variable's name, not a token
CONFIG_VARIABLE = "SLAVEAPI_CLI_CONFIG"
_SECTION = "slaveapi"


class ConfigError(Exception):
    """The config file cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class Settings:
    """
    The server to talk to and the token to show it.

    @ivar token: the bearer token, or C{None} to send none. Never printed:
        L{__repr__} hides it.
    """

    url: str
    token: str | None = None

    def __repr__(self) -> str:
        shown = "None" if self.token is None else "'<hidden>'"
        return f"Settings(url={self.url!r}, token={shown})"


def config_path(environ: Mapping[str, str]) -> str:
    """The config file's path: C{SLAVEAPI_CLI_CONFIG}, else under C{~/.config}."""
    explicit = environ.get(CONFIG_VARIABLE)
    if explicit:
        return explicit
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "slaveapi", "cli.ini")


def _read_file(path: str) -> Mapping[str, str]:
    """The C{[slaveapi]} section of C{path}; nothing when the file does not exist."""
    if not os.path.exists(path):
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, UnicodeDecodeError, configparser.Error) as error:
        raise ConfigError(f"{path}: cannot be read: {error}") from None
    if not parser.has_section(_SECTION):
        return {}
    return dict(parser.items(_SECTION))


def resolve(url: str | None, token: str | None, environ: Mapping[str, str]) -> Settings:
    """
    The settings from the options given (C{None} when not given), the
    environment and the config file, in that order of precedence.

    @raise ConfigError: the config file exists but cannot be read, or its URL
        is not an C{http(s)://} one.
    """
    from_file = _read_file(config_path(environ))
    chosen_url = url or environ.get(URL_VARIABLE) or from_file.get("url") or DEFAULT_URL
    chosen_token = token or environ.get(TOKEN_VARIABLE) or from_file.get("token") or None
    if not chosen_url.startswith(("http://", "https://")):
        raise ConfigError(f"url: expected an http:// or https:// URL, got {chosen_url!r}")
    return Settings(chosen_url.rstrip("/"), chosen_token.strip() if chosen_token else None)
