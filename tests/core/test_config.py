"""
Configuration loading: typed values from a full ini, and one exact,
single-line, secret-free message per kind of mistake.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from slaveapi._yesno import parse_yes_no
from slaveapi.config import (
    API_SCOPES,
    ApiToken,
    AuthConfig,
    BuildapiConfig,
    Config,
    ConfigError,
    Credentials,
    DNSConfig,
    HTTPConfig,
    InventoryConfig,
    LoggingConfig,
    Secret,
    ServerConfig,
    ServiceURL,
    SlavesConfig,
    SSHConfig,
    ini_schema,
    load_config,
    load_credentials,
)

_SSH_PASSWORD = "ssh-password-one"
_SSH_PASSWORD_2 = "ssh-password-two"
_INVENTORY_PASSWORD = "inventory-pw-4242"
_IPMI_PASSWORD = "ipmi-pw-7777"
_BUGZILLA_KEY = "bugzilla-api-key-31337"
_COMMUNITY = "snmp-private-xyz"
_TOKEN = "dashboard-token-0123456789abcdef"

#: Every secret value the files below hold, to check no message shows one.
_SECRETS = (_SSH_PASSWORD, _SSH_PASSWORD_2, _INVENTORY_PASSWORD, _IPMI_PASSWORD, _BUGZILLA_KEY, _COMMUNITY, _TOKEN)

_CREDENTIALS: dict[str, Any] = {
    "ssh": {"cltbld": [_SSH_PASSWORD, _SSH_PASSWORD_2], "root": _SSH_PASSWORD},
    "inventory": _INVENTORY_PASSWORD,
    "ipmi": _IPMI_PASSWORD,
    "bugzilla": _BUGZILLA_KEY,
    "snmp_community": _COMMUNITY,
    "api_tokens": {"dashboard": _TOKEN},
}

_FULL_INI = """\
[server]
listen = 0.0.0.0
port = 8080
concurrency = 20
daemonize = yes
pidfile = run/slaveapi.pid

[secrets]
credentials_file = credentials.json

[slavealloc]
api_url = http://127.0.0.1:8001/api/

[inventory]
api_url = https://127.0.0.1:8002/en-US/tasty-api/v1
username = slaveapi

[bugzilla]
api_url = https://127.0.0.1:8003/rest
username = slaveapi@example.test

[buildapi]
api_url = http://127.0.0.1:8004/buildapi
max_concurrent = 4

[slaves]
default_domain = .build.example.test.
ipmi_username = IPMIADMIN

[logging]
level = DEBUG
file = logs/slaveapi.log
maxsize = 2048
maxfiles = 3

[dns]
servers = 127.0.0.1:5353, 127.0.0.2 127.0.0.3:53
timeout = 2.5

[ssh]
port = 2222
connect_timeout = 7
command_timeout = 9.5
host_keys = Strict
known_hosts = /var/lib/slaveapi/known_hosts

[http]
timeout = 12

[auth]
protect_reads = true

[devices]
url = http://127.0.0.1:8005/devices.json

[timeouts]
reboot = 900
buildslave_uptime = 1.5
"""

#: The smallest ini that loads: required sections and keys only.
_MINIMAL_INI = """\
[secrets]
credentials_file = credentials.json

[slavealloc]
api_url = http://127.0.0.1:8001/api

[inventory]
api_url = http://127.0.0.1:8002/api

[bugzilla]
api_url = http://127.0.0.1:8003/rest

[buildapi]
api_url = http://127.0.0.1:8004/buildapi

[slaves]
default_domain = build.example.test
"""


def _write(directory: Path, ini: str, credentials: Any = None, raw_credentials: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "slaveapi.ini"
    path.write_text(ini, encoding="utf-8")
    if raw_credentials is not None:
        (directory / "credentials.json").write_text(raw_credentials, encoding="utf-8")
    else:
        (directory / "credentials.json").write_text(
            json.dumps(_CREDENTIALS if credentials is None else credentials), encoding="utf-8"
        )
    return path


def _replace(ini: str, old: str, new: str) -> str:
    assert old in ini, old
    return ini.replace(old, new, 1)


def _error(path: Path) -> str:
    """The message load_config fails with, checked to be one secret-free line."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    for secret in _SECRETS:
        assert secret not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    return message


# -- a full, valid configuration ------------------------------------------------------------


