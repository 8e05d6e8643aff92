"""
The Buildbot master client: asking a master to shut one of its workers down
gracefully, to pause or unpause it, and whether it is connected.

A slave's buildbot is stopped through the master it is attached to, because
that is the one way that also works on Windows and lets a running build
finish first. slavealloc names the master (L{MasterRecord}: fqdn and
C{http_port}); two kinds of master answer differently:

  - Buildbot 0.8 (C{0.8}): the web status's
    C{POST /buildslaves/<name>/shutdown}. It answers with a redirect (to the
    slave's page), which is never followed: the status code decides (2xx or
    3xx is accepted), except a redirect to C{authfail}, which is how 0.8
    refuses an action its authz does not allow.
  - Buildbot >= 1.0 (C{modern}): the data API's control call
    C{POST /api/v2/workers/<name>} with the JSON-RPC body
    C{{"jsonrpc": "2.0", "method": "stop", "params": {"reason": ...}, "id": 1}}
    (C{stop} is graceful; C{kill} is not and is never sent), with HTTP basic
    auth when C{[buildbot] username} and the credentials' C{buildbot_master}
    are both set.

Only a modern master can pause a worker (it finishes its running build and
takes no new ones) or say whether it is connected: the data API's JSON-RPC
C{pause} (C{params}: C{reason}) and C{unpause} controls on the same URL,
and C{GET /api/v2/workers/<name>}, whose one record has C{connected_to} (the
masters the worker is connected to, empty when it is not) and C{paused}.
The master applies a control after answering it, so a pause or an unpause
is read back from that record until it shows, bounded by the timeout. On a
0.8 master, pausing fails with a L{MasterError} saying so and
C{worker_connected} answers C{None}; a worker the data API does not know
(HTTP 404) is a L{MasterError}, never "not connected".

Which kind a master is comes from C{[masters]} (by fqdn or nickname), else
C{[buildbot] flavour}; C{auto} asks C{GET /api/v2} first: a JSON answer (or
a 401 or 403: the data API is there but wants credentials) means a modern
master, anything else means 0.8.

A master's name is resolved through SlaveAPI's own DNS client (so that lab
names work as production names do) and the request goes to that address
with the master's name in the C{Host} header. Every call is bounded by
C{[http] timeout}; every failure is a L{MasterError}, one line naming the
URL (with the master's name, never an address or a password) and the status.

slavealloc's master records carry a port but no scheme: a master is reached
over C{https} when C{[masters]} says so for it (by fqdn or nickname), else
as C{[buildbot] scheme} says (C{http} by default). Over C{https} the
connection still goes to the address SlaveAPI's DNS gave, and the
certificate is checked against the master's name. Basic auth is never sent
over plain C{http} unless C{[buildbot] allow_plain_http} is set: without it
the request is not sent at all and the call fails saying so.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from treq.client import HTTPClient
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from slaveapi.clients._bounded import poll_until, within
from slaveapi.clients._errors import ClientError, ClientTimeout
from slaveapi.clients.dns import DNSClient, DNSError
from slaveapi.clients.http import Answer, FetchFailed, fetch
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.config import BuildbotConfig, Secret
from slaveapi.interfaces import IMaster

#: Buildbot 0.8's web status.
FLAVOUR_08 = "0.8"
#: Buildbot >= 1.0's data API.
FLAVOUR_MODERN = "modern"
#: Ask the master which one it is.
FLAVOUR_AUTO = "auto"

#: A master's answers are short; anything longer is cut off and refused.
_MAX_BODY = 1024 * 1024
_MAX_DETAIL = 200
#: Seconds between reads of a worker's record while confirming a pause or an unpause.
_CONFIRM_EVERY = 0.5


class MasterError(ClientError):
    """Asking a master failed; the message is one line naming the URL and the status."""


class MasterTimeout(MasterError, ClientTimeout):
    """A master did not answer within the timeout."""


def cannot_on_08(master: MasterRecord, verb: str) -> MasterError:
    """The error of asking Buildbot 0.8 master C{master} to C{verb} (C{pause}, C{unpause}) a worker."""
    return MasterError(f"master {master.nickname} runs Buildbot 0.8, which cannot {verb} a worker")


@dataclass(frozen=True)
class ShutdownRequested:
    """
    A master accepted a graceful shutdown request.

    @ivar url: the URL asked (with the master's name, as shown in messages).
    @ivar flavour: L{FLAVOUR_08} or L{FLAVOUR_MODERN}, as actually used.
    @ivar status: the HTTP status the master answered with.
    """

    url: str
    flavour: str
    status: int


@implementer(IMaster)
class MasterClient:
    """
    Asks Buildbot masters to shut workers down gracefully.

    @param config: C{[buildbot]} and C{[masters]}.
    @param password: the credentials' C{buildbot_master}, sent with
        C{config.username} as basic auth to modern masters.
    @param http: treq's C{HTTPClient} (anything with its C{request} API),
        for masters reached over plain http.
    @param dns: resolves masters' names.
    @param timeout: seconds allowed for one whole call.
    @param reactor: provides C{callLater} for the timeout.
    @param tls_policy: checks masters' certificates over https; by
        default against the system's trusted CAs.
    """

    _log = Logger()

    def __init__(
        self,
        config: BuildbotConfig,
        password: Secret | None,
        http: Any,
        dns: DNSClient,
        timeout: float,
        reactor: Any,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        self._config = config
        self._password = password
        self._http = http
        self._dns = dns
        self._timeout = timeout
        self._reactor = reactor
        self._tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def configured_flavour(self, master: MasterRecord) -> str:
        """The flavour configuration gives C{master}: C{[masters]} by fqdn or nickname, else C{[buildbot]}."""
        overrides = {name.lower(): flavour for name, flavour in self._config.masters.items()}
        for name in (master.fqdn, master.nickname):
            flavour = overrides.get(name.lower())
            if flavour is not None:
                return flavour
        return self._config.flavour

    def scheme(self, master: MasterRecord) -> str:
        """C{http} or C{https}: C{[masters]} by fqdn or nickname, else C{[buildbot] scheme}."""
        overrides = {name.lower(): scheme for name, scheme in self._config.master_schemes.items()}
        for name in (master.fqdn, master.nickname):
            scheme = overrides.get(name.lower())
            if scheme is not None:
                return scheme
        return self._config.scheme

    async def flavour(self, master: MasterRecord) -> str:
        """
        L{FLAVOUR_08} or L{FLAVOUR_MODERN}: as configured, or for C{auto} as
        the master's C{GET /api/v2} shows.

        @raise MasterError: the master cannot be reached to ask.
        """
        flavour = self.configured_flavour(master)
        if flavour != FLAVOUR_AUTO:
            return flavour
        answer = await self._call(master, "GET", "/api/v2")
        # A data API answers JSON, or refuses us (401, 403) where 0.8 has nothing (404).
        has_api = (200 <= answer.status < 300 and _json_object(answer.body) is not None) or answer.status in (401, 403)
        detected = FLAVOUR_MODERN if has_api else FLAVOUR_08
        self._log.info(
            "master {master}: GET /api/v2 answered HTTP {status}: treating it as Buildbot {flavour}",
            master=master.nickname,
            status=answer.status,
            flavour=detected,
        )
        return detected

    async def shutdown_worker(self, master: MasterRecord, worker: str, reason: str) -> ShutdownRequested:
        """
        Ask C{master} to shut C{worker} down gracefully (after its running build).

        @param reason: why, for a modern master's records.
        @raise MasterError: the master could not be asked, or refused.
        """
        flavour = await self.flavour(master)
        if flavour == FLAVOUR_08:
            path = f"/buildslaves/{quote(worker, safe='')}/shutdown"
            answer = await self._call(master, "POST", path)
            url = self.url(master, path)
            if 300 <= answer.status < 400 and _is_authfail(answer.location):
                raise MasterError(
                    f"master {master.nickname}: POST {url} was refused: HTTP {answer.status} redirect to authfail"
                )
            if not 200 <= answer.status < 400:
                raise MasterError(f"master {master.nickname}: POST {url} failed: {_status(answer)}")
            return ShutdownRequested(url, flavour, answer.status)

        url, status = await self._control(master, worker, "stop", {"reason": reason})
        return ShutdownRequested(url, flavour, status)

    async def worker_connected(self, master: MasterRecord, worker: str) -> bool | None:
        """
        Whether C{worker} is connected to the master (or, in a cluster, to
        any of its masters) now: the data API's worker record lists where it
        is connected in C{connected_to}.

        @return: None for a Buildbot 0.8 master, which cannot say.
        @raise MasterError: the master could not be asked, or does not know
            C{worker} (that is not "disconnected": nothing is known of it).
        """
        if await self.flavour(master) == FLAVOUR_08:
            return None
        record = await self._worker_record(master, worker)
        return bool(record.get("connected_to"))

    async def pause_worker(self, master: MasterRecord, worker: str, reason: str) -> None:
        """
        Pause C{worker}: it finishes its running build but takes no new ones.
        Returns once the master reports it paused (read back every
        L{_CONFIRM_EVERY} seconds, for at most the timeout).

        @param reason: kept by the master as the worker's C{pause_reason}.
        @raise MasterError: a Buildbot 0.8 master (it cannot pause a worker),
            the master could not be asked or refused, or it does not report
            the worker paused in time.
        """
        await self._require_modern(master, "pause")
        await self._control(master, worker, "pause", {"reason": reason})
        await self._confirm_paused(master, worker, True)

    async def unpause_worker(self, master: MasterRecord, worker: str) -> None:
        """
        Undo L{pause_worker}: C{worker} takes builds again. Returns once the
        master reports it not paused.

        @raise MasterError: as L{pause_worker}'s.
        """
        await self._require_modern(master, "unpause")
        await self._control(master, worker, "unpause", {})
        await self._confirm_paused(master, worker, False)

    async def _require_modern(self, master: MasterRecord, verb: str) -> None:
        if await self.flavour(master) == FLAVOUR_08:
            raise cannot_on_08(master, verb)

    async def _control(
        self, master: MasterRecord, worker: str, method: str, params: dict[str, Any]
    ) -> tuple[str, int]:
        """
        The data API's JSON-RPC control C{method} on C{worker}; the URL asked
        and the HTTP status, when the master accepted it.

        @raise MasterError: the master could not be asked or refused.
        """
        path = _worker_path(worker)
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
        answer = await self._call(master, "POST", path, body)
        url = self.url(master, path)
        reply = _json_object(answer.body)
        error = reply.get("error") if reply is not None else None
        if not 200 <= answer.status < 300:
            raise MasterError(f"master {master.nickname}: POST {url} failed: {_status(answer)}{_rpc_detail(error)}")
        if reply is None:
            raise MasterError(f"master {master.nickname}: POST {url} failed: HTTP {answer.status}, answer is not JSON")
        if error is not None:
            raise MasterError(f"master {master.nickname}: POST {url} failed: HTTP {answer.status}{_rpc_detail(error)}")
        return url, answer.status

    async def _worker_record(self, master: MasterRecord, worker: str) -> dict[str, Any]:
        """
        The data API's record of C{worker} (C{GET /api/v2/workers/<name>}):
        C{{"workers": [{...}], "meta": {...}}}.

        @raise MasterError: the master could not be asked, does not know
            C{worker} (HTTP 404), or answered something else than one record.
        """
        path = _worker_path(worker)
        answer = await self._call(master, "GET", path)
        url = self.url(master, path)
        if answer.status == 404:
            raise MasterError(f"master {master.nickname}: GET {url}: the master does not know worker {worker}")
        if not 200 <= answer.status < 300:
            raise MasterError(f"master {master.nickname}: GET {url} failed: {_status(answer)}")
        reply = _json_object(answer.body)
        records = reply.get("workers") if reply is not None else None
        if not (isinstance(records, list) and len(records) == 1 and isinstance(records[0], dict)):
            raise MasterError(
                f"master {master.nickname}: GET {url} failed: HTTP {answer.status}, answer is not a worker record"
            )
        record: dict[str, Any] = records[0]
        return record

    async def _confirm_paused(self, master: MasterRecord, worker: str, paused: bool) -> None:
        """
        Read the worker's record back until its C{paused} is C{paused}: the
        master applies a control asynchronously, after answering it.
        """
        state = "paused" if paused else "not paused"
        url = self.url(master, _worker_path(worker))

        async def reported() -> bool:
            return (await self._worker_record(master, worker)).get("paused") is paused

        def unconfirmed() -> MasterError:
            return MasterError(
                f"master {master.nickname}: GET {url} did not report worker {worker} {state} "
                f"within {self._timeout:g}s"
            )

        await poll_until(
            self._reactor, reported, _CONFIRM_EVERY, self._timeout, f"{worker} {state}", timeout_error=unconfirmed
        )
        self._log.info(
            "master {master}: worker {worker} is {state}", master=master.nickname, worker=worker, state=state
        )

    def url(self, master: MasterRecord, path: str) -> str:
        """C{path} on C{master}'s web server, by name (as messages show it)."""
        return f"{self.scheme(master)}://{master.fqdn}{_port_suffix(master)}{path}"

    def _auth_header(self) -> dict[bytes, list[bytes]]:
        if not self._config.username or self._password is None:
            return {}
        pair = f"{self._config.username}:{self._password.reveal()}".encode()
        return {b"Authorization": [b"Basic " + base64.b64encode(pair)]}

    async def _call(self, master: MasterRecord, method: str, path: str, body: Any = None) -> Answer:
        """One request to C{master}, bounded by the timeout; any failure is a L{MasterError}."""
        url = self.url(master, path)
        auth = self._auth_header()
        secure = self.scheme(master) == "https"
        if auth and not secure and not self._config.allow_plain_http:
            raise MasterError(
                f"master {master.nickname}: {method} {url} not sent: it would carry the basic-auth password "
                f"over plain http; reach {master.nickname} over https ([masters] {master.nickname} = https) "
                "or set [buildbot] allow_plain_http = true"
            )
        if master.http_port is None:
            raise MasterError(f"master {master.nickname}: {method} {url} failed: slavealloc gives it no http_port")
        try:
            host = await self._dns.lookup_host(master.fqdn)
        except DNSError as error:
            raise MasterError(f"master {master.nickname}: {method} {url} failed: {error}") from None
        if host is None:
            raise MasterError(f"master {master.nickname}: {method} {url} failed: {master.fqdn} is not in DNS")

        headers = {b"Host": [f"{master.fqdn}{_port_suffix(master)}".encode("ascii")], **auth}
        data = None
        if body is not None:
            headers[b"Content-Type"] = [b"application/json"]
            data = json.dumps(body).encode("utf-8")
        if method == "GET" or body is not None:
            headers[b"Accept"] = [b"application/json"]
        if secure:
            # The name stays in the URL for the certificate check; the address is pinned below.
            target = url
            http = HTTPClient(
                Agent.usingEndpointFactory(
                    self._reactor, _PinnedAddress(self._reactor, host.ip, self._tls_policy, self._timeout)
                )
            )
        else:
            target = f"http://{host.ip}:{master.http_port}{path}"
            http = self._http

        prefix = f"master {master.nickname}: {method} {url} failed: "
        try:
            answer = await within(
                self._reactor,
                self._timeout,
                fetch(http, method, target, headers=Headers(headers), data=data, max_body=_MAX_BODY),
                f"master {master.nickname}: {method} {url}",
                timeout_error=lambda: MasterTimeout(f"{prefix}timed out after {self._timeout:g}s"),
            )
        except FetchFailed as failed:
            raise MasterError(prefix + failed.reason) from None
        self._log.info(
            "master {master}: {method} {url} answered HTTP {status}",
            master=master.nickname,
            method=method,
            url=url,
            status=answer.status,
        )
        return answer


@implementer(IAgentEndpointFactory)
class _PinnedAddress:
    """
    Connects to the address SlaveAPI's DNS gave for a master, over TLS
    checked against the name in the URL (the master's fqdn).
    """

    def __init__(self, reactor: Any, address: str, policy: IPolicyForHTTPS, timeout: float) -> None:
        self._reactor = reactor
        self._address = address
        self._policy = policy
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        tcp = HostnameEndpoint(self._reactor, self._address.encode("ascii"), uri.port, timeout=self._timeout)
        return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tcp)


def _worker_path(worker: str) -> str:
    """The data API's path of C{worker}, by name."""
    return f"/api/v2/workers/{quote(worker, safe='')}"


def _port_suffix(master: MasterRecord) -> str:
    return f":{master.http_port}" if master.http_port else ""


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The answer as a JSON object, or None when it is not one."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _is_authfail(location: str) -> bool:
    """Whether a redirect goes to 0.8's C{authfail} page (its authz refused the action)."""
    path = urlsplit(location).path.rstrip("/")
    return path.rsplit("/", 1)[-1] == "authfail"


def _status(answer: Answer) -> str:
    return f"HTTP {answer.status} {answer.phrase}".rstrip()


def _rpc_detail(error: Any) -> str:
    """A JSON-RPC error object as a short suffix for a message."""
    if not isinstance(error, dict):
        return ""
    message = " ".join(str(error.get("message", "")).split())[:_MAX_DETAIL]
    code = error.get("code")
    return f" (JSON-RPC error {code}: {message})" if message else f" (JSON-RPC error {code})"
