"""
The pure checks behind the HTTP gate: names, Host and Origin, body sizes,
where an endpoint listens, token scopes and disable's reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.logger import ILogObserver, globalLogPublisher

from slaveapi.actions.disable import check_reason
from slaveapi.actions.registry import ACTIONS
from slaveapi.config import API_SCOPES, AuthConfig, ConfigError
from slaveapi.hostnames import Authority, Origin, is_valid_hostname, parse_authority, parse_origin
from slaveapi.web.auth import Client, authorize
from slaveapi.web.errors import HTTPProblem
from slaveapi.web.listening import check_anonymous_exposure, listens_on_loopback_only, with_backlog
from slaveapi.web.screening import Arrival, check_host, check_length, check_origin

from .conftest import make_config

LOOPBACK = Arrival("127.0.0.1", 9999, secure=False)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bld-linux64-lab-001\n", "bld-1\r", "bld-1 ", "\nbld-1", "bld-1\n\n"])
def test_a_hostname_must_match_in_full(name: str) -> None:
    assert not is_valid_hostname(name)


def test_hostnames_still_accepted() -> None:
    assert is_valid_hostname("bld-linux64-lab-001")
    assert is_valid_hostname("bld-1.build.example.com")
    assert not is_valid_hostname("a..b")


def test_authorities_and_origins_parse() -> None:
    assert parse_authority("Example.COM:9999") == Authority("example.com", 9999)
    assert parse_authority("[::1]:80") == Authority("::1", 80)
    assert parse_authority("127.0.0.1") == Authority("127.0.0.1")
    for bad in ("", "example.com:", "example.com:0", "example.com:99999", "ex ample", "[nope]:1", "a:b:c"):
        with pytest.raises(ValueError):
            parse_authority(bad)
    assert parse_origin("HTTPS://Dash.example.com") == Origin("https", "dash.example.com", 443)
    assert parse_origin("http://[::1]:8080") == Origin("http", "::1", 8080)
    for bad in ("null", "file://x", "http://x/path", "example.com"):
        with pytest.raises(ValueError):
            parse_origin(bad)


# -- Host -----------------------------------------------------------------------------------


def _host(value: bytes, arrival: Arrival = LOOPBACK, names: tuple[str, ...] = ()) -> HTTPProblem | None:
    return check_host([value], arrival, names)[1]


def test_on_loopback_the_listening_address_and_localhost_names_are_served() -> None:
    for value in (b"127.0.0.1:9999", b"localhost:9999", b"LOCALHOST:9999", b"[::1]:9999"):
        assert _host(value) is None, value
    assert check_host(None, LOOPBACK, ()) == (None, None)


def test_a_foreign_name_or_another_port_is_misdirected() -> None:
    for value in (b"attacker.example", b"attacker.example:9999", b"127.0.0.1:8080", b"localhost", b"127.0.0.2:9999"):
        problem = _host(value)
        assert problem is not None and (problem.status, problem.error) == (421, "misdirected_request"), value
        assert "[server] server_names" in problem.msg


def test_a_malformed_or_repeated_host_is_a_400() -> None:
    problem = _host(b"bad host")
    assert problem is not None and (problem.status, problem.error) == (400, "bad_request")
    repeated = check_host([b"127.0.0.1:9999", b"attacker.example"], LOOPBACK, ())[1]
    assert repeated is not None and repeated.status == 400


def test_beyond_loopback_only_the_address_itself_is_served_by_default() -> None:
    arrival = Arrival("10.0.0.5", 443, secure=True)
    assert _host(b"10.0.0.5", arrival) is None
    assert _host(b"10.0.0.5:443", arrival) is None
    for value in (b"localhost:443", b"slaveapi.example.com", b"10.0.0.5:80"):
        assert _host(value, arrival) is not None, value


def test_server_names_add_names_ports_wildcards_or_anything() -> None:
    arrival = Arrival("10.0.0.5", 9999, secure=False)
    names = ("slaveapi.example.com", "api.example.org:9999", "*.build.example.com")
    assert _host(b"slaveapi.example.com:1234", arrival, names) is None
    assert _host(b"api.example.org:9999", arrival, names) is None
    assert _host(b"api.example.org:9998", arrival, names) is not None
    assert _host(b"x.build.example.com:9999", arrival, names) is None
    assert _host(b"build.example.com:9999", arrival, names) is not None
    assert _host(b"evilbuild.example.com:9999", arrival, names) is not None
    assert _host(b"anything.example:1", arrival, ("*",)) is None


def test_a_unix_socket_serves_any_host() -> None:
    assert _host(b"whatever.example", Arrival(None, None, secure=False)) is None


# -- Origin ---------------------------------------------------------------------------------


def _origin(value: bytes | None, host: bytes = b"127.0.0.1:9999", allowed: tuple[str, ...] = ()) -> Any:
    authority = parse_authority(host.decode())
    return check_origin([value] if value is not None else None, authority, LOOPBACK, allowed)


def test_no_origin_and_the_own_origin_pass() -> None:
    assert _origin(None) == (None, None)
    assert _origin(b"http://127.0.0.1:9999") == (None, None)
    assert _origin(b"http://localhost:9999", host=b"localhost:9999") == (None, None)


def test_other_origins_are_forbidden() -> None:
    for value in (b"http://evil.example", b"null", b"http://127.0.0.1:8080", b"https://127.0.0.1:9999", b"garbage"):
        foreign, problem = _origin(value)
        assert foreign is None and problem is not None, value
        assert (problem.status, problem.error) == (403, "forbidden_origin")
        assert "[auth] allowed_origins" in problem.msg


def test_allowed_origins_pass_and_are_reported_for_cors() -> None:
    foreign, problem = _origin(b"https://dash.example.com", allowed=("https://dash.example.com:443",))
    assert problem is None and foreign == Origin("https", "dash.example.com", 443)


# -- body size ------------------------------------------------------------------------------


def test_body_sizes() -> None:
    assert check_length(0, 0, 65536) is None
    assert check_length(65536, 0, 65536) is None
    assert check_length(None, 65536, 65536) is None
    announced = check_length(32 * 1024 * 1024, 0, 65536)
    assert announced is not None and (announced.status, announced.error) == (413, "payload_too_large")
    assert announced.msg == "request body: expected at most 65536 bytes, got Content-Length 33554432"
    counted = check_length(None, 65537, 65536)
    assert counted is not None and counted.msg == "request body: expected at most 65536 bytes, got more"


# -- listening ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "description",
    [
        "tcp:9999:interface=127.0.0.1",
        "tcp:port=0:interface=127.0.0.5",
        "tcp6:9999:interface=\\:\\:1",
        "ssl:9443:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem",
        "unix:/run/slaveapi.sock",
        "TCP:9999:interface=localhost",
    ],
)
def test_loopback_endpoints(description: str) -> None:
    assert listens_on_loopback_only(description)


@pytest.mark.parametrize(
    "description",
    [
        "tcp:9999",
        "tcp:9999:interface=0.0.0.0",
        "tcp:9999:interface=10.1.2.3",
        "tcp6:9999",
        "tcp6:9999:interface=\\:\\:",
        "ssl:9443:privateKey=k.pem",
        "systemd:domain=INET:index=0",
    ],
)
def test_endpoints_beyond_loopback(description: str) -> None:
    assert not listens_on_loopback_only(description)


def test_anonymous_exposure_is_refused_unless_allowed_and_then_warned() -> None:
    config = make_config()
    with pytest.raises(ConfigError) as refused:
        check_anonymous_exposure(config, "tcp:9999:interface=0.0.0.0")
    message = str(refused.value)
    assert "\n" not in message
    assert "api_tokens" in message and "[auth] allow_anonymous = true" in message
    check_anonymous_exposure(config, "tcp:9999:interface=127.0.0.1")
    check_anonymous_exposure(make_config(tokens={"dashboard": "d" * 32}), "tcp:9999:interface=0.0.0.0")

    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        allowed = dataclasses.replace(make_config(), auth=AuthConfig(allow_anonymous=True))
        check_anonymous_exposure(allowed, "tcp:9999:interface=0.0.0.0")
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [event for event in events if "allow_anonymous" in event.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["listen"] == "tcp:9999:interface=0.0.0.0"
    assert warnings[0]["log_level"].name == "warn"


# -- scopes ---------------------------------------------------------------------------------


def test_every_action_declares_a_known_scope() -> None:
    assert {name: action.scope for name, action in ACTIONS.items()} == {
        "buildslave_uptime": "inspect",
        "buildslave_last_activity": "inspect",
        "reboot": "reboot",
        "shutdown_buildslave": "reboot",
        "disable": "disable",
        "aws_create_instance": "aws",
        "aws_start_instance": "aws",
        "aws_stop_instance": "aws",
        "aws_terminate_instance": "aws",
        "power_status": "inspect",
        "power_on": "power",
        "power_off": "power",
        "power_cycle": "power",
        "boot_device": "power",
        "pause_buildslave": "disable",
        "unpause_buildslave": "disable",
    }
    assert {action.scope for action in ACTIONS.values()} | {"read"} == set(API_SCOPES)


def test_authorize_names_the_missing_scope() -> None:
    reader = Client("dashboard", frozenset({"read", "inspect"}))
    authorize(reader, "inspect", "buildslave_uptime")
    authorize(None, "reboot", "reboot")
    with pytest.raises(HTTPProblem) as refused:
        authorize(reader, "reboot", "reboot")
    assert (refused.value.status, refused.value.error) == (403, "forbidden")
    assert refused.value.msg == "scope: the token of 'dashboard' lacks the 'reboot' scope needed for reboot"
    with pytest.raises(HTTPProblem) as undeclared:
        authorize(reader, None, "some_action")
    assert "'aws' and 'disable' and 'power' and 'reboot' scopes" in undeclared.value.msg
    authorize(Client("admin", frozenset(API_SCOPES)), None, "some_action")


# -- disable's reason -----------------------------------------------------------------------


def test_reason_is_one_printable_line_of_at_most_500_characters() -> None:
    assert check_reason("  flaky disk, bug 1234567 ") == "flaky disk, bug 1234567"
    assert check_reason("") == ""
    assert check_reason("é" * 500) == "é" * 500
    with pytest.raises(ValueError, match=r"^reason: expected at most 500 characters, got 501$"):
        check_reason("x" * 501)
    for bad in ("disk\nReason: forged", "tab\there", "trailing\n", "bell\x07", "rtl\u202eoverride"):
        with pytest.raises(ValueError, match=r"^reason: expected one line of printable characters"):
            check_reason(bad)


@pytest.mark.parametrize(
    ("description", "listened"),
    [
        ("tcp:9999:interface=127.0.0.1", "tcp:9999:interface=127.0.0.1:backlog=1024"),
        ("ssl:9443:privateKey=k.pem", "ssl:9443:privateKey=k.pem:backlog=1024"),
        ("tcp6:9999", "tcp6:9999:backlog=1024"),
        ("unix:/run/slaveapi.sock", "unix:/run/slaveapi.sock:backlog=1024"),
        ("tcp:9999:backlog=10", "tcp:9999:backlog=10"),
        ("TCP:9999:BACKLOG=10", "TCP:9999:BACKLOG=10"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_a_listening_socket_gets_a_backlog_for_bursts_unless_one_is_named(description: str, listened: str) -> None:
    assert with_backlog(description) == listened


@pytest_twisted.ensureDeferred
async def test_the_backlog_reaches_the_listening_socket() -> None:
    import subprocess

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol

    port = await serverFromString(reactor, with_backlog("tcp:0:interface=127.0.0.1")).listen(
        Factory.forProtocol(Protocol)
    )
    try:
        number = port.getHost().port
        # For a listening socket, ss shows the backlog it was given as Send-Q.
        shown = subprocess.run(
            ["ss", "-Hltn", f"sport = :{number}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert shown[2] == "1024", shown
    finally:
        await port.stopListening()
