"""
Webhooks: signing, headers, retries with backoff, timeouts, the bounds on
deliveries in flight and queued, and the C{[webhooks]} configuration; on a
L{Clock} with a fake HTTP client, so nothing is sent and nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.web.http_headers import Headers

from slaveapi.config import Config, ConfigError, Credentials, Secret, WebhooksConfig
from slaveapi.config._readers import check_webhook_urls
from slaveapi.config._schema import IniSection
from slaveapi.events import FINISHED, PROGRESS, STARTED, ResultEvents
from slaveapi.processor import STOP_GRACE
from slaveapi.results import SUCCESS, ActionResult
from slaveapi.webhooks import EVENT_NAME, WebhookSender, signature
from tests.core.conftest import make_config

SECRET = "s3cret-for-the-hooks"
URL = "https://hooks.example.test/slaveapi?token=hidden"


class _Response:
    def __init__(self, code: int) -> None:
        self.code = code
        self.phrase = b"OK" if code < 300 else b"Bad"
        self.length = 0
        self.headers = Headers()


class _HTTP:
    """Answers each POST with the next of C{codes} (a Deferred left unfired for C{None})."""

    def __init__(self, *codes: int | None) -> None:
        self.codes = list(codes)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.hanging: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        assert method == "POST"
        self.posts.append((url, kwargs))
        code = self.codes.pop(0) if self.codes else 200
        if code is None:
            hanging: Deferred[Any] = Deferred()
            self.hanging.append(hanging)
            return hanging
        return succeed(_Response(code))


def _config(secret: str | None = SECRET, **webhooks: Any) -> Config:
    base = make_config()
    credentials = dataclasses.replace(base.credentials, webhook_secret=Secret(secret) if secret else None)
    settings = {"urls": (URL,), **webhooks}
    return dataclasses.replace(base, credentials=credentials, webhooks=WebhooksConfig(**settings))


def _sender(http: Any, clock: Clock, config: Config) -> tuple[ResultEvents, WebhookSender]:
    hub = ResultEvents()
    sender = WebhookSender(hub, lambda: config, clock, http=http)
    sender.startService()
    return hub, sender


def _finish(hub: ResultEvents, requestid: int = 5) -> None:
    result = ActionResult("bld-1", "reboot", requestid, state=SUCCESS, text="Attempting SSH reboot...Success!")
    result.client, result.request_timestamp, result.start_timestamp, result.finish_timestamp = "ops", 10, 11, 12
    hub.publish(FINISHED, result)


def _header(kwargs: dict[str, Any], name: bytes) -> str:
    value: bytes = kwargs["headers"][name][0]
    return value.decode()


def test_a_finished_action_is_posted_signed_with_its_headers() -> None:
    http, clock = _HTTP(200), Clock()
    clock.advance(1000)
    hub, sender = _sender(http, clock, _config())
    hub.publish(PROGRESS, ActionResult("bld-1", "reboot", 5, text="Attempting..."))
    assert http.posts == []  # only finished events are delivered
    _finish(hub)
    [(url, kwargs)] = http.posts
    body = kwargs["data"]
    assert url == URL
    assert json.loads(body) == {
        "requestid": 5,
        "slave": "bld-1",
        "action": "reboot",
        "state": SUCCESS,
        "text": "Attempting SSH reboot...Success!",
        "client": "ops",
        "request_timestamp": 10,
        "start_timestamp": 11,
        "finish_timestamp": 12,
    }
    timestamp = _header(kwargs, b"X-SlaveAPI-Timestamp")
    assert timestamp == "1000"  # the clock's time when it was sent
    expected = "sha256=" + hmac.new(SECRET.encode(), b"1000." + body, hashlib.sha256).hexdigest()
    assert _header(kwargs, b"X-SlaveAPI-Signature") == expected == signature(SECRET, 1000, body)
    assert signature(SECRET, 1001, body) != expected  # the time is signed: an old request cannot be replayed
    assert _header(kwargs, b"X-SlaveAPI-Event") == EVENT_NAME == "action.finished"
    assert len(_header(kwargs, b"X-SlaveAPI-Delivery")) == 32
    assert _header(kwargs, b"Content-Type") == "application/json"
    assert kwargs["allow_redirects"] is False
    assert sender.in_flight() == 0


def test_failures_are_retried_with_growing_delays_then_given_up() -> None:
    http, clock = _HTTP(500, 503, 500, 500), Clock()
    hub, sender = _sender(http, clock, _config(retries=3, backoff=2.0))
    with capturedLogs() as logs:
        _finish(hub)
        assert len(http.posts) == 1
        clock.advance(1.9)
        assert len(http.posts) == 1
        clock.advance(0.1)
        assert len(http.posts) == 2
        clock.advance(3.9)
        assert len(http.posts) == 2
        clock.advance(0.1)
        assert len(http.posts) == 3
        clock.advance(8)
        assert len(http.posts) == 4
        clock.advance(1000)
    assert len(http.posts) == 4 and sender.in_flight() == 0
    deliveries = {_header(kwargs, b"X-SlaveAPI-Delivery") for _, kwargs in http.posts}
    assert len(deliveries) == 1  # every attempt is the same delivery
    given_up = [entry for entry in logs if "given up after" in entry["log_format"]]
    assert len(given_up) == 1 and given_up[0]["reason"] == "HTTP 500 Bad"
    text = json.dumps([{k: str(v) for k, v in entry.items()} for entry in logs])
    assert SECRET not in text and "hidden" not in text  # neither the secret nor the URL's query is logged


def test_a_receiver_that_does_not_answer_times_out_and_is_retried() -> None:
    http, clock = _HTTP(None, 204), Clock()
    hub, sender = _sender(http, clock, _config(timeout=5.0, retries=1, backoff=1.0))
    _finish(hub)
    clock.advance(5)
    assert http.hanging[0].called  # cancelled at the timeout
    clock.advance(1)
    assert len(http.posts) == 2 and sender.in_flight() == 0


def test_at_most_max_in_flight_and_max_queued_the_rest_dropped() -> None:
    http, clock = _HTTP(None, None, None, None, None), Clock()
    hub, sender = _sender(http, clock, _config(max_in_flight=2, max_queued=2, retries=0))
    with capturedLogs() as logs:
        for requestid in range(5):
            _finish(hub, requestid)
    assert (len(http.posts), sender.in_flight(), sender.queued()) == (2, 2, 2)
    assert len([entry for entry in logs if "dropped" in entry["log_format"]]) == 1
    http.hanging[0].callback(_Response(200))
    assert (len(http.posts), sender.in_flight(), sender.queued()) == (3, 2, 1)


def test_the_action_is_never_waited_for() -> None:
    http, clock = _HTTP(None), Clock()
    hub, _ = _sender(http, clock, _config())
    _finish(hub)  # returns although the receiver has not answered
    assert len(http.posts) == 1 and not http.hanging[0].called


def test_without_a_secret_nothing_is_sent() -> None:
    http, clock = _HTTP(), Clock()
    hub, _ = _sender(http, clock, _config(secret=None))
    with capturedLogs() as logs:
        _finish(hub)
    assert http.posts == []
    assert any("no webhook_secret" in entry["log_format"] for entry in logs)


def test_stopping_gives_what_is_unsent_one_attempt_within_a_bound() -> None:
    http, clock = _HTTP(None, None, None, None), Clock()
    hub, sender = _sender(http, clock, _config(max_in_flight=1, timeout=100.0))
    with capturedLogs() as logs:
        _finish(hub, 1)
        _finish(hub, 2)
        stopped = sender.stopService()
        assert not stopped.called and (len(http.posts), sender.queued()) == (1, 1)
        _finish(hub, 3)  # still heard while stopping
        assert sender.queued() == 2
        clock.advance(100)  # the first attempt times out; no retry, the next delivery goes
        assert (len(http.posts), sender.queued(), stopped.called) == (2, 1, False)
        clock.advance(STOP_GRACE)
    assert stopped.called and http.hanging[1].called
    assert (sender.in_flight(), sender.queued()) == (0, 0)
    assert any(entry.get("count") == 1 and "not sent" in entry["log_format"] for entry in logs)
    _finish(hub, 4)
    assert len(http.posts) == 2


def test_a_stop_waits_for_the_finish_of_actions_still_running() -> None:
    http, clock = _HTTP(), Clock()
    hub, sender = _sender(http, clock, _config())
    hub.publish(STARTED, ActionResult("bld-1", "reboot", 9))
    stopped = sender.stopService()
    assert not stopped.called
    _finish(hub, 9)  # the processor cancelled it and recorded its end
    assert stopped.called and len(http.posts) == 1


def test_a_delivery_backing_off_is_tried_once_more_at_stop() -> None:
    http, clock = _HTTP(500, 200), Clock()
    hub, sender = _sender(http, clock, _config(retries=3, backoff=60.0))
    _finish(hub)
    assert (len(http.posts), sender.queued()) == (1, 1)
    stopped = sender.stopService()
    assert len(http.posts) == 2 and stopped.called  # the last attempt went at once, and succeeded
    assert (sender.in_flight(), sender.queued()) == (0, 0)
    clock.advance(1000)
    assert len(http.posts) == 2  # no retry left scheduled


def test_a_stop_with_nothing_to_send_is_immediate() -> None:
    _, sender = _sender(_HTTP(), Clock(), _config())
    assert sender.stopService().called


class _ByURL:
    """Hangs every POST to C{dead}; answers 200 to any other URL."""

    def __init__(self, dead: str) -> None:
        self.dead = dead
        self.posts: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.posts.append(url)
        return Deferred() if url == self.dead else succeed(_Response(200))


def test_a_receiver_that_hangs_takes_only_its_share_of_the_slots() -> None:
    dead, alive = "https://dead.example.test/h", "https://alive.example.test/h"
    http, clock = _ByURL(dead), Clock()
    hub, sender = _sender(http, clock, _config(urls=(dead, alive), max_in_flight=2, retries=2))
    for requestid in range(5):
        _finish(hub, requestid)
    assert http.posts.count(alive) == 5  # every delivery to the healthy receiver went through
    assert http.posts.count(dead) == 1 and sender.in_flight() == 1 and sender.queued() == 4


def test_a_delivery_waiting_to_retry_holds_no_slot() -> None:
    http, clock = _HTTP(500, 200, 200), Clock()
    hub, sender = _sender(http, clock, _config(max_in_flight=1, retries=1, backoff=30.0))
    _finish(hub, 1)
    _finish(hub, 2)
    assert len(http.posts) == 2  # the second went while the first waits to retry
    assert (sender.in_flight(), sender.queued()) == (0, 1)
    clock.advance(30)
    assert len(http.posts) == 3 and sender.queued() == 0


def test_configuration_changes_apply_to_the_next_event() -> None:
    http, clock = _HTTP(), Clock()
    box = {"config": _config(urls=())}
    hub = ResultEvents()
    WebhookSender(hub, lambda: box["config"], clock, http=http).startService()
    _finish(hub)
    assert http.posts == []
    box["config"] = _config(urls=("https://a.example.test/h", "https://b.example.test/h"))
    _finish(hub)
    assert [url for url, _ in http.posts] == ["https://a.example.test/h", "https://b.example.test/h"]


# The [webhooks] section.


def _check(urls: tuple[str, ...], allow: bool = False) -> None:
    section = IniSection(None, "/etc/slaveapi.ini", "webhooks")
    check_webhook_urls(section, {"urls": urls, "allow_plain_http": allow})


def test_plain_http_is_refused_except_to_loopback_or_when_allowed() -> None:
    _check(("https://hooks.example.test/x", "http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x"))
    _check(("http://hooks.example.test/x",), allow=True)
    with pytest.raises(ConfigError) as raised:
        _check(("http://user:pw@hooks.example.test:8080/secret-path?token=t0k",))
    assert "[webhooks] urls: expected https:// URLs" in str(raised.value)
    assert "http://hooks.example.test:8080" in str(raised.value)
    assert "pw" not in str(raised.value) and "secret-path" not in str(raised.value) and "t0k" not in str(raised.value)


def test_the_section_is_read_from_the_ini(tmp_path: Any) -> None:
    from slaveapi.config import load_config

    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"ssh": {}, "webhook_secret": SECRET}))
    ini = tmp_path / "slaveapi.ini"
    base = (
        "[secrets]\ncredentials_file = credentials.json\n[slavealloc]\napi_url = http://127.0.0.1:1/s\n"
        "[inventory]\napi_url = https://i.test\n[bugzilla]\napi_url = https://b.test\n"
        "[buildapi]\napi_url = http://127.0.0.1:1/b\n[slaves]\ndefault_domain = example.test\n"
    )
    ini.write_text(base + "[webhooks]\nurls = https://a.test/h, http://127.0.0.1:9/h\nretries = 5\n")
    config = load_config(str(ini))
    assert config.webhooks.urls == ("https://a.test/h", "http://127.0.0.1:9/h")
    assert config.webhooks.retries == 5
    assert config.credentials.webhook_secret == Secret(SECRET)
    assert isinstance(config.credentials, Credentials)
    ini.write_text(base + "[webhooks]\nurls = ftp://u:pw@a.test/h?token=t0k\n")
    with pytest.raises(ConfigError, match=r"\[webhooks\] urls: expected http:// or https:// URLs") as raised:
        load_config(str(ini))
    assert "ftp://a.test" in str(raised.value) and "pw" not in str(raised.value) and "t0k" not in str(raised.value)
