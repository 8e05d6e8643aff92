"""
The example configuration stays true to the loader, and the docs to the example.

C{examples/slaveapi.ini} must load with L{load_config}, show every key of
the loader's schema (L{ini_schema}: the sections and keys the loader
accepts; anything else stops it) with the default the record holds,
describe each key in a comment, and have every key documented in
C{docs/configuration.rst} with that same default. C{examples/credentials.json}
must fill every field of L{Credentials}.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shutil
from typing import Any

from slaveapi.actions.registry import ACTIONS
from slaveapi.config import API_SCOPES, Credentials, Secret, ini_schema, load_config

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_INI = os.path.join(_ROOT, "examples", "slaveapi.ini")
EXAMPLE_CREDENTIALS = os.path.join(_ROOT, "examples", "credentials.json")
CONFIGURATION_DOC = os.path.join(_ROOT, "docs", "configuration.rst")

#: A commented-out alternative setting: ";key = value".
_ALTERNATIVE = re.compile(r"^;\s*([A-Za-z0-9_.-]+)\s*=")
_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")
_KEY = re.compile(r"^([A-Za-z0-9_.-]+)\s*=")


def _ini_keys(path: str) -> set[tuple[str, str]]:
    """(section, key) of every setting in the ini, as configparser sees them."""
    parser = configparser.RawConfigParser()
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    return {(section, key) for section in parser.sections() for key in parser.options(section)}


def _alternatives(path: str) -> set[tuple[str, str]]:
    """(section, key) of every ";key = value" alternative in the ini."""
    found = set()
    section = None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            header = _SECTION.match(line)
            if header:
                section = header.group(1)
                continue
            alternative = _ALTERNATIVE.match(line)
            if alternative and section is not None:
                found.add((section, alternative.group(1).lower()))
    return found


def _schema_keys() -> set[tuple[str, str]]:
    """(section, key) of every key the loader accepts, free-form sections left out."""
    return {(section.name, key) for section in ini_schema() for key in section.keys or ()}


def _free_form() -> set[str]:
    return {section.name for section in ini_schema() if section.keys is None}


def _defaults() -> dict[tuple[str, str], Any]:
    """(section, key) to the default its record holds, for keys with a plain (not empty) default."""
    return {
        (section.name, key): default
        for section in ini_schema()
        for key, default in section.defaults.items()
        if isinstance(default, (bool, int, float, str)) and default != ""
    }


def _shown_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _with_alternatives(tmp_path: Any) -> str:
    """A copy of the example with its ";key = value" lines uncommented."""
    with open(EXAMPLE_INI, encoding="utf-8") as handle:
        text = handle.read()
    uncommented = re.sub(r"(?m)^;\s*(?=[A-Za-z0-9_.-]+\s*=)", "", text)
    assert uncommented != text
    ini = tmp_path / "slaveapi.ini"
    ini.write_text(uncommented, encoding="utf-8")
    shutil.copy(EXAMPLE_CREDENTIALS, tmp_path / "credentials.json")
    # credentials.json names its ssh_keys relative to itself: bring the throwaway key along.
    shutil.copytree(os.path.join(_ROOT, "examples", "keys"), tmp_path / "keys")
    # [redfish] ca_bundle must name a readable file (relative to the ini); its content is not read here.
    (tmp_path / "bmc-ca.pem").write_text("", encoding="ascii")
    return str(ini)


def test_example_loads_with_the_values_it_shows() -> None:
    config = load_config(EXAMPLE_INI)
    assert config.path == EXAMPLE_INI
    assert config.server.listen == "tcp:9999:interface=127.0.0.1"
    assert config.server.concurrency == 50
    assert config.server.daemonize is False
    assert config.slavealloc.api_url == "https://slavealloc.example.com/api"
    assert config.slavealloc.username is None
    assert config.inventory.username == "releng-slaveapi"
    assert config.bugzilla.api_url == "https://bugzilla.example.com/rest"
    assert config.buildapi.max_concurrent == 3
    assert config.slaves.default_domain == "build.example.com"
    assert config.slaves.ipmi_username == "ADMIN"
    assert config.logging.level == "info"
    assert config.logging.file == "/var/log/slaveapi/slaveapi.log"
    assert (config.logging.maxsize, config.logging.maxfiles) == (10485760, 10)
    assert config.dns.servers == (("10.26.75.40", 53), ("10.26.75.41", 53))
    assert config.dns.timeout == 5.0
    assert dataclasses.astuple(config.ssh) == (22, 30.0, 60.0, "strict", "known_hosts", 2)
    assert config.http.timeout == 30.0
    assert config.auth.protect_reads is False
    assert config.probes.method == "icmp"
    assert config.probes.up_timeout == 900.0
    assert config.ipmi.port == 623
    assert config.snmp.version == "2c"
    assert config.snmp.v3_user == "slaveapi"
    assert dict(config.snmp.pdu_types) == {
        "pdu3.r601-11.build.example.com": "apc",
        "pdu4.r601-11.build.example.com": "apc",
    }
    assert (config.mozpool.scheme, config.mozpool.port) == ("https", 443)
    assert config.reboot.bug_summary.format(name="bld-linux64-ix-001") == "bld-linux64-ix-001 is unreachable"
    assert config.devices_url == "https://hg.example.com/build/tools/raw-file/default/buildfarm/mobile/devices.json"
    assert dict(config.timeouts) == {"buildslave_uptime": 120.0, "buildslave_last_activity": 180.0}
    assert all(isinstance(seconds, float) for seconds in config.timeouts.values())


def test_example_credentials_fill_every_field() -> None:
    credentials = load_config(EXAMPLE_INI).credentials
    with open(EXAMPLE_CREDENTIALS, encoding="utf-8") as handle:
        raw = json.load(handle)
    fields = [field.name for field in dataclasses.fields(Credentials)]
    assert sorted(raw) == sorted(fields)
    for name in fields:
        assert getattr(credentials, name), f"credentials.json leaves {name} empty"
    assert list(credentials.ssh) == ["cltbld", "root"]
    assert [p.reveal() for p in credentials.ssh["cltbld"]] == [
        "fake-cltbld-current-password",
        "fake-cltbld-previous-password",
    ]
    assert credentials.bugzilla == Secret("fake-bugzilla-api-key-0000000000000000")
    assert sorted(credentials.api_tokens) == ["buildduty-dashboard", "idle-rebooter", "loan-service"]
    assert credentials.api_tokens["buildduty-dashboard"].scopes == frozenset(API_SCOPES)
    assert credentials.api_tokens["idle-rebooter"].scopes == {"read", "inspect", "reboot"}


def test_no_example_secret_shows_in_the_config_repr() -> None:
    shown = repr(load_config(EXAMPLE_INI))
    with open(EXAMPLE_CREDENTIALS, encoding="utf-8") as handle:
        raw = json.load(handle)
    secrets = [value for value in raw.values() if isinstance(value, str)]
    secrets += [p for passwords in raw["ssh"].values() for p in passwords]
    secrets += [entry if isinstance(entry, str) else entry["token"] for entry in raw["api_tokens"].values()]
    assert len(secrets) == 18
    assert [secret for secret in secrets if secret in shown] == []


def test_every_key_in_the_example_is_one_the_loader_accepts(tmp_path: Any) -> None:
    load_config(_with_alternatives(tmp_path))  # unknown keys would stop it
    shown = _ini_keys(EXAMPLE_INI) | _alternatives(EXAMPLE_INI)
    unknown = {(section, key) for section, key in shown if section not in _free_form()} - _schema_keys()
    assert unknown == set(), f"examples/slaveapi.ini has keys load_config does not accept: {sorted(unknown)}"


def test_every_key_the_loader_accepts_is_in_the_example() -> None:
    shown = _ini_keys(EXAMPLE_INI) | _alternatives(EXAMPLE_INI)
    missing = _schema_keys() - shown
    assert missing == set(), f"examples/slaveapi.ini does not show keys load_config accepts: {sorted(missing)}"
    assert {section.name for section in ini_schema()} == {section for section, _ in shown}


def test_the_example_states_each_default_the_records_hold() -> None:
    comments: dict[tuple[str, str], str] = {}
    section = key = None
    with open(EXAMPLE_INI, encoding="utf-8") as handle:
        for line in handle:
            if header := _SECTION.match(line.strip()):
                section = header.group(1)
            elif described := re.match(r"^# ([a-z0-9_]+): ", line):
                key = described.group(1)
                comments[(section or "", key)] = line
            elif line.startswith("#   ") and key is not None:
                comments[(section or "", key)] += line
            else:
                key = None
    wrong = [
        f"[{section}] {key}: Default: {_shown_default(default)}"
        for (section, key), default in _defaults().items()
        if f"Default: {_shown_default(default)}" not in " ".join(comments.get((section, key), "").split())
    ]
    assert wrong == [], f"examples/slaveapi.ini comments disagree with the records' defaults: {wrong}"


def test_endpoint_alternative_replaces_listen_and_port(tmp_path: Any) -> None:
    config = load_config(_with_alternatives(tmp_path))
    assert config.server.listen == (
        "ssl:9443:interface=0.0.0.0:privateKey=/etc/slaveapi/tls/slaveapi.key"
        ":certKey=/etc/slaveapi/tls/slaveapi.crt"
    )
    assert _alternatives(EXAMPLE_INI) == {
        ("server", "endpoint"),
        ("aws", "endpoint_url"),
        ("aws", "build_launch_template"),
        ("aws", "test_launch_template"),
        ("redfish", "ca_bundle"),
        ("store", "url"),
        ("store", "instance"),
    }


def test_timeouts_name_real_actions() -> None:
    assert sorted(load_config(EXAMPLE_INI).timeouts) == sorted(
        key for section, key in _ini_keys(EXAMPLE_INI) if section == "timeouts"
    )
    assert {key for section, key in _ini_keys(EXAMPLE_INI) if section == "timeouts"} <= set(ACTIONS)


def test_every_key_has_a_comment_naming_it() -> None:
    undescribed = []
    comments: list[str] = []
    section = None
    with open(EXAMPLE_INI, encoding="utf-8") as handle:
        for line in handle:
            stripped = line.strip()
            if _SECTION.match(stripped):
                section = stripped
                comments = []
            elif stripped.startswith(("#", ";")):
                comments.append(stripped)
            elif key := _KEY.match(stripped):
                if not any(comment.startswith(f"# {key.group(1)}:") for comment in comments):
                    undescribed.append(f"{section} {key.group(1)}")
                comments = []
            elif not stripped:
                comments = []
    assert undescribed == [], f"keys without a '# <key>: ...' comment above them: {undescribed}"


def test_configuration_doc_covers_every_section_and_key() -> None:
    with open(CONFIGURATION_DOC, encoding="utf-8") as handle:
        doc = handle.read()
    shown = _ini_keys(EXAMPLE_INI) | _alternatives(EXAMPLE_INI) | _schema_keys()
    sections = {section for section, _ in shown} | {section.name for section in ini_schema()}
    missing = sorted(f"[{section}]" for section in sections if f"[{section}]" not in doc)
    missing += sorted(
        f"[{section}] {key}"
        for section, key in shown
        if section not in _free_form() and f"``{key}``" not in doc
    )
    with open(EXAMPLE_CREDENTIALS, encoding="utf-8") as handle:
        missing += sorted(f"credentials {key}" for key in json.load(handle) if f"``{key}``" not in doc)
    assert missing == []


def test_configuration_doc_states_each_default_the_records_hold() -> None:
    with open(CONFIGURATION_DOC, encoding="utf-8") as handle:
        doc = handle.read()
    tables = {}
    for part in re.split(r"(?m)^(?=\[[a-z]+\]\n~+$)", doc):
        if header := re.match(r"\[([a-z]+)\]\n", part):
            rows = re.findall(r"(?m)^   \* - ``([a-z0-9_]+)``\n     - (.*)$", part)
            tables[header.group(1)] = dict(rows)
    wrong = [
        f"[{section}] {key}: {tables.get(section, {}).get(key)!r}, not ``{_shown_default(default)}``"
        for (section, key), default in _defaults().items()
        if not tables.get(section, {}).get(key, "").startswith(f"``{_shown_default(default)}``")
    ]
    assert wrong == [], f"docs/configuration.rst disagrees with the records' defaults: {wrong}"
