"""
The credentials JSON: passwords, keys and tokens, read into L{Credentials}.

Each field of L{Credentials} says in its metadata how its key is read (a
single secret unless it says otherwise); L{load_credentials} walks them.
Secrets are held in L{Secret}, which never shows its value when printed,
logged or put in a repr; no message ever quotes a value of this file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.conch.ssh.keys import EncryptedKeyError, Key

from ._schema import ConfigError

#: What a token may be allowed to do: C{read} (GETs under C{protect_reads}),
#: C{inspect} (uptime, last activity), C{reboot} (reboot, shutdown_buildslave),
#: C{disable}, C{aws} (AWS instances), C{power} (power_on, power_off,
#: power_cycle, boot_device; power_status is C{inspect}).
API_SCOPES: Final = ("read", "inspect", "reboot", "disable", "aws", "power")

#: Letters, digits and C{. _ @ + -}: client names go into logs and bug comments.
_CLIENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")

_READ: Final = "slaveapi.config.credentials"


class Secret:
    """A password, key or token: shown as asterisks everywhere but L{reveal}."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiToken:
    """One API client's bearer token and the scopes it grants."""

    token: Secret
    scopes: frozenset[str] = frozenset(API_SCOPES)


@dataclass(frozen=True)
class _File:
    """The credentials file being read: its path and its JSON object."""

    path: str
    data: Mapping[str, Any]

    def mapping(self, key: str, required: bool) -> Mapping[str, Any]:
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.path}: {key}: missing; expected an object")
            return {}
        value = self.data[key]
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: {key}: expected an object")
        return value


_Reader = Callable[[_File, str], Any]


def _secret(credentials: _File, key: str) -> Secret | None:
    value = credentials.data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{credentials.path}: {key}: expected a string")
    return Secret(value)


def _passwords(credentials: _File, key: str) -> dict[str, tuple[Secret, ...]]:
    found = {}
    for user, passwords in credentials.mapping(key, required=True).items():
        if isinstance(passwords, str):
            passwords = [passwords]
        if not isinstance(passwords, list) or not all(isinstance(p, str) for p in passwords):
            raise ConfigError(f"{credentials.path}: {key}.{user}: expected a list of passwords")
        found[user] = tuple(Secret(p) for p in passwords)
    return found


def _key_files(credentials: _File, key: str) -> dict[str, tuple[str, ...]]:
    """Private key files by user, relative to the credentials file, each read once to check it."""
    base = os.path.dirname(os.path.abspath(credentials.path))
    found = {}
    for user, key_files in credentials.mapping(key, required=False).items():
        if isinstance(key_files, str):
            key_files = [key_files]
        if not isinstance(key_files, list) or not all(isinstance(k, str) and k for k in key_files):
            raise ConfigError(f"{credentials.path}: {key}.{user}: expected a list of private key file paths")
        paths = tuple(os.path.normpath(os.path.join(base, k)) for k in key_files)
        for key_file in paths:
            try:
                load_ssh_key(key_file)
            except ConfigError as error:
                raise ConfigError(f"{credentials.path}: {key}.{user}: {error}") from None
        found[user] = paths
    return found


def _api_tokens(credentials: _File, key: str) -> dict[str, ApiToken]:
    entries = credentials.mapping(key, required=False)
    return {client: _api_token(credentials.path, client, entry) for client, entry in entries.items()}


def _read(reader: _Reader) -> dict[str, _Reader]:
    return {_READ: reader}


@dataclass(frozen=True)
class Credentials:
    """
    The credentials JSON.

    @ivar ssh: user name to the passwords tried in order.
    @ivar ssh_keys: user name to the absolute paths of its unencrypted private
        key files, offered before its passwords; each was read and checked
        when the credentials were loaded.
    @ivar api_tokens: client name to its bearer token and scopes; empty
        turns authentication off.
    """

    ssh: Mapping[str, tuple[Secret, ...]] = field(metadata=_read(_passwords))
    ssh_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict, metadata=_read(_key_files))
    inventory: Secret | None = None
    ipmi: Secret | None = None
    redfish: Secret | None = None
    bugzilla: Secret | None = None
    snmp_community: Secret | None = None
    snmp_v3_auth_key: Secret | None = None
    snmp_v3_priv_key: Secret | None = None
    buildbot_master: Secret | None = None
    aws_access_key_id: Secret | None = None
    aws_secret_access_key: Secret | None = None
    #: The HMAC-SHA256 key webhook bodies are signed with.
    webhook_secret: Secret | None = None
    #: The password of C{[store] url}'s PostgreSQL user.
    postgresql_password: Secret | None = None
    api_tokens: Mapping[str, ApiToken] = field(default_factory=dict, metadata=_read(_api_tokens))


def load_ssh_key(path: str) -> Key:
    """
    Read the unencrypted SSH private key (OpenSSH or PEM format) at C{path}.

    Used when the credentials are loaded, so that a bad key stops start-up,
    and by the SSH client, which reads its keys once.

    @raise ConfigError: the file is missing, unreadable, not a private key,
        or encrypted; the one-line message names the file and never shows
        any of its content.
    """
    try:
        key: Key = Key.fromFile(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: SSH key file not found") from None
    except EncryptedKeyError:
        raise ConfigError(f"{path}: SSH key is encrypted; only unencrypted keys can be used") from None
    except OSError as error:
        raise ConfigError(f"{path}: SSH key file not readable ({error.strerror or type(error).__name__})") from None
    except Exception as error:
        # Never the error's text: conch's parse errors quote the file's content.
        raise ConfigError(f"{path}: not an SSH private key in OpenSSH or PEM format ({type(error).__name__})") from None
    if key.isPublic():
        raise ConfigError(f"{path}: a public key; expected a private key")
    return key


def _api_token(path: str, client: str, entry: Any) -> ApiToken:
    """
    One C{api_tokens} entry: C{"token"} (every scope, the 2015 form) or
    C{{"token": "...", "scopes": ["read", ...]}}.
    """
    if _CLIENT_NAME.fullmatch(client) is None:
        raise ConfigError(
            f"{path}: api_tokens: client name {client[:80]!r}: expected letters, digits and . _ @ + - "
            "(at most 64 characters)"
        )
    where = f"{path}: api_tokens.{client}"
    scopes = frozenset(API_SCOPES)
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"token", "scopes"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected token and scopes")
        raw_scopes = entry.get("scopes")
        if not isinstance(raw_scopes, list) or not all(isinstance(scope, str) for scope in raw_scopes):
            raise ConfigError(f"{where}.scopes: expected a list of scopes from {', '.join(API_SCOPES)}")
        wrong = [scope for scope in raw_scopes if scope not in API_SCOPES]
        if wrong:
            raise ConfigError(f"{where}.scopes: unknown scope {wrong[0]!r}; expected some of {', '.join(API_SCOPES)}")
        scopes = frozenset(raw_scopes)
        entry = entry.get("token")
        where += ".token"
    if not isinstance(entry, str) or len(entry) < 16:
        raise ConfigError(f"{where}: expected a token of at least 16 characters")
    return ApiToken(Secret(entry), scopes)


def load_credentials(path: str) -> Credentials:
    """
    Read the credentials JSON; errors name the file and the key.

    Key files named in C{ssh_keys} are taken relative to the credentials
    file's directory, and each is read once here to check it. Keys that
    are not fields of L{Credentials} are ignored.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: credentials file not found") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    credentials = _File(path, data)
    values = {}
    for declared in dataclasses.fields(Credentials):
        reader: _Reader = declared.metadata.get(_READ, _secret)
        values[declared.name] = reader(credentials, declared.name)
    return Credentials(**values)