def test_full_ini_loads_typed_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    path = _write(conf, _FULL_INI)
    # Relative paths follow the ini, not the working directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(os.path.relpath(path, elsewhere))

    assert config.path == str(path)
    assert config.server == ServerConfig(
        listen="tcp:8080:interface=0.0.0.0", concurrency=20, daemonize=True, pidfile="run/slaveapi.pid"
    )
    assert config.slavealloc == ServiceURL("http://127.0.0.1:8001/api")
    assert config.inventory == InventoryConfig(
        "https://127.0.0.1:8002/en-US/tasty-api/v1",
        "slaveapi",
        dns_api_url="https://127.0.0.1:8002/en-US/tasty-api/v1" + "/mozdns/api/v1_dns",
    )
    assert config.bugzilla == ServiceURL("https://127.0.0.1:8003/rest", "slaveapi@example.test")
    assert config.buildapi == BuildapiConfig("http://127.0.0.1:8004/buildapi", max_concurrent=4)
    assert config.slaves == SlavesConfig(default_domain="build.example.test", ipmi_username="IPMIADMIN")
    assert config.logging == LoggingConfig(
        level="debug", file=str(conf / "logs" / "slaveapi.log"), maxsize=2048, maxfiles=3
    )
    assert config.dns == DNSConfig(
        servers=(("127.0.0.1", 5353), ("127.0.0.2", 53), ("127.0.0.3", 53)), timeout=2.5
    )
    assert config.ssh == SSHConfig(
        port=2222,
        connect_timeout=7.0,
        command_timeout=9.5,
        host_keys="strict",
        known_hosts="/var/lib/slaveapi/known_hosts",
    )
    assert config.http == HTTPConfig(timeout=12.0)
    assert config.auth == AuthConfig(protect_reads=True)
    assert config.devices_url == "http://127.0.0.1:8005/devices.json"
    assert dict(config.timeouts) == {"reboot": 900.0, "buildslave_uptime": 1.5}
    assert all(type(value) is float for value in config.timeouts.values())

    credentials = config.credentials
    assert dict(credentials.ssh) == {
        "cltbld": (Secret(_SSH_PASSWORD), Secret(_SSH_PASSWORD_2)),
        "root": (Secret(_SSH_PASSWORD),),
    }
    assert [p.reveal() for p in credentials.ssh["cltbld"]] == [_SSH_PASSWORD, _SSH_PASSWORD_2]
    assert credentials.inventory is not None and credentials.inventory.reveal() == _INVENTORY_PASSWORD
    assert credentials.ipmi is not None and credentials.ipmi.reveal() == _IPMI_PASSWORD
    assert credentials.bugzilla is not None and credentials.bugzilla.reveal() == _BUGZILLA_KEY
    assert credentials.snmp_community is not None and credentials.snmp_community.reveal() == _COMMUNITY
    assert {name: entry.token.reveal() for name, entry in credentials.api_tokens.items()} == {"dashboard": _TOKEN}
    assert credentials.api_tokens["dashboard"].scopes == frozenset(API_SCOPES)

    # Nothing secret shows when the whole configuration is printed.
    for text in (repr(config), str(config), f"{config}", repr(credentials)):
        for secret in _SECRETS:
            assert secret not in text


def test_minimal_ini_gets_the_defaults(tmp_path: Path) -> None:
    config = load_config(str(_write(tmp_path, _MINIMAL_INI, credentials={"ssh": {}})))
    assert config.server == ServerConfig(
        listen="tcp:9999:interface=127.0.0.1", concurrency=50, daemonize=False, pidfile="slaveapi.pid"
    )
    assert config.inventory == InventoryConfig(
        "http://127.0.0.1:8002/api", None, dns_api_url="http://127.0.0.1:8002/api" + "/mozdns/api/v1_dns"
    )
    assert config.buildapi == BuildapiConfig("http://127.0.0.1:8004/buildapi", max_concurrent=3)
    assert config.slaves == SlavesConfig(default_domain="build.example.test", ipmi_username="ADMIN")
    assert config.logging == LoggingConfig()
    assert config.dns == DNSConfig(servers=(), timeout=5.0)
    assert config.ssh == SSHConfig()
    assert config.ssh.host_keys == "strict"
    assert config.ssh.per_host == 2
    assert config.http == HTTPConfig()
    assert config.auth == AuthConfig(protect_reads=False)
    assert config.devices_url is None
    assert dict(config.timeouts) == {}
    assert config.credentials == Credentials(ssh={})
    assert dict(config.credentials.api_tokens) == {}


