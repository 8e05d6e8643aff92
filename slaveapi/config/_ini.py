"""
Reading the ini file: walk L{Config}'s fields and their records' fields,
reading each declared key as its field's kind says.

A section or key the schema does not declare stops loading, with one line
naming the file, the section or key, and the closest known name.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import os
from typing import Any

from ._checks import check_redfish_ca_bundle, refuse_plain_http
from ._records import Config
from ._schema import (
    ConfigError,
    IniSection,
    Part,
    SectionSchema,
    Setting,
    default_of,
    ini_schema,
    parts,
    record_settings,
    setting_of,
)


def load_config(path: str) -> Config:
    """
    Read the ini at C{path} and the credentials file it names.

    Relative paths in the ini are taken relative to the ini's directory.

    @raise ConfigError: the files are missing or unreadable, a section or key
        is unknown, missing or malformed; the message is one line.
    """
    parser = _parse(path)
    schema = ini_schema(Config)
    _refuse_unknown(parser, path, schema)
    for known in schema:
        if known.required and not parser.has_section(known.name):
            raise ConfigError(f"{path}: [{known.name}]: missing section")
    records = {field.name: (declared, record) for field, declared, record in parts(Config)}
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        if field.name in records:
            declared, record = records[field.name]
            values[field.name] = _read_record(parser, path, declared, record)
        elif (setting := setting_of(field)) is not None:
            values[field.name] = _read(parser, path, field, setting, home="")
    config = Config(path=os.path.abspath(path), **values)
    refuse_plain_http(config)
    check_redfish_ca_bundle(config)
    return config


def _parse(path: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, configparser.Error) as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"{path}: not a readable ini file ({first_line})") from None
    return parser


def _read_record(parser: configparser.RawConfigParser, path: str, declared: Part, record: type) -> Any:
    """The record of C{declared.section}: each declared field read, the others left to their defaults."""
    section = IniSection(parser, path, declared.section)
    values = {
        field.name: _read(parser, path, field, setting, home=declared.section)
        for field, setting in record_settings(record, declared.only)
    }
    if declared.finish is not None:
        declared.finish(section, values)
    return record(**values)


def _read(
    parser: configparser.RawConfigParser, path: str, field: dataclasses.Field[Any], setting: Setting, home: str
) -> Any:
    section = IniSection(parser, path, setting.section or home)
    return setting.kind.read(section, setting.key or field.name, default_of(field))


def _refuse_unknown(parser: configparser.RawConfigParser, path: str, schema: tuple[SectionSchema, ...]) -> None:
    """Stop at the first section or key the schema does not declare, naming the closest known one."""
    known = {section.name: section for section in schema}
    if parser.defaults():
        # configparser copies [DEFAULT]'s keys into every section; SlaveAPI declares none there.
        raise ConfigError(f"{path}: [{parser.default_section}]: unknown section{_hint(parser.default_section, known)}")
    for name in parser.sections():
        if name not in known:
            raise ConfigError(f"{path}: [{name}]: unknown section{_hint(name, known)}")
        keys = known[name].keys
        if keys is None:
            continue
        for key in parser.options(name):
            if key not in keys:
                raise ConfigError(f"{path}: [{name}] {key}: unknown key{_hint(key, keys)}")


def _hint(name: str, known: Any) -> str:
    """C{"; did you mean 'x'?"} for the closest of C{known}, or else the list of them."""
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not names:
        return "; this section takes no keys"
    return "; expected one of " + ", ".join(names)

