"""
C{slaveapi-cli} against a fake SlaveAPI on loopback: what it asks, what it
prints, and its exit codes; following an action by events and by polling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from slaveapi.cli import cli, main
from slaveapi.cli._client import SlaveAPIClient
from slaveapi.cli._config import ConfigError, Settings, resolve
from slaveapi.cli._follow import Follower, FollowTimeout, Target
from tests.cli.fake_server import HANG_UP, Cut, FakeSlaveAPI, event, serve

REBOOT = "/slaves/bld-1/actions/reboot"
RUNNING_SSH = {"state": 1, "text": "Attempting SSH reboot..."}
WAITING = {"state": 1, "text": "Attempting SSH reboot...initiated, waiting for it to come back..."}
DONE = {"state": 2, "text": "Attempting SSH reboot...Success!"}


@pytest.fixture
def fake() -> Iterator[FakeSlaveAPI]:
    yield from serve(FakeSlaveAPI())


def invoke(fake: FakeSlaveAPI, *args: str, env: dict[str, str | None] | None = None, url: bool = True) -> Result:
    """Run the CLI with nothing from the host's environment or config file."""
    environment: dict[str, str | None] = {
        "SLAVEAPI_URL": None, "SLAVEAPI_TOKEN": None, "SLAVEAPI_CLI_CONFIG": os.devnull + ".absent", "COLUMNS": "200",
    }
    environment.update(env or {})
    options = ["--url", fake.url] if url else []
    return CliRunner().invoke(cli, [*options, *args], env=environment, catch_exceptions=False)


def requested_reboot(fake: FakeSlaveAPI, requestid: int = 7) -> None:
    fake.answer("POST", REBOOT, (202, {"requestid": requestid, "state": 0, "text": ""}))
    fake.answer(
        "GET", "/results",
        (200, {"results": [{"requestid": requestid, "slave": "bld-1", "action": "reboot", "state": 0}], "next": None}),
    )


# Settings


def test_options_beat_the_environment_which_beats_the_config_file(tmp_path: Any) -> None:
    config = tmp_path / "cli.ini"
    config.write_text("[slaveapi]\nurl = http://file.invalid:1\ntoken = from-file\n")
    environ = {"SLAVEAPI_CLI_CONFIG": str(config)}
    assert resolve(None, None, environ) == Settings("http://file.invalid:1", "from-file")
    environ |= {"SLAVEAPI_URL": "http://env.invalid:2/", "SLAVEAPI_TOKEN": "from-env"}
    assert resolve(None, None, environ) == Settings("http://env.invalid:2", "from-env")
    assert resolve("http://option.invalid:3", "from-option", environ) == Settings(
        "http://option.invalid:3", "from-option"
    )
    assert resolve(None, None, {"SLAVEAPI_CLI_CONFIG": str(tmp_path / "none.ini")}) == Settings(
        "http://127.0.0.1:9999", None
    )


def test_the_token_is_never_shown() -> None:
    settings = Settings("http://127.0.0.1:1", "s3cret-token")
    assert "s3cret-token" not in repr(settings) and "s3cret-token" not in str(settings)


def test_a_bad_url_or_config_file_is_an_error_naming_it(tmp_path: Any, fake: FakeSlaveAPI) -> None:
    with pytest.raises(ConfigError, match="url: expected an http:// or https:// URL, got 'file:///etc/passwd'"):
        resolve("file:///etc/passwd", None, {"SLAVEAPI_CLI_CONFIG": str(tmp_path / "none.ini")})
    config = tmp_path / "cli.ini"
    config.write_text("not an ini file\n")
    result = invoke(fake, "slaves", env={"SLAVEAPI_CLI_CONFIG": str(config)})
    assert result.exit_code == 2
    assert f"{config}: cannot be read" in result.stderr


def test_the_token_from_the_config_file_is_sent_as_a_bearer_token(tmp_path: Any, fake: FakeSlaveAPI) -> None:
    config = tmp_path / "cli.ini"
    config.write_text(f"[slaveapi]\nurl = {fake.url}\ntoken = tok-123\n")
    fake.answer("GET", "/slaves", (200, {"slaves": []}))
    result = invoke(fake, "slaves", env={"SLAVEAPI_CLI_CONFIG": str(config)}, url=False)
    assert result.exit_code == 0, result.output
    assert fake.requests_to("GET", "/slaves")[0].headers["authorization"] == "Bearer tok-123"
    assert "tok-123" not in result.output