def test_dns_servers_may_be_ipv6(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "servers = 127.0.0.1:5353, 127.0.0.2 127.0.0.3:53", "servers = ::1 [::1]:5353")
    assert load_config(str(_write(tmp_path, ini))).dns.servers == (("::1", 53), ("::1", 5353))


def test_endpoint_overrides_listen_and_port(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "port = 8080\n", "port = 8080\nendpoint = ssl:8443:privateKey=key.pem\n")
    config = load_config(str(_write(tmp_path, ini)))
    assert config.server.listen == "ssl:8443:privateKey=key.pem"


def test_listen_alone_uses_the_default_port(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "port = 8080\n", "")
    assert load_config(str(_write(tmp_path, ini))).server.listen == "tcp:9999:interface=0.0.0.0"


@pytest.mark.parametrize(
    "raw, expected",
    [("1", True), ("YES", True), ("true", True), ("Y", True), ("y", True), ("on", True),
     ("0", False), ("no", False), ("False", False), ("N", False), ("n", False), ("Off", False)],
)
def test_booleans(tmp_path: Path, raw: str, expected: bool) -> None:
    ini = _replace(_FULL_INI, "daemonize = yes", f"daemonize = {raw}")
    ini = _replace(ini, "protect_reads = true", f"protect_reads = {raw}")
    config = load_config(str(_write(tmp_path, ini)))
    assert (config.server.daemonize, config.auth.protect_reads) == (expected, expected)


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_booleans_are_the_web_vocabulary(tmp_path: Path, raw: str) -> None:
    # One yes/no vocabulary for the ini and request parameters.
    assert (parse_yes_no(raw), parse_yes_no("Yes "), parse_yes_no(" 0"), parse_yes_no("ON")) == (
        None,
        True,
        False,
        True,
    )
    path = _write(tmp_path, _replace(_FULL_INI, "daemonize = yes", f"daemonize = {raw}"))
    assert _error(path) == f"{path}: [server] daemonize: expected true or false, got {raw!r}"


@pytest.mark.parametrize("choice", ["tofu", "strict", "off", "TOFU"])
def test_ssh_host_keys_choices(tmp_path: Path, choice: str) -> None:
    ini = _replace(_FULL_INI, "host_keys = Strict", f"host_keys = {choice}")
    assert load_config(str(_write(tmp_path, ini))).ssh.host_keys == choice.lower()


def test_absolute_credentials_path_is_used_as_is(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secret" / "creds.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({"ssh": {"cltbld": ["only-this-one"]}}), encoding="utf-8")
    ini = _replace(_FULL_INI, "credentials_file = credentials.json", f"credentials_file = {elsewhere}")
    config = load_config(str(_write(tmp_path / "conf", ini)))
    assert [p.reveal() for p in config.credentials.ssh["cltbld"]] == ["only-this-one"]


def test_secret_never_shows_its_value() -> None:
    secret = Secret(_TOKEN)
    masked = "Secret('********')"
    assert repr(secret) == masked
    assert str(secret) == masked
    assert f"{secret}" == masked
    assert format(secret) == masked
    assert "%s %r" % (secret, secret) == f"{masked} {masked}"  # noqa: UP031  # %-formatting is under test
    assert _TOKEN not in repr([secret, {"token": secret}])
    assert secret.reveal() == _TOKEN
    assert secret == Secret(_TOKEN)
    assert secret != Secret("something-else-entirely")
    assert secret != _TOKEN


# -- the ini file: one message per mistake --------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.ini"
    assert _error(path) == f"{path}: config file not found"


def test_not_an_ini_file(tmp_path: Path) -> None:
    path = tmp_path / "slaveapi.ini"
    path.write_text("api_url = http://x\n[server\n", encoding="utf-8")
    message = _error(path)
    assert message.startswith(f"{path}: not a readable ini file (")


def test_missing_section(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "[slavealloc]\napi_url = http://127.0.0.1:8001/api/\n", "")
    path = _write(tmp_path, ini)
    assert _error(path) == f"{path}: [slavealloc]: missing section"


def test_missing_key(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "[slavealloc]\napi_url = http://127.0.0.1:8001/api/\n", "[slavealloc]\n")
    path = _write(tmp_path, ini)
    assert _error(path) == f"{path}: [slavealloc] api_url: missing; expected an http:// or https:// URL"


