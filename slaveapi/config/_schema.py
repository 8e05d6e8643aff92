"""
The ini file's schema: how each field of a configuration record is read.

A section record's fields carry a L{Setting} in their metadata (built with
L{ini}): the kind of value (L{Text}, L{URL}, L{Integer}, L{Choice}, ...)
with its bounds or choices and, where they differ from the field's own
name, the key or the section it comes from. The field's dataclass default
is the one default there is. A field of the top-level C{Config} carries a
L{Part} (built with L{part}): the section its record is read from.

The loader (C{_ini}) walks these fields; L{ini_schema} lists the sections
and keys they declare, which is what the loader accepts.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from slaveapi._yesno import parse_yes_no

#: The default of a field that has none: its key must be given.
REQUIRED: Final[Any] = object()

_SETTING: Final = "slaveapi.config.setting"
_PART: Final = "slaveapi.config.part"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line saying why."""


class IniSection:
    """Typed reads from one ini section, with errors that name the file, section and key."""

    def __init__(self, parser: configparser.RawConfigParser, path: str, name: str) -> None:
        self._parser = parser
        self.path = path
        self.name = name

    def has(self, key: str) -> bool:
        """Whether C{key} is given in this section (which may be absent)."""
        return self._parser.has_option(self.name, key)

    def options(self) -> list[str]:
        """Every key given in this section, in file order; none if the section is absent."""
        return self._parser.options(self.name) if self._parser.has_section(self.name) else []

    def fail(self, key: str, expected: str, got: str | None = None) -> ConfigError:
        """The one-line error for C{key}: what was expected, and what was found."""
        found = f", got {got!r}" if got is not None else ""
        return ConfigError(f"{self.path}: [{self.name}] {key}: expected {expected}{found}")

    def raw(self, key: str, default: Any, expected: str) -> str | None:
        """C{key}'s text, stripped; C{None} when absent and C{default} is not L{REQUIRED}."""
        if self.has(key):
            return self._parser.get(self.name, key).strip()
        if default is REQUIRED:
            raise ConfigError(f"{self.path}: [{self.name}] {key}: missing; expected {expected}")
        return None

    def relative(self, path: str) -> str:
        """C{path}, relative paths taken from the ini file's directory."""
        return path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(self.path)), path)


class Kind:
    """How one key's text becomes a value; C{expected} says what is accepted."""

    @property
    def expected(self) -> str:
        """What the key accepts, for error messages."""
        return "a value"

    def read(self, section: IniSection, key: str, default: Any) -> Any:
        """C{key}'s value from C{section}, or C{default} when it is absent."""
        raw = section.raw(key, default, self.expected)
        if raw is None:
            return default
        return self.parse(section, key, raw)

    def parse(self, section: IniSection, key: str, raw: str) -> Any:
        """The value of C{raw}; raise C{section.fail(...)} if it is not one."""
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Kind):
    """Any text; a required key must not be empty."""

    def read(self, section: IniSection, key: str, default: Any) -> Any:
        raw = section.raw(key, default, self.expected)
        if raw is None:
            return default
        if raw == "" and default is REQUIRED:
            raise section.fail(key, "a non-empty value", raw)
        return raw


@dataclass(frozen=True)
class Path(Text):
    """A file path, relative to the ini file's directory; empty means none."""

    def read(self, section: IniSection, key: str, default: Any) -> Any:
        if not section.has(key):
            return super().read(section, key, default)
        value = super().read(section, key, default)
        return section.relative(value) if value else None


@dataclass(frozen=True)
class URL(Kind):
    """An http:// or https:// URL, without a trailing slash."""

    @property
    def expected(self) -> str:
        return "an http:// or https:// URL"

    def parse(self, section: IniSection, key: str, raw: str) -> str:
        if not raw.startswith(("http://", "https://")):
            raise section.fail(key, self.expected, raw)
        return raw.rstrip("/")


