"""
The shared HTTP helper every JSON-speaking client (slavealloc, inventory,
buildapi, Bugzilla, devices.json) goes through.

It exists so that the things every remote call must get right live in one
place: each call is bounded by a timeout that covers connecting, sending and
reading the whole body; every way a call can go wrong (a non-2xx status, a
timeout, a refused connection, a body that is not JSON) becomes one
L{RemoteError} whose message is a single line naming the service, the method
and the URL; and nothing secret (headers, basic-auth passwords) is ever put in
that message.

L{JSONClient} takes any object with treq's C{request(method, url, **kwargs)}
API, so tests can hand it a L{treq.testing.StubTreq}; the service hands it the
client built by L{make_http_client} on the one shared connection pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from slaveapi._text import shown_url
from slaveapi.clients._bounded import within
from slaveapi.clients._errors import ClientError, ClientTimeout

#: The largest body we are willing to hold in memory (a slavealloc listing of
#: a few thousand slaves is a few MB).
_MAX_BODY = 64 * 1024 * 1024
#: The most characters of a remote's own words quoted in a reason.
_MAX_DETAIL = 200
#: Twisted's errors that wrap the failures of one request.
_WRAPPERS = (RequestTransmissionFailed, ResponseFailed)

#: Query parameter values: one value, or several for a repeated parameter.
ParamValue = str | int | float | bool | Sequence[str | int]


class RemoteError(ClientError):
    """
    A remote HTTP API could not be used for one call.

    C{str()} is one line: C{"<service>: <METHOD> <url> failed: <reason>"}. It
    never contains request headers or credentials.

    @ivar service: the remote system's name, e.g. C{"slavealloc"}.
    @ivar method: the HTTP method.
    @ivar url: the URL asked for (query included, user info removed).
    @ivar reason: what went wrong, e.g. C{"HTTP 500 Internal Server Error"}.
    @ivar status: the HTTP status when the server answered, else C{None}.
    @ivar body: the decoded JSON error body when the server sent one, for
        callers that need the remote's own error code (Bugzilla's C{code});
        never part of the message.
    """

    def __init__(
        self,
        service: str,
        method: str,
        url: str,
        reason: str,
        *,
        status: int | None = None,
        body: Any = None,
    ) -> None:
        self.service = service
        self.method = method
        self.url = shown_url(url)
        self.reason = " ".join(reason.split())
        self.status = status
        self.body = body
        super().__init__(f"{service}: {method} {self.url} failed: {self.reason}")

    def __str__(self) -> str:
        return str(self.args[0])


class NotFound(RemoteError):
    """The remote system answered HTTP 404: what was asked for does not exist."""


class RemoteTimeout(RemoteError, ClientTimeout):
    """The call did not finish within the client's timeout."""