def test_missing_credentials_file_key(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "credentials_file = credentials.json\n", "")
    path = _write(tmp_path, ini)
    assert _error(path) == f"{path}: [secrets] credentials_file: missing; expected a value"


def test_empty_required_value(tmp_path: Path) -> None:
    ini = _replace(_FULL_INI, "default_domain = .build.example.test.", "default_domain =")
    path = _write(tmp_path, ini)
    assert _error(path) == f"{path}: [slaves] default_domain: expected a non-empty value, got ''"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("port = 8080", "port = abc", "[server] port: expected an integer >= 0, got 'abc'"),
        ("concurrency = 20", "concurrency = 0", "[server] concurrency: expected an integer >= 1, got '0'"),
        ("concurrency = 20", "concurrency = 2.5", "[server] concurrency: expected an integer >= 1, got '2.5'"),
        ("daemonize = yes", "daemonize = maybe", "[server] daemonize: expected true or false, got 'maybe'"),
        (
            "api_url = http://127.0.0.1:8001/api/",
            "api_url = ftp://x",
            "[slavealloc] api_url: expected an http:// or https:// URL, got 'ftp://x'",
        ),
        (
            "host_keys = Strict",
            "host_keys = sometimes",
            "[ssh] host_keys: expected one of tofu, strict, off, got 'sometimes'",
        ),
        ("reboot = 900", "reboot = x", "[timeouts] reboot: expected a number >= 1, got 'x'"),
        ("reboot = 900", "reboot = 0.5", "[timeouts] reboot: expected a number >= 1, got '0.5'"),
        (
            "servers = 127.0.0.1:5353, 127.0.0.2 127.0.0.3:53",
            "servers = 127.0.0.1:53 host:99999",
            "[dns] servers: expected host:port pairs separated by spaces or commas, got 'host:99999'",
        ),
        (
            "servers = 127.0.0.1:5353, 127.0.0.2 127.0.0.3:53",
            "servers = 127.0.0.1:dns",
            "[dns] servers: expected host:port pairs separated by spaces or commas, got '127.0.0.1:dns'",
        ),
        ("timeout = 2.5", "timeout = soon", "[dns] timeout: expected a number >= 0.1, got 'soon'"),
        ("reboot = 900", "reboot = nan", "[timeouts] reboot: expected a number >= 1, got 'nan'"),
        ("timeout = 12", "timeout = NaN", "[http] timeout: expected a number >= 0.1, got 'NaN'"),
        ("max_concurrent = 4", "max_concurrent = 0", "[buildapi] max_concurrent: expected an integer >= 1, got '0'"),
        (
            "level = DEBUG",
            "level = loud",
            "[logging] level: expected one of debug, info, warn, warning, error, critical, got 'loud'",
        ),
        (
            "protect_reads = true",
            "protect_reads = sure",
            "[auth] protect_reads: expected true or false, got 'sure'",
        ),
        (
            "url = http://127.0.0.1:8005/devices.json",
            "url = 127.0.0.1/devices.json",
            "[devices] url: expected an http:// or https:// URL, got '127.0.0.1/devices.json'",
        ),
    ],
)
def test_malformed_values(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = _write(tmp_path, _replace(_FULL_INI, old, new))
    assert _error(path) == f"{path}: {expected}"


# -- unknown sections and keys: one line naming them and the closest known name ------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[ssh]\nknown_host = kh\n", "[ssh] known_host: unknown key; did you mean 'known_hosts'?"),
        ("[store]\nkeepdays = 3\n", "[store] keepdays: unknown key; did you mean 'keep_days'?"),
        ("[store]\nurls = postgresql://db/slaveapi\n", "[store] urls: unknown key; did you mean 'url'?"),
        ("[stroe]\nkeep_days = 3\n", "[stroe]: unknown section; did you mean 'store'?"),
        ("[Probes]\nmethod = tcp\n", "[Probes]: unknown section; did you mean 'probes'?"),
        ("[cluster]\nnodes = 3\n", "[cluster]: unknown section; expected one of server, slavealloc, inventory, "
         "bugzilla, buildapi, slaves, secrets, logging, dns, ssh, http, auth, probes, ipmi, redfish, snmp, pdus, "
         "mozpool, reboot, power, buildbot, masters, aws, store, health, events, webhooks, devices, timeouts"),
        ("[mozpool]\nhost = imaging\n", "[mozpool] host: unknown key; expected one of scheme, port"),
        ("[DEFAULT]\ntimeout = 3\n", "[DEFAULT]: unknown section; expected one of server, slavealloc, inventory, "
         "bugzilla, buildapi, slaves, secrets, logging, dns, ssh, http, auth, probes, ipmi, redfish, snmp, pdus, "
         "mozpool, reboot, power, buildbot, masters, aws, store, health, events, webhooks, devices, timeouts"),
    ],
)
def test_unknown_sections_and_keys_stop_loading(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, _MINIMAL_INI + "\n" + text, credentials={"ssh": {}})
    assert _error(path) == f"{path}: {expected}"


