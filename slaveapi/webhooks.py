"""
Webhooks: a signed JSON POST to each C{[webhooks] urls} URL when an action finishes.

The sender subscribes to the service's L{ResultEvents} and, for every
C{finished} event, queues one delivery per URL; deliveries run in the
background, so an action never waits for a receiver. The body is::

    {"requestid": ..., "slave": ..., "action": ..., "state": ..., "text": ...,
     "client": ..., "request_timestamp": ..., "start_timestamp": ..., "finish_timestamp": ...}

sent with C{X-SlaveAPI-Event: action.finished}, C{X-SlaveAPI-Delivery} (an
id of its own, the same for every attempt, so that a receiver can tell a
retry from a new event) and C{X-SlaveAPI-Signature: sha256=<hex>}, the
HMAC-SHA256 of the body's bytes under the credentials' C{webhook_secret}.
Without that secret nothing is sent (a receiver could not tell us from
anyone else), and each event says so in the log.

Every attempt is bounded by C{[webhooks] timeout}; an attempt that fails
(no connection, a timeout, a status other than 2xx) is retried
C{retries} times, C{backoff} seconds later and then twice as long after each
further failure. At most C{max_in_flight} deliveries run at once and
C{max_queued} wait; past that a delivery is dropped with a log line. The
configuration is read at each event, so a reload takes effect for the next
one. Log lines name a URL by its scheme, host and port only: a URL's path
or query may itself hold a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from slaveapi.clients import ClientTimeout, within
from slaveapi.clients.http import FetchFailed, fetch, make_http_client
from slaveapi.config import Config
from slaveapi.events import FINISHED, ResultEvent, ResultEvents

#: The event every delivery is about (the C{X-SlaveAPI-Event} header).
EVENT_NAME: Final = "action.finished"

#: The longest wait between two attempts, however many retries are configured.
MAX_BACKOFF: Final = 3600.0

#: The most of a receiver's answer read (and thrown away).
_MAX_ANSWER: Final = 64 * 1024


def signature(secret: str, body: bytes) -> str:
    """The C{X-SlaveAPI-Signature} value of C{body}: C{sha256=} and the hex HMAC-SHA256 under C{secret}."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_body(event: ResultEvent) -> bytes:
    """The JSON body posted for a finished C{event}."""
    payload = {
        "requestid": event.requestid,
        "slave": event.slave,
        "action": event.action,
        "state": event.state,
        "text": event.text,
        "client": event.client,
        "request_timestamp": event.request_timestamp,
        "start_timestamp": event.start_timestamp,
        "finish_timestamp": event.finish_timestamp,
    }
    return json.dumps(payload, sort_keys=True, default=str).encode("utf-8")


@dataclass(frozen=True)
class _Delivery:
    """One body bound for one URL, with the id all its attempts share."""

    url: str
    body: bytes
    delivery_id: str
    requestid: int