# Reading


def test_slaves_sends_the_filters_and_lists_the_machines(fake: FakeSlaveAPI) -> None:
    machines = [
        {"name": "bld-1", "purpose": "build", "environment": "prod", "pool": "build-scl3", "enabled": True},
        {"name": "bld-2", "purpose": "build", "environment": "prod", "pool": "try-scl3", "enabled": False},
    ]
    fake.answer("GET", "/slaves", (200, {"slaves": machines}))
    result = invoke(fake, "slaves", "--purpose", "build", "--pool", "build-scl3", "--pool", "try-scl3", "--disabled")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("GET", "/slaves")[0].query == {
        "purpose": ["build"], "pool": ["build-scl3", "try-scl3"], "enabled": ["no"],
    }
    assert "bld-1" in result.output and "try-scl3" in result.output and "2 machine(s)" in result.output
    assert "\x1b" not in result.output  # no colours nor cursor movement on a pipe


def test_json_prints_the_servers_answer(fake: FakeSlaveAPI) -> None:
    answer = {"name": "bld-1", "fqdn": "bld-1.example.test", "ipmi": {"fqdn": "bld-1-mgmt.example.test"}}
    fake.answer("GET", "/slaves/bld-1", (200, answer))
    result = invoke(fake, "--json", "show", "bld-1")
    assert (result.exit_code, json.loads(result.output)) == (0, answer)
    shown = invoke(fake, "show", "bld-1")
    assert "bld-1-mgmt.example.test" in shown.output and "fqdn" in shown.output


def test_an_error_answer_exits_2_with_the_servers_msg(fake: FakeSlaveAPI) -> None:
    msg = "slave: no machine named nosuch-1 is known to slavealloc, devices or the loaner patterns"
    fake.answer("GET", "/slaves/nosuch-1", (404, {"error": "not_found", "msg": msg}))
    result = invoke(fake, "show", "nosuch-1")
    assert result.exit_code == 2
    assert msg in " ".join(result.stderr.split())


def test_an_unreachable_server_exits_2_saying_why(fake: FakeSlaveAPI) -> None:
    result = invoke(fake, "--url", "http://127.0.0.1:9", "--request-timeout", "5", "slaves")
    assert result.exit_code == 2
    assert "GET http://127.0.0.1:9/slaves failed" in " ".join(result.stderr.split())


def test_results_asks_for_one_page_and_shows_the_next(fake: FakeSlaveAPI) -> None:
    page = {
        "results": [{"requestid": 12, "slave": "bld-1", "action": "reboot", "state": 3, "text": "Failed",
                     "request_timestamp": 1795827425}],
        "next": "/results?action=reboot&since=12&limit=1",
    }
    fake.answer("GET", "/results", (200, page))
    result = invoke(fake, "results", "--action", "reboot", "--state", "FAILURE", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("GET", "/results")[0].query == {"action": ["reboot"], "state": ["FAILURE"], "limit": ["1"]}
    assert "FAILURE" in result.output and "2026-11-28T00:57:05Z" in result.output
    assert "next page: GET /results?action=reboot&since=12&limit=1" in result.output


def test_health_counts_verdicts_and_lists_the_machines_down(fake: FakeSlaveAPI) -> None:
    fake.answer("GET", "/health", (200, {
        "checked_at": 1795982279.1, "machines": 11, "verdicts": {"ok": 9, "degraded": 0, "down": 2, "unknown": 0},
        "down": ["t-lab-007", "t-lab-009"],
    }))
    result = invoke(fake, "health", "--pool", "tests-scl3", "--enabled")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("GET", "/health")[0].query == {"pool": ["tests-scl3"], "enabled": ["yes"]}
    assert "down: t-lab-007, t-lab-009" in result.output


def test_health_without_a_health_loop_exits_2(fake: FakeSlaveAPI) -> None:
    msg = "health: the health loop is not running in this service"
    fake.answer("GET", "/health", (503, {"error": "unavailable", "msg": msg}))
    result = invoke(fake, "health")
    assert result.exit_code == 2 and msg in result.stderr


# Running


def test_run_polls_when_the_server_has_no_events_and_exits_0_on_success(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, RUNNING_SSH), (200, WAITING), (200, DONE))
    result = invoke(fake, "--token", "tok-1", "run", "reboot", "bld-1", "--poll-interval", "0", "-v")
    assert result.exit_code == 0, result.output
    post = fake.requests_to("POST", REBOOT)[0]
    assert post.headers["authorization"] == "Bearer tok-1" and post.form == {}
    polls = fake.requests_to("GET", REBOOT)
    assert len(polls) == 3 and all(seen.query == {"requestid": ["7"]} for seen in polls)
    lines = result.stdout.splitlines()
    assert lines == [
        "[RUNNING]",
        "Attempting SSH reboot...",
        "Attempting SSH reboot...initiated, waiting for it to come back...",
        "Attempting SSH reboot...Success!",
        "SUCCESS reboot bld-1 (request 7)",
    ]
    assert "followed by polling" in result.stderr


