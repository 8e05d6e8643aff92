"""
Webhooks: a signed JSON POST to each C{[webhooks] urls} URL when an action finishes.

The sender subscribes to the service's L{ResultEvents} and, for every
C{finished} event, queues one delivery per URL; deliveries run in the
background, so an action never waits for a receiver. The body is::

    {"requestid": ..., "slave": ..., "action": ..., "state": ..., "text": ...,
     "client": ..., "request_timestamp": ..., "start_timestamp": ..., "finish_timestamp": ...}

sent with C{X-SlaveAPI-Event: action.finished}, C{X-SlaveAPI-Delivery} (an
id of its own, the same for every attempt, so that a receiver can tell a
retry from a new event), C{X-SlaveAPI-Timestamp} (the attempt's time, whole
Unix seconds) and C{X-SlaveAPI-Signature: sha256=<hex>}, the HMAC-SHA256
of C{<timestamp>.<body>} under the credentials' C{webhook_secret}: signing
the time with the body lets a receiver refuse a replayed old request.
Without that secret nothing is sent (a receiver could not tell us from
anyone else), and each event says so in the log.

Every attempt is bounded by C{[webhooks] timeout}; an attempt that fails
(no connection, a timeout, a status other than 2xx) is retried
C{retries} times, C{backoff} seconds later and then twice as long after each
further failure. A delivery waiting for its next attempt holds no slot: at
most C{max_in_flight} attempts run at once, and one URL gets at most its
share of them (C{max_in_flight} divided by the number of URLs, at least
one), so a receiver that is down or hangs cannot hold up the others. At
most C{max_queued} deliveries wait (queued or backing off); past that a
delivery is dropped with a log line. The configuration is read at each
event, so a reload takes effect for the next one. Log lines name a URL by
its scheme, host and port only: a URL's path or query may itself hold a
secret.

When the service stops, every delivery not sent yet gets one last attempt
(retries are cancelled). The sender goes on listening until every action it
saw start has finished, so that the actions the processor cancels as it
stops are delivered too; all this within the processor's stop grace plus one
C{timeout}, after which what is still unsent is given up with a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from slaveapi._text import shown_url
from slaveapi.clients import ClientTimeout, within
from slaveapi.clients.http import FetchFailed, fetch, make_http_client
from slaveapi.config import Config
from slaveapi.events import FINISHED, ResultEvent, ResultEvents
from slaveapi.processor import STOP_GRACE

#: The event every delivery is about (the C{X-SlaveAPI-Event} header).
EVENT_NAME: Final = "action.finished"

#: The longest wait between two attempts, however many retries are configured.
MAX_BACKOFF: Final = 3600.0

#: The most of a receiver's answer read (and thrown away).
_MAX_ANSWER: Final = 64 * 1024


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """
    The C{X-SlaveAPI-Signature} value of C{body} sent at C{timestamp}:
    C{sha256=} and the hex HMAC-SHA256 of C{<timestamp>.<body>} under C{secret}.
    """
    signed = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


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
    """
    One body bound for one URL, with the id all its attempts share.

    @ivar attempt: the number of the next attempt, from 1.
    @ivar delay: seconds to wait before the attempt after the next, should it fail.
    """

    url: str
    body: bytes
    delivery_id: str
    requestid: int
    attempt: int
    delay: float


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
        self._in_flight: dict[Deferred[None], _Delivery] = {}
        self._backing_off: dict[str, tuple[IDelayedCall, _Delivery]] = {}
        # Request ids seen and not finished yet: a stop waits (boundedly) for their finish.
        self._open: set[int] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._stopping = False
        self._drained: Deferred[None] | None = None
        self._stop_deadline: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._unsubscribe = self._events.subscribe(self._on_event)

    def stopService(self) -> Deferred[None]:
        """
        Give every delivery not sent yet, and those of the actions still
        running, one last attempt, within L{STOP_GRACE} plus one
        C{[webhooks] timeout}; fires when they are done or given up.
        """
        super().stopService()
        self._stopping = True
        for call, delivery in self._backing_off.values():
            call.cancel()
            self._queue.append(delivery)
        self._backing_off.clear()
        drained: Deferred[None] = Deferred()
        self._drained = drained
        self._stop_deadline = self._reactor.callLater(STOP_GRACE + self._config().webhooks.timeout, self._give_up)
        self._pump()
        self._check_drained()
        return drained

    def queued(self) -> int:
        """Deliveries waiting for a free slot or for their next attempt."""
        return len(self._queue) + len(self._backing_off)

    def in_flight(self) -> int:
        """Attempts being sent."""
        return len(self._in_flight)

    def _on_event(self, event: ResultEvent) -> None:
        if not event.local:
            return  # the instance running the action sends its webhooks
        if event.kind != FINISHED:
            self._open.add(event.requestid)
            return
        self._open.discard(event.requestid)
        webhooks = self._config().webhooks
        if not webhooks.urls:
            self._check_drained()
            return
        body = webhook_body(event)
        for url in webhooks.urls:
            if self.queued() >= webhooks.max_queued:
                self._log.warn(
                    "Webhook delivery to {url} for request {requestid} dropped: {limit} deliveries are queued already",
                    url=shown_url(url, whole=False),
                    requestid=event.requestid,
                    limit=webhooks.max_queued,
                )
                continue
            self._queue.append(_Delivery(url, body, uuid.uuid4().hex, event.requestid, 1, webhooks.backoff))
        self._pump()

    def _pump(self) -> None:
        """Start queued deliveries while fewer than C{max_in_flight} run, each URL within its share."""
        if not (self.running or self._drained is not None):
            return
        webhooks = self._config().webhooks
        share = max(1, webhooks.max_in_flight // max(1, len(webhooks.urls)))
        while self._queue and len(self._in_flight) < webhooks.max_in_flight:
            busy = Counter(delivery.url for delivery in self._in_flight.values())
            ready = next((delivery for delivery in self._queue if busy[delivery.url] < share), None)
            if ready is None:
                return
            self._queue.remove(ready)
            running = Deferred.fromCoroutine(self._deliver(ready))
            self._in_flight[running] = ready
            running.addBoth(self._delivered, running)

    def _delivered(self, _: object, running: Deferred[None]) -> None:
        self._in_flight.pop(running, None)
        self._pump()
        self._check_drained()

    def _retry(self, delivery: _Delivery) -> None:
        self._backing_off.pop(delivery.delivery_id, None)
        self._queue.append(delivery)
        self._pump()

    async def _deliver(self, delivery: _Delivery) -> None:
        """One attempt of C{delivery}; after a failure, its next one is scheduled (or it is given up)."""
        config = self._config()
        webhooks = config.webhooks
        secret = config.credentials.webhook_secret
        where = shown_url(delivery.url, whole=False)
        if secret is None:
            self._log.error(
                "Webhook delivery to {url} for request {requestid} not sent: the credentials file has no"
                " webhook_secret to sign it with",
                url=where,
                requestid=delivery.requestid,
            )
            return
        timestamp = int(self._reactor.seconds())
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"SlaveAPI-Webhook"],
            b"X-SlaveAPI-Event": [EVENT_NAME.encode("ascii")],
            b"X-SlaveAPI-Delivery": [delivery.delivery_id.encode("ascii")],
            b"X-SlaveAPI-Timestamp": [str(timestamp).encode("ascii")],
            b"X-SlaveAPI-Signature": [signature(secret.reveal(), timestamp, delivery.body).encode("ascii")],
        }
        try:
            reason = await self._attempt(delivery.url, delivery.body, headers, webhooks.timeout)
        except CancelledError:
            self._log.info(
                "Webhook delivery {delivery} to {url} abandoned: the service is stopping",
                delivery=delivery.delivery_id,
                url=where,
            )
            return
        attempts = webhooks.retries + 1
        if reason is None:
            self._log.info(
                "Webhook delivery {delivery} to {url} for request {requestid} sent (attempt {attempt})",
                delivery=delivery.delivery_id,
                url=where,
                requestid=delivery.requestid,
                attempt=delivery.attempt,
            )
        elif delivery.attempt < attempts and not self._stopping:
            self._log.info(
                "Webhook delivery {delivery} to {url} failed ({reason}); attempt {next} of {attempts} in {delay:g}s",
                delivery=delivery.delivery_id,
                url=where,
                reason=reason,
                next=delivery.attempt + 1,
                attempts=attempts,
                delay=delivery.delay,
            )
            following = replace(delivery, attempt=delivery.attempt + 1, delay=min(delivery.delay * 2, MAX_BACKOFF))
            call = self._reactor.callLater(delivery.delay, self._retry, following)
            self._backing_off[delivery.delivery_id] = (call, following)
        else:
            self._log.warn(
                "Webhook delivery {delivery} to {url} for request {requestid} given up after {attempts} attempts:"
                " {reason}",
                delivery=delivery.delivery_id,
                url=where,
                requestid=delivery.requestid,
                attempts=delivery.attempt,
                reason=reason,
            )

    async def _attempt(self, url: str, body: bytes, headers: dict[bytes, list[bytes]], timeout: float) -> str | None:
        """One POST; C{None} if the receiver took it (2xx), else why not."""
        try:
            answer = await within(
                self._reactor,
                timeout,
                fetch(self._http, "POST", url, data=body, headers=headers, max_body=_MAX_ANSWER),
                f"webhook POST to {shown_url(url, whole=False)}",
            )
        except FetchFailed as failed:
            return failed.reason
        except ClientTimeout:
            return f"timed out after {timeout:g}s"
        if 200 <= answer.status < 300:
            return None
        return f"HTTP {answer.status} {answer.phrase}".rstrip()

    def _give_up(self) -> None:
        """The stop's time is up: drop what waits and cancel what runs."""
        self._stop_deadline = None
        if self._queue:
            self._log.warn("Stopping: {count} webhook deliveries not sent", count=len(self._queue))
            self._queue.clear()
        if self._open:
            self._log.warn("Stopping: {count} actions not heard finishing, not delivered", count=len(self._open))
            self._open.clear()
        for running in list(self._in_flight):
            running.cancel()
        self._check_drained()

    def _check_drained(self) -> None:
        """Once stopping and nothing is left to send, stop listening and fire the stop's Deferred."""
        drained = self._drained
        if drained is None or self._queue or self._in_flight or self._open:
            return
        self._drained = None
        if self._stop_deadline is not None and self._stop_deadline.active():
            self._stop_deadline.cancel()
        self._stop_deadline = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        drained.callback(None)