class WebhookSender(Service):
    """
    Delivers C{finished} events to the configured webhooks, in the background.

    @param config: the current configuration (C{[webhooks]} and the
        credentials' C{webhook_secret}).
    @param http: anything with treq's C{request} API; by default a treq
        client of its own (certificates verified, no persistent connections).
    """

    _log = Logger()

    def __init__(self, events: ResultEvents, config: Callable[[], Config], reactor: Any, http: Any = None) -> None:
        self._events = events
        self._config = config
        self._reactor = reactor
        self._http = http if http is not None else make_http_client(reactor, HTTPConnectionPool(reactor, False))
        self._queue: deque[_Delivery] = deque()
        self._in_flight: set[Deferred[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self._events.subscribe(self._on_event)

    def stopService(self) -> Deferred[Any]:
        """Stop listening, forget what waits, and cancel the deliveries under way."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._queue:
            self._log.warn("Stopping: {count} webhook deliveries not sent", count=len(self._queue))
            self._queue.clear()
        running = list(self._in_flight)
        for delivery in running:
            delivery.cancel()
        return DeferredList(running, consumeErrors=True)

    def queued(self) -> int:
        """Deliveries waiting for a free slot."""
        return len(self._queue)

    def in_flight(self) -> int:
        """Deliveries being sent or waiting to be retried."""
        return len(self._in_flight)

    def _on_event(self, event: ResultEvent) -> None:
        if event.kind != FINISHED:
            return
        webhooks = self._config().webhooks
        if not webhooks.urls:
            return
        body = webhook_body(event)
        for url in webhooks.urls:
            if len(self._queue) >= webhooks.max_queued:
                self._log.warn(
                    "Webhook delivery to {url} for request {requestid} dropped: {limit} deliveries are queued already",
                    url=_where(url),
                    requestid=event.requestid,
                    limit=webhooks.max_queued,
                )
                continue
            self._queue.append(_Delivery(url, body, uuid.uuid4().hex, event.requestid))
        self._pump()

    def _pump(self) -> None:
        """Start queued deliveries while fewer than C{max_in_flight} run."""
        while self._queue and self.running and len(self._in_flight) < self._config().webhooks.max_in_flight:
            delivery = self._queue.popleft()
            running = Deferred.fromCoroutine(self._deliver(delivery))
            self._in_flight.add(running)
            running.addBoth(self._delivered, running)

    def _delivered(self, _: object, running: Deferred[None]) -> None:
        self._in_flight.discard(running)
        self._pump()

    async def _deliver(self, delivery: _Delivery) -> None:
        """Every attempt of one delivery, until one succeeds or the retries run out."""
        config = self._config()
        webhooks = config.webhooks
        secret = config.credentials.webhook_secret
        where = _where(delivery.url)
        if secret is None:
            self._log.error(
                "Webhook delivery to {url} for request {requestid} not sent: the credentials file has no"
                " webhook_secret to sign it with",
                url=where,
                requestid=delivery.requestid,
            )
            return
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"SlaveAPI-Webhook"],
            b"X-SlaveAPI-Event": [EVENT_NAME.encode("ascii")],
            b"X-SlaveAPI-Delivery": [delivery.delivery_id.encode("ascii")],
            b"X-SlaveAPI-Signature": [signature(secret.reveal(), delivery.body).encode("ascii")],
        }
        attempts = webhooks.retries + 1
        delay = webhooks.backoff
        try:
            for attempt in range(1, attempts + 1):
                reason = await self._attempt(delivery.url, delivery.body, headers, webhooks.timeout)
                if reason is None:
                    self._log.info(
                        "Webhook delivery {delivery} to {url} for request {requestid} sent (attempt {attempt})",
                        delivery=delivery.delivery_id,
                        url=where,
                        requestid=delivery.requestid,
                        attempt=attempt,
                    )
                    return
                if attempt == attempts:
                    break
                self._log.info(
                    "Webhook delivery {delivery} to {url} failed ({reason}); attempt {next} of {attempts}"
                    " in {delay:g}s",
                    delivery=delivery.delivery_id,
                    url=where,
                    reason=reason,
                    next=attempt + 1,
                    attempts=attempts,
                    delay=delay,
                )
                await deferLater(self._reactor, delay)
                delay = min(delay * 2, MAX_BACKOFF)
        except CancelledError:
            self._log.info(
                "Webhook delivery {delivery} to {url} abandoned: the service is stopping",
                delivery=delivery.delivery_id,
                url=where,
            )
            return
        self._log.warn(
            "Webhook delivery {delivery} to {url} for request {requestid} given up after {attempts} attempts: {reason}",
            delivery=delivery.delivery_id,
            url=where,
            requestid=delivery.requestid,
            attempts=attempts,
            reason=reason,
        )

    async def _attempt(self, url: str, body: bytes, headers: dict[bytes, list[bytes]], timeout: float) -> str | None:
        """One POST; C{None} if the receiver took it (2xx), else why not."""
        try:
            answer = await within(
                self._reactor,
                timeout,
                fetch(self._http, "POST", url, data=body, headers=headers, max_body=_MAX_ANSWER),
                f"webhook POST to {_where(url)}",
            )
        except FetchFailed as failed:
            return failed.reason
        except ClientTimeout:
            return f"timed out after {timeout:g}s"
        if 200 <= answer.status < 300:
            return None
        return f"HTTP {answer.status} {answer.phrase}".rstrip()


def _where(url: str) -> str:
    """C{url} as log lines show it: scheme, host and port (its path or query may hold a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