def test_run_sends_the_fields_and_exits_1_on_failure(fake: FakeSlaveAPI) -> None:
    fake.answer("POST", "/slaves/bld-1/actions/disable", (202, {"requestid": 3, "state": 0, "text": ""}))
    failed = {"state": 3, "text": "Disabling in slavealloc...Failed (slavealloc answered 500)"}
    fake.answer("GET", "/slaves/bld-1/actions/disable", (200, failed))
    result = invoke(
        fake, "run", "disable", "bld-1", "--field", "reason=disk full", "-f", "force=no", "--poll-interval", "0"
    )
    assert result.exit_code == 1, result.output
    assert fake.requests_to("POST", "/slaves/bld-1/actions/disable")[0].form == {"reason": "disk full", "force": "no"}
    assert "Disabling in slavealloc...Failed (slavealloc answered 500)" in result.output
    assert "FAILURE disable bld-1 (request 3)" in result.stdout


def test_run_refused_by_the_server_exits_2_with_its_msg(fake: FakeSlaveAPI) -> None:
    msg = "force: expected one of 1, y, yes, true, on, 0, n, no, false, off (any case), got 'maybe'"
    fake.answer("POST", "/slaves/bld-1/actions/disable", (400, {"error": "bad_request", "msg": msg}))
    result = invoke(fake, "run", "disable", "bld-1", "--field", "force=maybe")
    assert result.exit_code == 2
    assert msg in " ".join(result.stderr.split())


def test_a_field_without_a_value_is_a_usage_error(fake: FakeSlaveAPI) -> None:
    result = invoke(fake, "run", "disable", "bld-1", "--field", "force")
    assert result.exit_code == 2
    assert "expected NAME=VALUE, got 'force'" in result.stderr
    assert fake.seen == []


def test_run_already_finished_within_the_post_does_not_follow(fake: FakeSlaveAPI) -> None:
    fake.answer("POST", "/slaves/bld-1/actions/buildslave_uptime", (200, {"requestid": 4, "state": 2, "text": 6818239}))
    result = invoke(fake, "run", "buildslave_uptime", "bld-1", "-f", "waittime=30")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["6818239", "SUCCESS buildslave_uptime bld-1 (request 4)"]
    assert [seen.path for seen in fake.seen] == ["/openapi.json", "/slaves/bld-1/actions/buildslave_uptime"]


def test_no_follow_answers_the_request_at_once(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake, requestid=9)
    result = invoke(fake, "--json", "run", "reboot", "bld-1", "--no-follow")
    assert result.exit_code == 0
    assert json.loads(result.output) == {"requestid": 9, "state": 0, "text": ""}
    assert fake.requests_to("GET", REBOOT) == []


def test_run_follows_the_event_stream_of_its_request_only(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, {"state": 0, "text": ""}))
    fake.events = [
        ": keepalive\n\n"
        + event(40, requestid=6, slave="bld-1", action="reboot", state=3, text="another request's failure")
        + event(41, requestid=7, slave="bld-1", action="reboot", kind="progress", **RUNNING_SSH)
        + event(42, requestid=7, slave="bld-1", action="reboot", kind="finished", **DONE)
    ]
    result = invoke(fake, "run", "reboot", "bld-1", "-v")
    assert result.exit_code == 0, result.output
    stream = fake.requests_to("GET", "/events")[0]
    assert stream.query == {"slave": ["bld-1"], "action": ["reboot"]}
    assert stream.headers["accept"] == "text/event-stream"
    assert "another request" not in result.output
    assert result.stdout.splitlines()[-3:] == [
        "Attempting SSH reboot...", "Attempting SSH reboot...Success!", "SUCCESS reboot bld-1 (request 7)",
    ]
    assert "followed by events (2 received)" in result.stderr