class JSONClient:
    """
    JSON requests to one remote service, each bounded by C{timeout} seconds.

    @param service: the name errors and log lines carry.
    @param http: treq's L{HTTPClient} (or anything with its C{request} API,
        such as L{treq.testing.StubTreq}).
    @param timeout: seconds allowed for one whole call, from sending the
        request to having read the last byte of the answer.
    @param reactor: provides C{callLater}; the timeout runs on it.
    """

    _log = Logger()

    def __init__(self, service: str, http: HTTPClient | Any, timeout: float, reactor: Any) -> None:
        self.service = service
        self._http = http
        self._timeout = timeout
        self._reactor = reactor

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, ParamValue] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        limit: DeferredSemaphore | None = None,
    ) -> Any:
        """
        Send one request and return the decoded JSON answer.

        @param params: query parameters, added to C{url}; a sequence value
            repeats the parameter.
        @param json_body: sent as a JSON body when not C{None}.
        @param headers: extra request headers (API keys go here).
        @param auth: user and password for HTTP basic authentication.
        @param limit: a semaphore held while the call is in flight, to bound
            how many calls run at once. Waiting for it is not counted
            against the timeout.
        @raise NotFound: the server answered 404.
        @raise RemoteError: any other non-2xx status, a timeout, a
            connection failure, or an answer that is not JSON.
        """
        method = method.upper()
        full_url = url_with_params(url, params)
        if limit is None:
            return await self._bounded(method, full_url, json_body, headers, auth)
        await limit.acquire()
        try:
            result = await self._bounded(method, full_url, json_body, headers, auth)
        except GeneratorExit:
            # The coroutine is being garbage-collected together with everything
            # waiting on it: waking the semaphore's next waiter now would resume
            # a coroutine in the middle of its own collection.
            raise
        except BaseException:
            limit.release()
            raise
        limit.release()
        return result

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """C{GET url}; see L{request_json} for the keyword arguments."""
        return await self.request_json("GET", url, **kwargs)

    async def put_json(self, url: str, **kwargs: Any) -> Any:
        """C{PUT url}; see L{request_json} for the keyword arguments."""
        return await self.request_json("PUT", url, **kwargs)

    async def post_json(self, url: str, **kwargs: Any) -> Any:
        """C{POST url}; see L{request_json} for the keyword arguments."""
        return await self.request_json("POST", url, **kwargs)

    async def _bounded(
        self,
        method: str,
        url: str,
        json_body: Any,
        headers: dict[str, str] | None,
        auth: tuple[str, str] | None,
    ) -> Any:
        """Run L{_exchange} under the timeout, cancelling it when time is up."""
        started = time.monotonic()

        def timed_out() -> RemoteTimeout:
            return RemoteTimeout(self.service, method, url, f"timed out after {self._timeout:g}s")

        try:
            result = await within(
                self._reactor,
                self._timeout,
                self._exchange(method, url, json_body, headers, auth),
                f"{self.service}: {method} {url}",
                timeout_error=timed_out,
            )
        except RemoteTimeout:
            self._log.warn(
                "{service}: {method} {url} timed out after {timeout}s",
                service=self.service,
                method=method,
                url=shown_url(url),
                timeout=self._timeout,
            )
            raise
        except RemoteError as error:
            log = self._log.debug if isinstance(error, NotFound) else self._log.info
            log(
                "{service}: {method} {url} failed: {reason}",
                service=self.service,
                method=method,
                url=error.url,
                reason=error.reason,
                status=error.status,
            )
            raise
        self._log.debug(
            "{service}: {method} {url} answered in {elapsed:.3f}s",
            service=self.service,
            method=method,
            url=shown_url(url),
            elapsed=time.monotonic() - started,
        )
        return result

    async def _exchange(
        self,
        method: str,
        url: str,
        json_body: Any,
        headers: dict[str, str] | None,
        auth: tuple[str, str] | None,
    ) -> Any:
        """Send the request, read the whole body, decode it; no timeout here."""
        request_headers = {"Accept": "application/json"}
        request_headers.update(headers or {})
        kwargs: dict[str, Any] = {"headers": request_headers}
        if json_body is not None:
            kwargs["json"] = json_body
        if auth is not None:
            kwargs["auth"] = auth
        try:
            answer = await fetch(self._http, method, url, **kwargs)
        except FetchFailed as failed:
            raise RemoteError(self.service, method, url, failed.reason, status=failed.status) from None

        code = answer.status
        if not 200 <= code < 300:
            error_class = NotFound if code == 404 else RemoteError
            raise error_class(
                self.service,
                method,
                url,
                f"HTTP {code} {answer.phrase}".rstrip(),
                status=code,
                body=_decode_or_none(answer.body),
            )
        if code == 204 or (not answer.body.strip() and method != "GET"):
            return None
        try:
            return json.loads(answer.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RemoteError(self.service, method, url, "answer is not JSON", status=code) from None


@dataclass(frozen=True)
class Answer:
    """
    One HTTP answer, read whole.

    @ivar location: the C{Location} header (a redirect's target), or C{""}.
    """

    status: int
    phrase: str
    location: str
    body: bytes


class FetchFailed(Exception):
    """
    L{fetch} got no complete answer; callers turn it into their own error.

    @ivar reason: a few words, e.g. C{"connection refused"} or
        C{"answer larger than 1048576 bytes"}.
    @ivar status: the HTTP status when the server answered before failing.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def fetch(http: HTTPClient | Any, method: str, url: str, *, max_body: int = _MAX_BODY, **kwargs: Any) -> Answer:
    """
    Send one request through C{http} and read the whole answer; no timeout
    here (callers bound it with L{within}), and any status is an answer.

    Redirects are never followed: treq would send our credentials on to
    wherever one points. C{kwargs} go to treq's C{request} as they are.

    @param max_body: the largest body read; a longer one is cut off.
    @raise FetchFailed: no connection, a connection lost, or a body larger
        than C{max_body}.
    @raise CancelledError: the call was cancelled (also when the agent
        reports the cancellation as a lost connection).
    """
    try:
        response = await http.request(method, url, allow_redirects=False, **kwargs)
    except CancelledError:
        raise
    except Exception as error:
        if _was_cancelled(error):
            raise CancelledError() from None
        raise FetchFailed(connection_reason(error)) from None

    try:
        body = await _read_body(response, max_body)
    except CancelledError:
        raise
    except _BodyTooLarge:
        raise FetchFailed(f"answer larger than {max_body} bytes", response.code) from None
    except Exception as error:
        if _was_cancelled(error):
            raise CancelledError() from None
        raise FetchFailed(f"HTTP {response.code}, body not read: {connection_reason(error)}", response.code) from None
    location = (response.headers.getRawHeaders(b"location") or [b""])[0]
    return Answer(
        status=response.code,
        phrase=_phrase(response),
        location=location.decode("latin-1", "replace") if isinstance(location, bytes) else str(location),
        body=body,
    )


def make_http_client(reactor: Any, pool: HTTPConnectionPool) -> HTTPClient:
    """
    The treq client every remote JSON API is reached with.

    It sits on an L{Agent} using the service's one shared connection pool;
    TLS certificates are verified (the Agent's default browser-like policy).
    """
    return HTTPClient(Agent(reactor, pool=pool))


class _BodyTooLarge(Exception):
    """The answer exceeded the size allowed."""


class _BodyReader(Protocol):
    """
    Collects a response body into C{done}.

    Cancelling C{done} drops the connection, so that a server that stops
    sending halfway does not keep it open after the caller gave up.
    """

    def __init__(self, max_body: int) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._max_body = max_body
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._max_body:
            self._chunks = []
            if self.transport is not None:
                cast(IPushProducer, self.transport).stopProducing()
            if not self.done.called:
                self.done.errback(_BodyTooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # Protocol types reason as a Failure | None; a body reader always gets one
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


async def _read_body(response: Any, max_body: int) -> bytes:
    """The whole body of C{response}."""
    if response.length == 0:
        return b""
    reader = _BodyReader(max_body)
    response.deliverBody(reader)
    return await reader.done


def _phrase(response: Any) -> str:
    phrase = getattr(response, "phrase", b"") or b""
    if isinstance(phrase, bytes):
        phrase = phrase.decode("latin-1", "replace")
    return str(phrase)


def _decode_or_none(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _was_cancelled(error: BaseException) -> bool:
    """Whether the agent gave up on the request because we cancelled it."""
    reasons = getattr(error, "reasons", None) or []
    return isinstance(error, _WRAPPERS) and any(
        isinstance(reason, Failure) and reason.check(CancelledError) for reason in reasons
    )


def connection_reason(error: BaseException) -> str:
    """A short description of why a request could not be sent or answered."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, DNSLookupError):
        return "host not found"
    if isinstance(error, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(error, (SSL.Error, VerificationError)):
        return _tls_reason([Failure(error)]) or "TLS handshake failed"
    if isinstance(error, _WRAPPERS):
        failures = getattr(error, "reasons", None) or []
        tls = _tls_reason(failures)
        if tls is not None:
            return tls
        reasons = [connection_reason(reason.value) for reason in failures if reason.value]
        detail = "; ".join(dict.fromkeys(reasons)) or "unknown reason"
        return f"connection lost: {detail}"
    if isinstance(error, ConnectError):
        return f"connection failed: {type(error).__name__}"
    text = str(error).strip().splitlines()
    detail = text[0][:_MAX_DETAIL] if text else ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _tls_reason(reasons: list[Failure]) -> str | None:
    """Why a TLS handshake failed, when one of C{reasons} says so."""
    for reason in reasons:
        if reason.check(VerificationError):
            return "TLS handshake failed: the certificate is not for this name"
        if reason.check(SSL.Error):
            return f"TLS handshake failed: {_ssl_detail(reason.value)}"
    return None


def _ssl_detail(error: BaseException | None) -> str:
    """OpenSSL's own words, e.g. C{certificate verify failed}."""
    args = error.args if error is not None else ()
    entries = args[0] if args and isinstance(args[0], list) else []
    texts = [str(entry[-1]) for entry in entries if isinstance(entry, tuple) and entry and entry[-1]]
    return "; ".join(texts)[:_MAX_DETAIL] or "no reason given"


def url_with_params(url: str, params: Mapping[str, ParamValue] | None) -> str:
    """
    C{url} with C{params} appended to its query string, as L{JSONClient}
    requests it (and as L{RemoteError} messages show it).
    """
    if not params:
        return url
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, bool):
                item = int(item)
            pairs.append((key, str(item)))
    query = urlencode(pairs)
    return f"{url}&{query}" if "?" in url else f"{url}?{query}"