def test_results_stay_in_sqlite_unless_store_url_names_a_postgresql_database(tmp_path: Path) -> None:
    config = load_config(str(_write(tmp_path, _MINIMAL_INI, credentials={"ssh": {}})))
    assert (config.store.url, config.store.postgresql) == ("sqlite:", False)
    ini = _MINIMAL_INI + "\n[store]\nurl = postgresql://slaveapi@db.example.test:5433/slaveapi?sslmode=verify-full\n"
    ini += "instance = api-2\nlease = 12\n"
    credentials = {"ssh": {}, "postgresql_password": "pg-password-5150"}
    config = load_config(str(_write(tmp_path, ini, credentials=credentials)))
    assert config.store.postgresql
    assert config.store.url == "postgresql://slaveapi@db.example.test:5433/slaveapi?sslmode=verify-full"
    assert (config.store.instance, config.store.lease, config.store.pool_size) == ("api-2", 12.0, 10)
    assert config.credentials.postgresql_password is not None
    assert config.credentials.postgresql_password.reveal() == "pg-password-5150"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://db/slaveapi", "expected sqlite: or a postgresql://[user@]host[:port]/database URL"),
        ("postgresql:///slaveapi", "expected sqlite: or a postgresql://[user@]host[:port]/database URL"),
        ("postgresql://slaveapi:hunter2@db/slaveapi", "put it in the credentials file as postgresql_password"),
    ],
)
def test_a_store_url_that_cannot_work_is_refused(tmp_path: Path, url: str, expected: str) -> None:
    path = _write(tmp_path, _MINIMAL_INI + f"\n[store]\nurl = {url}\n", credentials={"ssh": {}})
    message = _error(path)
    assert message.startswith(f"{path}: [store] url: ")
    assert expected in message
    assert "hunter2" not in message


def test_a_key_of_a_sibling_section_is_unknown(tmp_path: Path) -> None:
    # [slavealloc] reads api_url only, unlike [bugzilla]: a user name there would be sent nowhere.
    ini = _replace(_MINIMAL_INI, "[slavealloc]\n", "[slavealloc]\nusername = slaveapi\n")
    path = _write(tmp_path, ini, credentials={"ssh": {}})
    assert _error(path) == f"{path}: [slavealloc] username: unknown key; expected one of api_url"


def test_a_misspelt_section_is_unknown_before_it_is_missing(tmp_path: Path) -> None:
    ini = _replace(_MINIMAL_INI, "[slavealloc]", "[slavealloc ]")
    path = _write(tmp_path, ini, credentials={"ssh": {}})
    assert _error(path) == f"{path}: [slavealloc ]: unknown section; did you mean 'slavealloc'?"


def test_free_form_sections_take_any_key(tmp_path: Path) -> None:
    ini = _MINIMAL_INI + "\n[timeouts]\nany_action = 5\n\n[pdus]\npdu1.example.test = APC\n\n[masters]\nbm1 = 0.8\n"
    config = load_config(str(_write(tmp_path, ini, credentials={"ssh": {}})))
    assert (dict(config.timeouts), dict(config.snmp.pdu_types), dict(config.buildbot.masters)) == (
        {"any_action": 5.0},
        {"pdu1.example.test": "apc"},
        {"bm1": "0.8"},
    )


def test_schema_lists_what_the_loader_accepts() -> None:
    schema = {section.name: section for section in ini_schema()}
    assert [name for name, section in schema.items() if section.required] == [
        "slavealloc", "inventory", "bugzilla", "buildapi", "slaves", "secrets"
    ]
    assert [name for name, section in schema.items() if section.keys is None] == ["pdus", "masters", "timeouts"]
    assert schema["server"].keys == (
        "listen", "port", "endpoint", "concurrency", "daemonize", "pidfile", "max_body", "server_names",
        "read_concurrency", "max_queued",
    )
    assert schema["secrets"].keys == ("credentials_file",)
    assert schema["snmp"].keys is not None and "pdu_types" not in schema["snmp"].keys