def test_a_dropped_stream_resumes_after_the_last_event_seen(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, {"state": 0, "text": ""}))
    failed = {"state": 3, "text": "Attempting SSH reboot...Failed (refused)"}
    fake.events = [
        event(41, requestid=7, slave="bld-1", action="reboot", **RUNNING_SSH),
        event(42, requestid=7, slave="bld-1", action="reboot", **failed),
    ]
    result = invoke(fake, "run", "reboot", "bld-1")
    assert result.exit_code == 1, result.output
    streams = fake.requests_to("GET", "/events")
    assert "last-event-id" not in streams[0].headers and streams[1].headers["last-event-id"] == "41"
    # Caught up by one poll when the stream first opened, not on resuming.
    assert len(fake.requests_to("GET", REBOOT)) == 1


def test_a_stream_that_keeps_dropping_gives_way_to_polling(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    # A poll catches up each time the stream opens (no event seen yet), then polling proper.
    fake.answer("GET", REBOOT, *[(200, RUNNING_SSH)] * 7, (200, DONE))
    fake.events = []
    result = invoke(fake, "run", "reboot", "bld-1", "--poll-interval", "0", "-v")
    assert result.exit_code == 0, result.output
    assert len(fake.requests_to("GET", "/events")) == 6
    assert "followed by polling" in result.stderr


class _Clock:
    """Time that passes only when slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_following_is_bounded_by_its_timeout(fake: FakeSlaveAPI) -> None:
    fake.answer("GET", REBOOT, (200, RUNNING_SSH))
    clock, updates = _Clock(), list[dict[str, Any]]()
    follower = Follower(SlaveAPIClient(Settings(fake.url)), updates.append, 1.0, False, clock, clock.sleep)
    with pytest.raises(FollowTimeout):
        follower.follow(Target("bld-1", "reboot", 7), timeout=2.5)
    assert clock.slept == [1.0, 1.0, 0.5]
    assert len(updates) == 4 and updates[-1] == RUNNING_SSH


def test_run_that_does_not_finish_in_time_exits_3(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, RUNNING_SSH))
    result = invoke(fake, "run", "reboot", "bld-1", "--timeout", "0.1", "--poll-interval", "0.05", "--no-events")
    assert result.exit_code == 3
    assert f"GET {REBOOT}?requestid=7" in " ".join(result.stderr.split())


def _document(route: str, *fields: str) -> dict[str, Any]:
    form = {"schema": {"type": "object", "properties": {name: {"type": "string"} for name in ("waittime", *fields)}}}
    post = {"requestBody": {"content": {"application/x-www-form-urlencoded": form}}}
    return {"openapi": "3.1.0", "paths": {f"/slaves/{{slave}}/actions/{route}": {"post": post}}}


def test_a_field_the_action_does_not_declare_is_refused_before_posting(fake: FakeSlaveAPI) -> None:
    fake.answer("GET", "/openapi.json", (200, _document("disable", "reason", "force")))
    result = invoke(fake, "run", "disable", "bld-1", "--field", "reasons=disk full")
    assert result.exit_code == 2
    assert "--field: disable takes no field 'reasons'; expected one of force, reason, waittime" in result.stderr
    assert fake.requests_to("POST", "/slaves/bld-1/actions/disable") == []


def test_declared_fields_are_posted(fake: FakeSlaveAPI) -> None:
    fake.answer("GET", "/openapi.json", (200, _document("disable", "reason", "force")))
    fake.answer("POST", "/slaves/bld-1/actions/disable", (200, {"requestid": 2, "state": 2, "text": "Disabled"}))
    result = invoke(fake, "run", "disable", "bld-1", "--field", "reason=disk full")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("POST", "/slaves/bld-1/actions/disable")[0].form == {"reason": "disk full"}


class _TickingClock:
    """Time that moves on a second each time it is read: the stream's lines then take time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_keepalives_do_not_keep_a_follow_by_events_past_its_timeout(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, RUNNING_SSH))
    # Far more keepalives than the timeout has seconds, then the result: too late.
    fake.events = [": keepalive\n\n" * 500 + event(42, requestid=7, slave="bld-1", action="reboot", **DONE)]
    clock, updates = _TickingClock(), list[dict[str, Any]]()
    follower = Follower(SlaveAPIClient(Settings(fake.url)), updates.append, 1.0, True, clock, clock.sleep)
    with pytest.raises(FollowTimeout):
        follower.follow(Target("bld-1", "reboot", 7), timeout=30)
    assert updates == [RUNNING_SSH]
    assert clock.now < 40
    assert len(fake.requests_to("GET", "/events")) == 1


def test_a_stream_cut_inside_a_chunk_resumes_after_the_last_event_seen(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, {"state": 0, "text": ""}))
    fake.events = [
        Cut(event(41, requestid=7, slave="bld-1", action="reboot", **RUNNING_SSH) + "id: 42\nevent: res"),
        event(42, requestid=7, slave="bld-1", action="reboot", **DONE),
    ]
    result = invoke(fake, "run", "reboot", "bld-1", "-v")
    assert result.exit_code == 0, result.output
    streams = fake.requests_to("GET", "/events")
    assert len(streams) == 2 and streams[1].headers["last-event-id"] == "41"
    assert result.stdout.splitlines()[-1] == "SUCCESS reboot bld-1 (request 7)"
    assert "followed by events (2 received)" in result.stderr


