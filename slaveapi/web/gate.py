"""
The HTTP gate: requests are screened as soon as their headers are in.

twisted.web reads a whole request body, and parses its form fields, before
any resource sees the request. L{GatedRequest} looks at the headers first
(L{Request.gotLength} is called once they are complete, with the announced
length, or C{None} for a chunked body): a C{Host} this service does not
answer to, an untrusted C{Origin}, a body announced larger than
C{[server] max_body}, or a body without a valid token when authentication
is on, is answered at once with its JSON error, and nothing of the body is
kept. A chunked body is counted as it arrives and refused once it grows too
large.

After a refusal the connection is closed in stages, as HTTP asks of a
server that stops reading: the answer is sent and our side shut for
writing, then whatever the client still sends is read and thrown away, for
at most L{LINGER_SECONDS} and L{LINGER_BYTES}, so that closing does not
reset the connection before the client has read the answer.

L{GatedSite} is the C{Site} serving such requests; it reads the current
configuration on every request, so that a reload takes effect at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from email import message_from_bytes
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from slaveapi.config import Config
from slaveapi.web.auth import authenticate
from slaveapi.web.errors import HTTPProblem
from slaveapi.web.screening import Arrival, check_host, check_length, check_origin

#: Seconds a refused connection is read from, and thrown away, before it is closed.
LINGER_SECONDS = 2.0

#: Bytes thrown away after a refusal before the connection is cut regardless.
LINGER_BYTES = 1024 * 1024

#: Seconds a connection may sit idle, or trickle in a request, before it is closed
#: (twisted.web's default is 12 hours). Not counted while a request is answered.
IDLE_TIMEOUT = 120.0

_PREFLIGHT_MAX_AGE = b"600"

#: Reason phrases twisted.web does not know.
_REASONS = {421: b"Misdirected Request"}


class GatedRequest(Request):
    """
    A request screened on its headers; see the module docstring.

    @ivar refusal: the problem it was refused with, if it was.
    """

    _log = Logger()
    refusal: HTTPProblem | None = None
    _received = 0
    _max_body = 0
    _discarded = 0
    _linger: Any = None
    _preflight = False

    def gotLength(self, length: int | None) -> None:
        """Screen the headers; go on to read the body only if they pass."""
        problem = self._screen(length)
        if problem is not None:
            self._refuse(problem)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        self._received += len(data)
        problem = check_length(None, self._received, self._max_body)
        if problem is not None:
            self._refuse(problem)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refusal is not None:
            return
        if command == b"POST" and not self._readable_multipart():
            # twisted.web would answer a bare 400 and close, before any resource, with no JSON body.
            self._refuse(HTTPProblem(400, "bad_request", "body: expected multipart/form-data with at least one part"))
            return
        super().requestReceived(command, path, version)

    def _readable_multipart(self) -> bool:
        """False for a multipart/form-data body twisted.web cannot parse (it sees no parts in it)."""
        ctype = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        if ctype.split(b";", 1)[0].strip().lower() != b"multipart/form-data" or self.content is None:
            return True
        # twisted.web takes the body's length from where the content file stands: leave it there.
        end = self.content.tell()
        self.content.seek(0)
        content = self.content.read()
        self.content.seek(end)
        if not content:
            return True
        # As twisted.web.http._getMultiPartArgs parses it (the body is at most [server] max_body).
        return message_from_bytes(b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n" + content).is_multipart()

    def process(self) -> None:
        """Answer a CORS preflight from a trusted origin here; hand anything else to the app."""
        if self._preflight and self.method == b"OPTIONS":
            self.setResponseCode(204)
            self.finish()
            return
        super().process()

    def connectionLost(self, reason: Failure) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def _screen(self, length: int | None) -> HTTPProblem | None:
        config: Config = self.channel.site.config()  # type: ignore[attr-defined]  # set by Site.buildProtocol
        self._max_body = config.server.max_body
        arrival = _arrival(self.getHost(), self.isSecure())
        headers = self.requestHeaders
        host, problem = check_host(headers.getRawHeaders(b"host"), arrival, config.server.server_names)
        if problem is not None:
            return problem
        foreign, problem = check_origin(headers.getRawHeaders(b"origin"), host, arrival, config.auth.allowed_origins)
        if problem is not None:
            return problem
        if length != 0:
            # Nothing of a body is read for a stranger.
            try:
                authenticate(self, config.credentials.api_tokens, required=True)
            except HTTPProblem as unauthorized:
                return unauthorized
        problem = check_length(length, 0, self._max_body)
        if problem is not None:
            return problem
        if foreign is not None:
            self._allow_cross_origin(str(foreign).encode("ascii"))
        return None

    def _allow_cross_origin(self, origin: bytes) -> None:
        """CORS answers for an origin in C{[auth] allowed_origins}, preflights included."""
        self.responseHeaders.setRawHeaders(b"Access-Control-Allow-Origin", [origin])
        self.responseHeaders.setRawHeaders(b"Vary", [b"Origin"])
        if self.requestHeaders.hasHeader(b"access-control-request-method"):
            self._preflight = True
            self.responseHeaders.setRawHeaders(b"Access-Control-Allow-Methods", [b"GET, POST"])
            self.responseHeaders.setRawHeaders(b"Access-Control-Allow-Headers", [b"Authorization, Content-Type"])
            self.responseHeaders.setRawHeaders(b"Access-Control-Max-Age", [_PREFLIGHT_MAX_AGE])

    def _refuse(self, problem: HTTPProblem) -> None:
        """Answer C{problem} now, then throw away the rest of the connection and close it."""
        self.refusal = problem
        # Headers are in: no "100 Continue" is to follow the answer.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        body = json.dumps({"error": problem.error, "msg": problem.msg}, sort_keys=True).encode("utf-8")
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"Content-Length": [b"%d" % len(body)],
                b"Connection": [b"close"],
            }
        )
        if problem.status == 401:
            headers.setRawHeaders(b"WWW-Authenticate", [b'Bearer realm="slaveapi"'])
        reason = _REASONS.get(problem.status) or RESPONSES.get(problem.status, b"Refused")
        channel.writeHeaders(b"HTTP/1.1", b"%d" % problem.status, reason, headers)
        channel.write(body)
        self._log.info(
            "Refused a request from {peer}: {status} {error}: {msg}",
            peer=str(self.getClientAddress()),
            status=problem.status,
            error=problem.error,
            msg=problem.msg,
        )
        # Everything the client still sends goes here, not to the HTTP parser
        # (twisted.web does the same with data after a non-persistent request).
        channel.dataReceived = channel.rawDataReceived = channel.lineReceived = self._discard  # type: ignore[method-assign]  # no hook for it
        transport = cast(ITCPTransport, channel.transport)
        shut_writing = getattr(transport, "loseWriteConnection", None)
        if shut_writing is None:
            channel.loseConnection()
            return
        shut_writing()
        self._linger = channel.callLater(LINGER_SECONDS, transport.abortConnection)

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            cast(ITCPTransport, self.channel.transport).abortConnection()


class GatedSite(Site):
    """
    A C{Site} of L{GatedRequest}s.

    @param config: returns the current configuration.
    """

    requestFactory = GatedRequest
    displayTracebacks = False

    def __init__(self, resource: Any, config: Callable[[], Config], reactor: Any = None) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.config = config


def _arrival(local: IAddress, secure: bool) -> Arrival:
    if isinstance(local, (IPv4Address, IPv6Address)):
        return Arrival(local.host, local.port, secure)
    return Arrival(None, None, secure)