@dataclass(frozen=True)
class Integer(Kind):
    """An integer of at least C{minimum}."""

    minimum: int = 0

    @property
    def expected(self) -> str:
        return f"an integer >= {self.minimum:g}"

    def parse(self, section: IniSection, key: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise section.fail(key, self.expected, raw) from None
        if value < self.minimum:
            raise section.fail(key, self.expected, raw)
        return value


@dataclass(frozen=True)
class Number(Kind):
    """A number (a float, never NaN) of at least C{minimum}."""

    minimum: float = 0.0

    @property
    def expected(self) -> str:
        return f"a number >= {self.minimum:g}"

    def parse(self, section: IniSection, key: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise section.fail(key, self.expected, raw) from None
        if value != value or value < self.minimum:
            raise section.fail(key, self.expected, raw)
        return value


@dataclass(frozen=True)
class Boolean(Kind):
    """A yes/no word (see L{slaveapi._yesno})."""

    @property
    def expected(self) -> str:
        return "true or false"

    def parse(self, section: IniSection, key: str, raw: str) -> bool:
        value = parse_yes_no(raw)
        if value is None:
            raise section.fail(key, self.expected, raw)
        return value


@dataclass(frozen=True)
class Choice(Kind):
    """One of C{choices}, in any case; read lowered."""

    choices: tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        return " or ".join(self.choices)

    def parse(self, section: IniSection, key: str, raw: str) -> str:
        if raw.lower() not in self.choices:
            raise section.fail(key, "one of " + ", ".join(self.choices), raw)
        return raw.lower()


@dataclass(frozen=True)
class HostPorts(Kind):
    """C{host:port} pairs separated by spaces or commas; C{[v6]:port} or a bare IPv6 address too."""

    default_port: int = 0

    @property
    def expected(self) -> str:
        return "host:port pairs separated by spaces or commas"

    def read(self, section: IniSection, key: str, default: Any) -> Any:
        raw = section.raw(key, default, self.expected)
        if raw is None:
            return default
        return tuple(self._pair(section, key, item) for item in raw.replace(",", " ").split())

    def _pair(self, section: IniSection, key: str, item: str) -> tuple[str, int]:
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else (str(self.default_port) if not rest else "x")
        elif item.count(":") > 1:
            host, port = item, str(self.default_port)  # a bare IPv6 address
        else:
            host, _, port = item.rpartition(":")
            if not host:
                host, port = item, str(self.default_port)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise section.fail(key, self.expected, item)
        return host, int(port)


@dataclass(frozen=True)
class Custom(Kind):
    """Read by C{function(section, key, default)}, for values no other kind describes."""

    function: Callable[[IniSection, str, Any], Any]
    description: str = "a value"

    @property
    def expected(self) -> str:
        return self.description

    def read(self, section: IniSection, key: str, default: Any) -> Any:
        return self.function(section, key, default)


@dataclass(frozen=True)
class Entries(Kind):
    """
    A whole section of free-form keys (action names, host names): each
    value read as C{kind}; entries it reads as C{None} are left out.
    """

    kind: Kind

    def read(self, section: IniSection, key: str, default: Any) -> Any:
        values = ((name, self.kind.read(section, name, REQUIRED)) for name in section.options())
        return {name: value for name, value in values if value is not None}


@dataclass(frozen=True)
class Setting:
    """
    How one field is read.

    @ivar kind: what the value is.
    @ivar key: the ini key, when it is not the field's name.
    @ivar section: the section, when it is not the record's (for L{Entries},
        the free-form section read whole).
    @ivar also: further keys C{kind} reads (e.g. C{[server]} C{port} for C{listen}).
    @ivar required_section: the section must be present.
    """

    kind: Kind
    key: str | None = None
    section: str | None = None
    also: tuple[str, ...] = ()
    required_section: bool = False


@dataclass(frozen=True)
class Part:
    """
    A C{Config} field read as a record from one section.

    @ivar only: the record's fields read from the ini (C{None}: every field
        with a L{Setting}); the others keep their defaults.
    @ivar finish: checks and completes the values read, before the record
        is built (cross-key bounds, defaults derived from other keys).
    """

    section: str
    required: bool = False
    only: tuple[str, ...] | None = None
    finish: Callable[[IniSection, dict[str, Any]], None] | None = None


def ini(
    kind: Kind,
    *,
    key: str | None = None,
    section: str | None = None,
    also: tuple[str, ...] = (),
    required_section: bool = False,
) -> dict[str, Setting]:
    """Field metadata: read this field as C{kind} (see L{Setting})."""
    return {_SETTING: Setting(kind, key, section, also, required_section)}


def part(
    section: str,
    *,
    required: bool = False,
    only: tuple[str, ...] | None = None,
    finish: Callable[[IniSection, dict[str, Any]], None] | None = None,
) -> dict[str, Part]:
    """Field metadata: read this field's record from C{[section]} (see L{Part})."""
    return {_PART: Part(section, required, only, finish)}


def setting_of(field: dataclasses.Field[Any]) -> Setting | None:
    """The L{Setting} C{field} carries, if any."""
    found = field.metadata.get(_SETTING)
    return found if isinstance(found, Setting) else None


def part_of(field: dataclasses.Field[Any]) -> Part | None:
    """The L{Part} C{field} carries, if any."""
    found = field.metadata.get(_PART)
    return found if isinstance(found, Part) else None


def default_of(field: dataclasses.Field[Any]) -> Any:
    """C{field}'s dataclass default (a fresh one from a factory), or L{REQUIRED}."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def record_settings(record: type, only: tuple[str, ...] | None) -> list[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of C{record} read from the ini, with their settings, in declaration order."""
    found = []
    for field in dataclasses.fields(record):
        setting = setting_of(field)
        if setting is not None and (only is None or field.name in only):
            found.append((field, setting))
    return found


@dataclass(frozen=True)
class SectionSchema:
    """
    One ini section the loader knows.

    @ivar keys: the keys it accepts, in schema order; C{None} for a section
        of free-form keys (C{[timeouts]}, C{[pdus]}, C{[masters]}).
    @ivar defaults: key to the default of its record field, for the keys
        read as one plain value (not derived, not free-form) that have one.
    """

    name: str
    required: bool
    keys: tuple[str, ...] | None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def parts(config: type) -> list[tuple[dataclasses.Field[Any], Part, type]]:
    """The fields of C{config} read as records: each with its L{Part} and record class."""
    hints = typing.get_type_hints(config)
    found = []
    for field in dataclasses.fields(config):
        declared = part_of(field)
        if declared is not None:
            found.append((field, declared, hints[field.name]))
    return found


def ini_schema(config: type) -> tuple[SectionSchema, ...]:
    """Every section C{config}'s fields declare, with its keys, in declaration order."""
    schema = _SchemaBuilder()
    records = {field.name: (declared, record) for field, declared, record in parts(config)}
    for field in dataclasses.fields(config):
        if field.name in records:
            declared, record = records[field.name]
            schema.section(declared.section, declared.required)
            for inner, inner_setting in record_settings(record, declared.only):
                schema.add(inner, inner_setting, declared.section)
        elif (setting := setting_of(field)) is not None:
            schema.add(field, setting, "")
    return schema.build()


class _SchemaBuilder:
    """Collects sections, keys and defaults in the order fields declare them."""

    def __init__(self) -> None:
        self._required: dict[str, bool] = {}
        self._keys: dict[str, list[str] | None] = {}
        self._defaults: dict[str, dict[str, Any]] = {}

    def section(self, name: str, required: bool) -> None:
        self._required[name] = self._required.get(name, False) or required
        self._keys.setdefault(name, [])
        self._defaults.setdefault(name, {})

    def add(self, field: dataclasses.Field[Any], setting: Setting, home: str) -> None:
        name = setting.section or home
        self.section(name, setting.required_section)
        if isinstance(setting.kind, Entries):
            self._keys[name] = None
            return
        key = setting.key or field.name
        known = self._keys[name]
        if known is not None:
            known.extend(k for k in (key, *setting.also) if k not in known)
        default = default_of(field)
        if not isinstance(setting.kind, Custom) and default is not REQUIRED and default is not None:
            self._defaults[name][key] = default

    def build(self) -> tuple[SectionSchema, ...]:
        return tuple(
            SectionSchema(name, self._required[name], None if keys is None else tuple(keys), self._defaults[name])
            for name, keys in self._keys.items()
        )