def test_events_replayed_on_resuming_are_ignored(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, {"state": 0, "text": ""}))
    fake.events = [
        event(41, requestid=7, slave="bld-1", action="reboot", **RUNNING_SSH)
        + event(42, requestid=7, slave="bld-1", action="reboot", **WAITING),
        # A server resuming from too far back: 41 and 42 again, then the end.
        event(41, requestid=7, slave="bld-1", action="reboot", **RUNNING_SSH)
        + event(42, requestid=7, slave="bld-1", action="reboot", **WAITING)
        + event(43, requestid=7, slave="bld-1", action="reboot", **DONE),
    ]
    result = invoke(fake, "run", "reboot", "bld-1", "-v")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("GET", "/events")[1].headers["last-event-id"] == "42"
    assert "followed by events (3 received)" in result.stderr
    assert result.stdout.splitlines() == [
        "[PENDING]",
        "[RUNNING]",
        "Attempting SSH reboot...",
        "Attempting SSH reboot...initiated, waiting for it to come back...",
        "Attempting SSH reboot...Success!",
        "SUCCESS reboot bld-1 (request 7)",
    ]


def test_a_stream_that_cannot_be_opened_gives_way_to_polling(fake: FakeSlaveAPI) -> None:
    requested_reboot(fake)
    fake.answer("GET", REBOOT, (200, DONE))
    fake.events = [HANG_UP]
    result = invoke(fake, "run", "reboot", "bld-1", "-v")
    assert result.exit_code == 0, result.output
    assert len(fake.requests_to("GET", "/events")) == 1
    assert "followed by polling" in result.stderr


def test_a_redirect_is_refused_and_the_token_stays_home(fake: FakeSlaveAPI) -> None:
    for elsewhere in serve(FakeSlaveAPI()):
        elsewhere.answer("GET", "/slaves", (200, {"slaves": []}))
        fake.redirects["/slaves"] = f"{elsewhere.url}/slaves?secret=1"
        result = invoke(fake, "--token", "tok-1", "slaves")
        assert result.exit_code == 2
        assert elsewhere.seen == []
        message = " ".join(result.stderr.split())
        assert f"the server redirected to {elsewhere.url}; redirects are not followed" in message
        assert "secret" not in message and "tok-1" not in result.output


def test_an_unexpected_error_exits_2_not_1(fake: FakeSlaveAPI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/slaves", (200, {"slaves": 5}))
    with pytest.raises(SystemExit) as exited:
        main(["--url", fake.url, "slaves"])
    assert exited.value.code == 2
    assert "slaveapi-cli: unexpected error: TypeError" in capsys.readouterr().err


def test_a_usage_error_through_the_entry_point_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "reboot"])
    assert exited.value.code == 2
    assert "Missing argument 'NAME'" in capsys.readouterr().err