def test_each_default_is_the_records_own(tmp_path: Path) -> None:
    # A section left out gets exactly its record's dataclass defaults: nothing restates them.
    config = load_config(str(_write(tmp_path, _MINIMAL_INI, credentials={"ssh": {}})))
    for field in dataclasses.fields(Config):
        if field.default is not dataclasses.MISSING:
            assert getattr(config, field.name) == field.default, field.name
    assert config.server == ServerConfig()
    assert config.slaves == SlavesConfig(default_domain="build.example.test")


# -- the credentials file -------------------------------------------------------------------


def test_credentials_file_missing(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI)
    (tmp_path / "credentials.json").unlink()
    assert _error(path) == f"{tmp_path / 'credentials.json'}: credentials file not found"


def test_credentials_not_json(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI, raw_credentials='{"ssh": {"cltbld": ["' + _SSH_PASSWORD + '"]},\n oops')
    message = _error(path)
    assert message.startswith(f"{tmp_path / 'credentials.json'}: not readable as JSON (")
    assert message.endswith(")")


def test_credentials_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=[_SSH_PASSWORD])
    assert _error(path) == f"{tmp_path / 'credentials.json'}: expected a JSON object"


def test_credentials_without_ssh(tmp_path: Path) -> None:
    credentials = {key: value for key, value in _CREDENTIALS.items() if key != "ssh"}
    path = _write(tmp_path, _FULL_INI, credentials=credentials)
    assert _error(path) == f"{tmp_path / 'credentials.json'}: ssh: missing; expected an object"


def test_credentials_ssh_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, ssh=[_SSH_PASSWORD]))
    assert _error(path) == f"{tmp_path / 'credentials.json'}: ssh: expected an object"


@pytest.mark.parametrize("passwords", [{"first": _SSH_PASSWORD}, 12345, [_SSH_PASSWORD, 6789], None])
def test_credentials_ssh_user_not_a_list_of_passwords(tmp_path: Path, passwords: Any) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, ssh={"cltbld": passwords}))
    assert _error(path) == f"{tmp_path / 'credentials.json'}: ssh.cltbld: expected a list of passwords"


def test_credentials_short_api_token(tmp_path: Path) -> None:
    short = "too-short-tok"
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, api_tokens={"dashboard": short}))
    message = _error(path)
    assert message == (
        f"{tmp_path / 'credentials.json'}: api_tokens.dashboard: expected a token of at least 16 characters"
    )
    assert short not in message


def test_credentials_token_not_a_string(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, api_tokens={"dashboard": 1234567890123456789}))
    message = _error(path)
    assert message == (
        f"{tmp_path / 'credentials.json'}: api_tokens.dashboard: expected a token of at least 16 characters"
    )
    assert "1234567890123456789" not in message


def test_credentials_secret_not_a_string(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, ipmi=["ipmi-secret-in-a-list"]))
    message = _error(path)
    assert message == f"{tmp_path / 'credentials.json'}: ipmi: expected a string"
    assert "ipmi-secret-in-a-list" not in message


def test_load_credentials_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ssh": {"root": _SSH_PASSWORD}}), encoding="utf-8")
    credentials = load_credentials(str(path))
    assert credentials == Credentials(ssh={"root": (Secret(_SSH_PASSWORD),)})
    assert (credentials.inventory, credentials.ipmi, credentials.bugzilla, credentials.snmp_community) == (
        None,
        None,
        None,
        None,
    )


# -- SSH private keys in the credentials file ------------------------------------------------


def _ssh_key(path: Path, kind: str = "ed25519", passphrase: bytes | None = None, public: bool = False) -> Path:
    """Write a fresh throwaway private key (or its public half) to C{path}."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from twisted.conch.ssh.keys import Key

    private = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    key = Key(private)
    if public:
        path.write_bytes(key.public().toString("openssh"))
    elif kind == "ed25519":
        path.write_bytes(key.toString("openssh", subtype="v1", passphrase=passphrase))
    else:
        path.write_bytes(key.toString("openssh", subtype="PEM", passphrase=passphrase))
    return path


def test_credentials_ssh_keys_load(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    first = _ssh_key(keys / "cltbld_ed25519")
    second = _ssh_key(keys / "cltbld_rsa", kind="rsa")
    elsewhere = _ssh_key(tmp_path / "root_ed25519")
    credentials = dict(
        _CREDENTIALS,
        ssh_keys={"cltbld": ["keys/cltbld_ed25519", "./keys/../keys/cltbld_rsa"], "keyonly": str(elsewhere)},
    )
    config = load_config(str(_write(tmp_path, _FULL_INI, credentials=credentials)))
    assert dict(config.credentials.ssh_keys) == {"cltbld": (str(first), str(second)), "keyonly": (str(elsewhere),)}
    assert list(config.credentials.ssh) == ["cltbld", "root"]
    shown = repr(config)
    assert first.read_text().splitlines()[1] not in shown


def test_credentials_without_ssh_keys_have_none(tmp_path: Path) -> None:
    assert dict(load_config(str(_write(tmp_path, _FULL_INI))).credentials.ssh_keys) == {}


_KEY_PROBLEMS = {
    "missing": "SSH key file not found",
    "garbage": "not an SSH private key in OpenSSH or PEM format (BadKeyError)",
    "truncated": "not an SSH private key in OpenSSH or PEM format (Error)",
    "directory": "SSH key file not readable (Is a directory)",
    "encrypted": "SSH key is encrypted; only unencrypted keys can be used",
    "encrypted_pem": "SSH key is encrypted; only unencrypted keys can be used",
    "public": "a public key; expected a private key",
}


@pytest.mark.parametrize("problem", sorted(_KEY_PROBLEMS))
def test_credentials_unusable_ssh_key_is_a_one_line_error_naming_the_file(tmp_path: Path, problem: str) -> None:
    marker = "KEYCONTENT-must-not-show-0xdeadbeef"
    key_file = tmp_path / "keys" / "bad_key"
    key_file.parent.mkdir()
    if problem == "garbage":
        key_file.write_text(f"{marker}\n")
    elif problem == "truncated":
        key_file.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{marker}\n-----END OPENSSH PRIVATE KEY-----\n")
    elif problem == "directory":
        key_file.mkdir()
    elif problem == "encrypted":
        _ssh_key(key_file, passphrase=b"a-passphrase")
    elif problem == "encrypted_pem":
        _ssh_key(key_file, kind="rsa", passphrase=b"a-passphrase")
    elif problem == "public":
        _ssh_key(key_file, public=True)
    credentials = dict(_CREDENTIALS, ssh_keys={"cltbld": ["keys/bad_key"]})
    message = _error(_write(tmp_path, _FULL_INI, credentials=credentials))
    assert message == f"{tmp_path / 'credentials.json'}: ssh_keys.cltbld: {key_file}: {_KEY_PROBLEMS[problem]}"
    assert marker not in message


@pytest.mark.parametrize("value", [{"path": "k"}, [1], [""], 7])
def test_credentials_ssh_keys_user_not_a_list_of_paths(tmp_path: Path, value: Any) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, ssh_keys={"cltbld": value}))
    assert (
        _error(path) == f"{tmp_path / 'credentials.json'}: ssh_keys.cltbld: expected a list of private key file paths"
    )


def test_credentials_ssh_keys_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, ssh_keys=["keys/k"]))
    assert _error(path) == f"{tmp_path / 'credentials.json'}: ssh_keys: expected an object"


# -- the HTTP gate's settings and scoped tokens --------------------------------------------


def test_gate_settings_default_to_a_64k_body_no_extra_names_and_no_anonymous_exposure(tmp_path: Path) -> None:
    config = load_config(str(_write(tmp_path, _MINIMAL_INI, credentials={"ssh": {}})))
    assert (config.server.max_body, config.server.server_names) == (65536, ())
    assert (config.auth.allowed_origins, config.auth.allow_anonymous) == ((), False)


def test_gate_settings_load(tmp_path: Path) -> None:
    ini = _MINIMAL_INI + (
        "\n[server]\nmax_body = 2048\nserver_names = SlaveAPI.example.com, *.build.example.com api.example.org:8443\n"
        "\n[auth]\nallowed_origins = https://dash.example.com/ http://127.0.0.1:8080\nallow_anonymous = yes\n"
    )
    config = load_config(str(_write(tmp_path, ini, credentials={"ssh": {}})))
    assert config.server.max_body == 2048
    assert config.server.server_names == ("slaveapi.example.com", "*.build.example.com", "api.example.org:8443")
    assert config.auth.allowed_origins == ("https://dash.example.com:443", "http://127.0.0.1:8080")
    assert config.auth.allow_anonymous is True


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("server", "max_body = 10", "[server] max_body: expected an integer >= 1024, got '10'"),
        (
            "server",
            "server_names = good.example bad_name",
            "[server] server_names: expected host names (name, name:port, *.domain or *) separated by spaces or "
            "commas, got 'bad_name'",
        ),
        (
            "auth",
            "allowed_origins = null",
            "[auth] allowed_origins: expected origins (http://host[:port] or https://host[:port]) separated by "
            "spaces or commas, got 'null'",
        ),
        (
            "auth",
            "allowed_origins = https://dash.example.com/path",
            "[auth] allowed_origins: expected origins (http://host[:port] or https://host[:port]) separated by "
            "spaces or commas, got 'https://dash.example.com/path'",
        ),
        ("auth", "allow_anonymous = perhaps", "[auth] allow_anonymous: expected true or false, got 'perhaps'"),
    ],
)
def test_gate_settings_errors_name_the_key(tmp_path: Path, section: str, line: str, expected: str) -> None:
    path = _write(tmp_path, _MINIMAL_INI + f"\n[{section}]\n{line}\n", credentials={"ssh": {}})
    assert _error(path) == f"{path}: {expected}"


def test_api_tokens_may_carry_scopes_and_the_old_form_has_them_all(tmp_path: Path) -> None:
    tokens = {
        "idle-rebooter": {"token": _TOKEN, "scopes": ["read", "inspect", "reboot"]},
        "buildduty": "buildduty-token-fedcba9876543210",
        "nobody": {"token": "nobody-token-00000000000000", "scopes": []},
    }
    _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, api_tokens=tokens))
    credentials = load_credentials(str(tmp_path / "credentials.json"))
    assert credentials.api_tokens == {
        "idle-rebooter": ApiToken(Secret(_TOKEN), frozenset({"read", "inspect", "reboot"})),
        "buildduty": ApiToken(Secret("buildduty-token-fedcba9876543210"), frozenset(API_SCOPES)),
        "nobody": ApiToken(Secret("nobody-token-00000000000000"), frozenset()),
    }
    assert _TOKEN not in repr(credentials)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"token": _TOKEN, "scopes": ["read", "shutdown"]}, "api_tokens.dashboard.scopes: unknown scope 'shutdown'; "
         "expected some of read, inspect, reboot, disable, aws, power"),
        ({"token": _TOKEN, "scopes": "read"}, "api_tokens.dashboard.scopes: expected a list of scopes from read, "
         "inspect, reboot, disable, aws, power"),
        ({"token": _TOKEN}, "api_tokens.dashboard.scopes: expected a list of scopes from read, inspect, reboot, "
         "disable, aws, power"),
        (
            {"token": "short", "scopes": ["read"]},
            "api_tokens.dashboard.token: expected a token of at least 16 characters",
        ),
        ({"scopes": ["read"]}, "api_tokens.dashboard.token: expected a token of at least 16 characters"),
        ({"token": _TOKEN, "scopes": ["read"], "role": "admin"}, "api_tokens.dashboard: unknown key 'role'; "
         "expected token and scopes"),
    ],
)
def test_scoped_token_errors_name_the_key(tmp_path: Path, entry: Any, expected: str) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, api_tokens={"dashboard": entry}))
    assert _error(path) == f"{tmp_path / 'credentials.json'}: {expected}"


@pytest.mark.parametrize("name", ["dash board", "dash\nReason: forged", "", "x" * 65, "-leading-dash"])
def test_client_names_are_plain_words(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, _FULL_INI, credentials=dict(_CREDENTIALS, api_tokens={name: _TOKEN}))
    assert _error(path) == (
        f"{tmp_path / 'credentials.json'}: api_tokens: client name {name!r}: expected letters, digits and "
        ". _ @ + - (at most 64 characters)"
    )


def test_an_unreadable_redfish_ca_bundle_is_refused_when_the_configuration_loads(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    path = _write(tmp_path, _MINIMAL_INI + f"\n[redfish]\nca_bundle = {missing}\n", credentials={"ssh": {}})
    assert _error(path) == f"{path}: [redfish] ca_bundle: expected a readable PEM file, got {str(missing)!r}"
    missing.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    assert load_config(str(path)).redfish.ca_bundle == str(missing)
