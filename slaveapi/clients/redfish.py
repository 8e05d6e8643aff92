"""
Redfish client: read and set a machine's power and next boot through its BMC
over Redfish (DMTF's HTTPS + JSON management API).

It is the HTTP sibling of L{slaveapi.clients.ipmi}: newer BMCs speak Redfish
better than IPMI (or only Redfish), and Redfish says which reset kinds and
boot targets a BMC supports, so a request it would refuse is refused here,
with the BMC's own list, before anything is sent.

Each public call is one short conversation with one BMC:

  1. C{GET /redfish/v1} (the service root; unauthenticated on most BMCs) for
     the links to C{Systems} and to the session collection.
  2. Log in: C{POST} to the session collection (C{Links.Sessions}, else
     C{SessionService/Sessions}) and use the C{X-Auth-Token} it answers. A
     service without sessions, or one that refuses to open one (any 4xx or
     5xx but 401), is used with HTTP basic authentication instead.
  3. The C{Systems} collection, then the one ComputerSystem: the member
     whose id is C{[redfish] system_id}, else the only member. A BMC with
     several systems and no C{system_id} is an error naming their ids.
  4. The call itself (read, reset, set or read the boot override).
  5. C{DELETE} the session, bounded, best effort: a failure is logged, never
     raised (the BMC expires the session anyway).

Every HTTP call is bounded by C{[redfish] timeout}; a connection that cannot
be set up (refused, connect timed out) is tried up to C{retries} more times.
One public call is therefore bounded by at most six HTTP calls of
C{(retries + 1) * timeout} each. Nothing is cached between calls, except
which BMCs speak Redfish at all (L{RedfishClient.speaks_redfish}, below).

Which protocol a BMC speaks is discovered once and remembered in the client
(L{BMCDiscovery}): the first L{RedfishClient.speaks_redfish} for a BMC asks
its service root (L{RedfishClient.available}); the answer, yes or no, is kept
in a least-recently-used memo of at most L{DISCOVERY_MEMO_SIZE} BMCs, so a
wave of reboots asks each BMC once, and a BMC that does not speak Redfish
(it refuses the connection, or worse, lets it time out) costs that only
once. The memo is in the client because the client outlives one action (a
reload keeps the client, and its memo, when the C{[redfish]} settings did
not change), and the caller says when an answer went stale:
L{RedfishClient.forget} after a reset or a power cycle through that BMC
failed, so the next use discovers it again (a BMC upgraded to Redfish, or
one that stopped answering).

L{RedfishClient.powercycle} is the one power cycle through a BMC that
the C{reboot} and C{power_cycle} actions share: C{ForceOff}, the power read
back off, C{On}, the power read back on, each wait bounded by C{[redfish]
power_timeout}. Like the IPMI client's, the part from C{ForceOff} on runs
as its own task (L{Unfinished}) that a cancelled caller does not stop, so a
timeout or a service stop never leaves a machine switched off halfway, and
L{RedfishClient.close} waits (bounded) for it.

Errors are L{RedfishError} (L{RedfishTimeout}, L{RedfishUnavailable},
L{RedfishAuthError}): one line C{"Redfish <bmc>: <step> failed: <why>"}; the
password is never in a message or a log line.

TLS: certificates are verified, against C{ca_bundle} when given, else the
system's trust store. C{verify = no} turns verification off for the whole
section and logs a warning once, when the client is made.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, DeferredList
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, trustRootFromCertificates
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from slaveapi.clients._boot import BootOverride
from slaveapi.clients._bounded import poll_until, settled, within
from slaveapi.clients._errors import ClientError, ClientTimeout, Unreachable
from slaveapi.clients._unfinished import Unfinished
from slaveapi.clients.http import Answer, FetchFailed, fetch
from slaveapi.config import RedfishConfig, Secret
from slaveapi.interfaces import IRedfish

_log = Logger(namespace="slaveapi.clients.redfish")

#: Redfish C{PowerState} values and what they mean for us: power is "off"
#: only once the BMC says C{Off}; while a machine is powering on or off (or
#: paused) it still has power.
POWER_STATES: Final[Mapping[str, str]] = {
    "On": "on",
    "PoweringOn": "on",
    "PoweringOff": "on",
    "Paused": "on",
    "Off": "off",
}

#: The boot targets L{RedfishClient.set_boot_once} accepts.
BOOT_TARGETS: Final = ("Pxe", "Hdd", "BiosSetup")

#: Health values reported by L{RedfishClient.health}.
HEALTH_VALUES: Final = ("OK", "Warning", "Critical")

#: Reasons from L{fetch} that mean no connection was set up (safe to try again).
_SETUP_FAILURES: Final = ("connection refused", "connect timed out", "connection failed:")

#: How many BMCs L{BMCDiscovery} remembers (the least recently used is forgotten first).
DISCOVERY_MEMO_SIZE: Final = 4096

#: The resets L{RedfishClient.powercycle} needs the BMC to advertise.
CYCLE_RESETS: Final = ("ForceOff", "On")

#: Slack on top of the computed bound of a power cycle's tail that L{RedfishClient.close} waits for.
_CLOSE_SLACK: Final = 5.0

#: The largest answer read from a BMC.
_MAX_BODY: Final = 4 * 1024 * 1024
#: The most characters of a BMC's own words quoted in an error.
_MAX_DETAIL: Final = 200
_ROOT: Final = "/redfish/v1"


class RedfishError(ClientError):
    """A Redfish call failed; the message is one line naming the BMC, the step and why."""

    def __init__(self, bmc: str, step: str, reason: str, *, status: int | None = None) -> None:
        self.bmc = bmc
        self.step = step
        self.reason = " ".join(reason.split())
        self.status = status
        super().__init__(f"Redfish {bmc}: {step} failed: {self.reason}")

    def __str__(self) -> str:
        return str(self.args[0])


class RedfishTimeout(RedfishError, ClientTimeout):
    """The BMC did not answer one HTTP call within C{[redfish] timeout}."""


class RedfishUnavailable(RedfishError, Unreachable):
    """No connection to the BMC could be made (after every retry), or its TLS handshake failed."""


class RedfishAuthError(RedfishError):
    """The BMC refused our credentials (HTTP 401)."""


def check_cycle_resets(host: str, offered: Sequence[str]) -> None:
    """
    Refuse a power cycle through a BMC that does not advertise both
    C{ForceOff} and C{On} (L{CYCLE_RESETS}).

    @param offered: the reset kinds the BMC advertises.
    @raise RedfishError: step C{"choosing a reset"}, naming what it offers.
    """
    if not all(kind in offered for kind in CYCLE_RESETS):
        raise RedfishError(
            host, "choosing a reset", f"a power cycle needs ForceOff and On; the BMC offers {_listed(offered)}"
        )


@dataclass(frozen=True)
class _Login:
    """How requests of one conversation authenticate, and the session to delete after."""

    headers: Mapping[str, str]
    auth: tuple[str, str] | None
    session_url: str | None


@dataclass(frozen=True)
class _System:
    """The ComputerSystem resource acted on: its URL and its JSON."""

    url: str
    data: Mapping[str, Any]


class BMCDiscovery:
    """
    Whether each BMC speaks Redfish, found out once by C{probe} and then
    remembered, in a least-recently-used memo of at most C{size} BMCs.

    @param probe: answers whether the BMC at an address speaks Redfish
        (L{RedfishClient.available}: False rather than an error).
    """

    def __init__(self, probe: Callable[[str], Awaitable[bool]], size: int = DISCOVERY_MEMO_SIZE) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._probe = probe
        self._size = size
        self._known: OrderedDict[str, bool] = OrderedDict()

    async def speaks_redfish(self, host: str) -> bool:
        """The remembered answer for C{host}, else C{probe}'s (then remembered)."""
        known = self._known.get(host)
        if known is not None:
            self._known.move_to_end(host)
            return known
        answer = await self._probe(host)
        self._known[host] = answer
        self._known.move_to_end(host)
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        _log.info("Redfish {bmc}: speaks Redfish: {answer} (remembered)", bmc=host, answer=answer)
        return answer

    def forget(self, host: str) -> None:
        """Discover C{host} again at its next use."""
        self._known.pop(host, None)

    def __len__(self) -> int:
        return len(self._known)


def redfish_login(
    config: RedfishConfig, ipmi_username: str, ipmi: Secret | None, redfish: Secret | None
) -> tuple[str, Secret | None]:
    """
    The user and password to log in to BMCs with: C{[redfish] username}
    else C{[slaves] ipmi_username}; the credentials' C{redfish} else C{ipmi}.
    """
    return (config.username or ipmi_username, redfish if redfish is not None else ipmi)


def tls_policy(config: RedfishConfig) -> IPolicyForHTTPS:
    """
    How the BMCs' certificates are checked: against C{ca_bundle} (every
    certificate in that PEM file is a trusted root), else the system's
    trust store; not at all with C{verify = no} (a warning is logged).

    @raise RedfishError: C{ca_bundle} cannot be read or holds no certificate.
    """
    if not config.verify:
        _log.warn("Redfish: [redfish] verify = no: BMC certificates are not checked")
        return _NoVerification()
    if config.ca_bundle is None:
        return BrowserLikePolicyForHTTPS()
    try:
        with open(config.ca_bundle, "rb") as handle:
            pem = handle.read()
    except OSError as error:
        raise RedfishError(config.ca_bundle, "reading ca_bundle", error.strerror or type(error).__name__) from None
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception:
        raise RedfishError(config.ca_bundle, "reading ca_bundle", "not a PEM certificate bundle") from None
    if not certificates:
        raise RedfishError(config.ca_bundle, "reading ca_bundle", "no certificate in the file")
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))


@implementer(IPolicyForHTTPS)
class _NoVerification:
    """A policy that accepts any certificate for any name (C{verify = no})."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _Unverified(hostname)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS connections that check nothing but still send the name (SNI)."""

    def __init__(self, hostname: bytes) -> None:
        self._hostname = hostname
        self._context = CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        name = self._hostname.decode("ascii", "replace")
        if not name.replace(".", "").isdigit() and ":" not in name:
            connection.set_tlsext_host_name(self._hostname)
        return connection


def make_redfish_http(reactor: Any, config: RedfishConfig) -> tuple[HTTPClient, HTTPConnectionPool]:
    """
    A treq client for BMCs on a pool of its own (at most two idle connections
    kept per BMC, for 30 s), with the TLS policy of L{tls_policy}.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    pool.cachedConnectionTimeout = 30
    agent = Agent(reactor, contextFactory=tls_policy(config), pool=pool)
    return HTTPClient(agent), pool


class _Capture:
    """Passes requests on to treq and keeps the last response's headers."""

    def __init__(self, http: Any) -> None:
        self._http = http
        self.headers: Any = None

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, url, **kwargs)
        self.headers = response.headers
        return response


#: What runs inside one conversation, once the system is known.
_Work = Callable[[_Login, _System], Awaitable[None]]


@implementer(IRedfish)
class RedfishClient:
    """
    Power state, health, resets and one-time boot overrides through BMCs' Redfish services.

    @param config: the C{[redfish]} section.
    @param username: the BMC user (see L{redfish_login}).
    @param password: its password; C{None} sends an empty one.
    @param reactor: provides C{callLater}; every timeout runs on it.
    @param http: a treq client (or anything with its C{request} API, such as
        L{treq.testing.StubTreq}); by default one of L{make_redfish_http}.
    """

    def __init__(
        self,
        config: RedfishConfig,
        username: str,
        password: Secret | None,
        reactor: Any,
        *,
        http: Any = None,
    ) -> None:
        self._config = config
        self._username = username
        self._password = password if password is not None else Secret("")
        self._reactor = reactor
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            http, self._pool = make_redfish_http(reactor, config)
        self._http = http
        self._discovery = BMCDiscovery(self.available)
        # The off-to-on parts of running power cycles; close() waits for them.
        self._unfinished = Unfinished(_log)

    # --- public calls ----------------------------------------------------------

    async def available(self, host: str) -> bool:
        """
        Whether the BMC's Redfish service root answers (False rather than an
        error); a root that wants credentials (401) answers too.
        """
        try:
            root = await self._call(host, "reading the service root", "GET", _ROOT)
        except RedfishAuthError:
            return True
        except RedfishError as error:
            _log.info("Redfish {bmc}: not available: {reason}", bmc=host, reason=error.reason)
            return False
        return isinstance(root, dict)

    async def speaks_redfish(self, host: str) -> bool:
        """Whether the BMC speaks Redfish: L{available}, asked once per BMC and remembered (see L{BMCDiscovery})."""
        return await self._discovery.speaks_redfish(host)

    def forget(self, host: str) -> None:
        """Forget what L{speaks_redfish} found for C{host} (after a failure through it)."""
        self._discovery.forget(host)

    async def reset_types(self, host: str) -> tuple[str, ...]:
        """
        The C{ResetType} values the system's C{ComputerSystem.Reset} action
        advertises (from the action, else its C{@Redfish.ActionInfo}).

        @raise RedfishError: the system offers no reset, or lists no kinds.
        """
        found: list[tuple[str, ...]] = []

        async def read(login: _Login, system: _System) -> None:
            found.append(await self._allowed_resets(host, login, system, "reading the reset types"))

        await self._with_system(host, read)
        return found[0]

    async def power_state(self, host: str) -> str:
        """C{"on"} or C{"off"} (see L{POWER_STATES}); an unknown C{PowerState} is a L{RedfishError}."""
        system = await self._with_system(host, None)
        raw = system.data.get("PowerState")
        if not isinstance(raw, str) or raw not in POWER_STATES:
            raise RedfishError(host, "reading the power state", f"unknown PowerState {_quoted(raw)}")
        return POWER_STATES[raw]

    async def health(self, host: str) -> str | None:
        """
        The system's C{Status.HealthRollup} (which covers its parts), else
        its C{Status.Health}: C{"OK"}, C{"Warning"}, C{"Critical"}, or
        C{None} when the BMC reports neither.
        """
        system = await self._with_system(host, None)
        status = system.data.get("Status")
        if not isinstance(status, dict):
            return None
        # The DMTF schema spells it HealthRollup; sushy-emulator (and some BMCs) HealthRollUp.
        for key in ("HealthRollup", "HealthRollUp", "Health"):
            value = status.get(key)
            if value in HEALTH_VALUES:
                return str(value)
        return None

    async def reset(self, host: str, reset_type: str) -> None:
        """
        C{ComputerSystem.Reset} with C{reset_type} (C{On}, C{ForceOff},
        C{ForceRestart}, ...), only when the BMC advertises it.

        @raise RedfishError: the BMC offers no reset, or not this kind (the
            message names the kinds it offers), or refused the request.
        """
        await self._with_system(host, lambda login, system: self._reset(host, login, system, reset_type))

    async def set_boot_once(self, host: str, target: str) -> None:
        """
        Boot the system from C{target} (C{Pxe}, C{Hdd} or C{BiosSetup}) at its
        next boot only: PATCH C{Boot.BootSourceOverrideTarget} with
        C{BootSourceOverrideEnabled: Once}, refused when the BMC lists its
        allowed targets and C{target} is not one.
        """
        if target not in BOOT_TARGETS:
            raise ValueError(f"boot target {target!r}: expected one of {', '.join(BOOT_TARGETS)}")
        await self._with_system(host, lambda login, system: self._boot_once(host, login, system, target))

    async def boot_override(self, host: str) -> BootOverride | None:
        """
        The boot target pending: the system's C{Boot.BootSourceOverrideTarget}
        (C{Pxe}, C{Hdd}, C{BiosSetup}, or another the BMC names) while
        C{BootSourceOverrideEnabled} is C{Once} (L{BootOverride.once}) or
        C{Continuous} (for every boot, the next one included: C{once} is
        false; some BMCs, sushy-emulator among them, keep a C{Once} request
        as C{Continuous}); C{None} when it is C{Disabled} (or absent), or
        the target is C{None}.

        @raise RedfishError: the override is unreadable.
        """
        step = "reading the boot override"
        system = await self._with_system(host, None)
        boot = system.data.get("Boot")
        if boot is None:
            return None
        if not isinstance(boot, dict):
            raise RedfishError(host, step, "Boot is not a JSON object")
        enabled = boot.get("BootSourceOverrideEnabled")
        target = boot.get("BootSourceOverrideTarget")
        if enabled in (None, "Disabled") or target in (None, "None"):
            return None
        if enabled not in ("Once", "Continuous"):
            raise RedfishError(host, step, f"unknown BootSourceOverrideEnabled {_quoted(enabled)}")
        if not isinstance(target, str) or not target:
            raise RedfishError(host, step, f"unknown BootSourceOverrideTarget {_quoted(target)}")
        return BootOverride(target, once=enabled == "Once")

    async def powercycle(self, host: str, progress: Callable[[str], None] | None = None) -> None:
        """
        Power-cycle the machine: C{ForceOff}, a wait until the power reads
        off, C{On}, a wait until it reads on; a machine already off is only
        powered on. Each wait reads the power state every C{[redfish]
        poll_interval} seconds for at most C{power_timeout}.

        Everything from the C{ForceOff} request on runs as its own task:
        cancelling the caller (an action's timeout, a service stop) raises
        C{CancelledError} here at once, but the machine is not left off: the
        power cycle finishes in the background, bounded, silently for
        C{progress}, and is logged. L{close} waits (bounded) for such power
        cycles first. A failed wait for off, and a C{ForceOff} request whose
        answer did not come, still send C{On} before the error is raised.

        @param progress: told short human-readable lines as steps happen
            (until the caller is cancelled).
        @raise RedfishError: the BMC does not advertise C{ForceOff} and
            C{On} (nothing is sent; see L{check_cycle_resets}), a request
            failed, or a power state was not reached in time.
        """
        check_cycle_resets(host, await self.reset_types(host))
        powered = await self.power_state(host) == "on"
        await self._unfinished.finish(
            lambda say: self._off_then_on(host, powered, say), progress, "Redfish {bmc}", bmc=host
        )

    async def close(self) -> None:
        """
        Wait (bounded) for power cycles whose callers were cancelled, then
        close the idle connections of the client's own pool.
        """
        pending = self._unfinished.pending()
        if pending:
            waiting = DeferredList(pending, consumeErrors=True)
            bound = self._tail_bound()
            try:
                await within(self._reactor, bound, settled(waiting), "Redfish: unfinished power cycles")
            except ClientTimeout:
                _log.warn("Redfish: power cycles still unfinished after {bound:g}s; closing anyway", bound=bound)
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # --- one power cycle -------------------------------------------------------------

    async def _off_then_on(self, host: str, powered: bool, say: Callable[[str], None]) -> None:
        """The power cycle from the C{ForceOff} request on (see L{powercycle})."""
        off_failed: RedfishError | None = None
        if powered:
            say("ForceOff requested")
            try:
                await self.reset(host, "ForceOff")
            except RedfishTimeout as unanswered:
                # The BMC may have acted on it: power on all the same.
                off_failed = unanswered
            if off_failed is None:
                try:
                    await self._wait_for(host, "off")
                except RedfishError as error:
                    off_failed = error
                else:
                    say("powered off")
            if off_failed is not None:
                say(f"{off_failed.step} failed ({off_failed.reason}); power on requested all the same")
        else:
            say("already off; power on requested")
        if off_failed is None and powered:
            say("power on requested")
        await self.reset(host, "On")
        await self._wait_for(host, "on")
        say("powered on")
        if off_failed is not None:
            raise off_failed

    async def _wait_for(self, host: str, state: str) -> None:
        """
        Read the power state until it is C{state}, bounded by C{power_timeout}.

        @raise RedfishError: it was not by then (step C{ForceOff} or C{On}),
            or a read failed.
        """
        timeout = self._config.power_timeout
        step, other = ("ForceOff", "on") if state == "off" else ("On", "off")

        async def reached() -> bool:
            return await self.power_state(host) == state

        await poll_until(
            self._reactor,
            reached,
            self._config.poll_interval,
            timeout,
            f"Redfish {host}: power {state}",
            timeout_error=lambda: RedfishError(host, step, f"the power was still {other} after {timeout:g}s"),
        )

    def _tail_bound(self) -> float:
        """How long the rest of one power cycle can take (see L{_off_then_on}), with slack."""
        config = self._config
        # One conversation: at most six HTTP calls, each tried up to retries + 1 times.
        conversation = 6 * (config.retries + 1) * config.timeout
        # Two resets, and per wait its bound plus the read under way at its end.
        return 2 * (conversation + config.power_timeout + conversation + config.poll_interval) + _CLOSE_SLACK

    # --- one conversation ------------------------------------------------------------

    async def _with_system(self, host: str, work: _Work | None) -> _System:
        """Discover the system, run C{work(login, system)} when given, log out; the system read."""
        root = await self._call(host, "reading the service root", "GET", _ROOT)
        if not isinstance(root, dict):
            raise RedfishError(host, "reading the service root", "answer is not a JSON object")
        login = await self._login(host, root)
        try:
            system = await self._find_system(host, login, root)
            if work is not None:
                await work(login, system)
            return system
        finally:
            await self._logout(host, login)

    async def _find_system(self, host: str, login: _Login, root: Mapping[str, Any]) -> _System:
        step = "finding the system"
        systems_url = _link(root.get("Systems"))
        if systems_url is None:
            raise RedfishError(host, step, "the service root has no Systems link")
        collection = await self._call(host, "reading the Systems collection", "GET", systems_url, login)
        members = [_link(member) for member in (collection or {}).get("Members") or []]
        urls = [url for url in members if url]
        ids = [url.rstrip("/").rsplit("/", 1)[-1] for url in urls]
        wanted = self._config.system_id
        if wanted is not None:
            if wanted not in ids:
                raise RedfishError(host, step, f"no system {wanted!r}; the BMC has {_listed(ids)}")
            url = urls[ids.index(wanted)]
        elif len(urls) == 1:
            url = urls[0]
        elif not urls:
            raise RedfishError(host, step, "the Systems collection is empty")
        else:
            raise RedfishError(host, step, f"{len(urls)} systems ({_listed(ids)}); set [redfish] system_id")
        data = await self._call(host, "reading the system", "GET", url, login)
        if not isinstance(data, dict):
            raise RedfishError(host, "reading the system", "answer is not a JSON object")
        return _System(url, data)

    async def _reset(self, host: str, login: _Login, system: _System, reset_type: str) -> None:
        step = f"reset {reset_type}"
        allowed = await self._allowed_resets(host, login, system, step)
        if reset_type not in allowed:
            raise RedfishError(host, step, f"not offered; the BMC allows {_listed(allowed)}")
        action = (system.data.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        target = action.get("target") or f"{system.url.rstrip('/')}/Actions/ComputerSystem.Reset"
        await self._call(host, step, "POST", str(target), login, body={"ResetType": reset_type})
        _log.info("Redfish {bmc}: reset {reset_type} sent", bmc=host, reset_type=reset_type)

    async def _allowed_resets(self, host: str, login: _Login, system: _System, step: str) -> tuple[str, ...]:
        """The reset kinds the system advertises; an error when it offers no reset or lists none."""
        action = (system.data.get("Actions") or {}).get("#ComputerSystem.Reset")
        if not isinstance(action, dict):
            raise RedfishError(host, step, "the system offers no ComputerSystem.Reset action")
        allowed = action.get("ResetType@Redfish.AllowableValues")
        info_url = action.get("@Redfish.ActionInfo")
        if allowed is None and isinstance(info_url, str):
            info = await self._call(host, "reading the reset action's parameters", "GET", info_url, login)
            for parameter in (info or {}).get("Parameters") or []:
                if isinstance(parameter, dict) and parameter.get("Name") == "ResetType":
                    allowed = parameter.get("AllowableValues")
        if not isinstance(allowed, list):
            raise RedfishError(host, step, "the BMC advertises no ResetType values")
        return tuple(str(value) for value in allowed)

    async def _boot_once(self, host: str, login: _Login, system: _System, target: str) -> None:
        step = f"boot override {target}"
        boot = system.data.get("Boot")
        allowed = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues") if isinstance(boot, dict) else None
        if isinstance(allowed, list) and target not in allowed:
            raise RedfishError(host, step, f"not offered; the BMC allows {_listed(allowed)}")
        body = {"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": "Once"}}
        await self._call(host, step, "PATCH", system.url, login, body=body)
        _log.info("Redfish {bmc}: next boot from {target}", bmc=host, target=target)

    async def _login(self, host: str, root: Mapping[str, Any]) -> _Login:
        """A session when the service offers and grants one, else basic authentication."""
        basic = _Login({}, (self._username, self._password.reveal()), None)
        sessions_url = _link((root.get("Links") or {}).get("Sessions"))
        if sessions_url is None and isinstance(root.get("SessionService"), dict):
            sessions_url = f"{_link(root['SessionService']) or _ROOT + '/SessionService'}/Sessions"
        if sessions_url is None:
            _log.debug("Redfish {bmc}: no session service; basic authentication", bmc=host)
            return basic
        capture = _Capture(self._http)
        body = {"UserName": self._username, "Password": self._password.reveal()}
        try:
            answer, data = await self._exchange(host, "opening a session", "POST", sessions_url, None, body, capture)
        except (RedfishAuthError, RedfishTimeout, RedfishUnavailable):
            raise
        except RedfishError as error:
            _log.info("Redfish {bmc}: session refused ({reason}); basic authentication", bmc=host, reason=error.reason)
            return basic
        token = (capture.headers.getRawHeaders(b"x-auth-token") or [b""])[0] if capture.headers else b""
        if not token:
            _log.info("Redfish {bmc}: session answer without X-Auth-Token; basic authentication", bmc=host)
            return basic
        location = answer.location or (_link(data) if isinstance(data, dict) else None)
        return _Login({"X-Auth-Token": token.decode("latin-1")}, None, location or None)

    async def _logout(self, host: str, login: _Login) -> None:
        """Delete the session, if there is one; failures are logged, not raised."""
        if login.session_url is None:
            return
        try:
            await self._call(host, "closing the session", "DELETE", login.session_url, login)
        except RedfishError as error:
            _log.warn("Redfish {bmc}: session not closed: {reason}", bmc=host, reason=error.reason)

    # --- one HTTP call ----------------------------------------------------------------

    async def _call(
        self, host: str, step: str, method: str, path: str, login: _Login | None = None, body: Any = None
    ) -> Any:
        """The decoded JSON answer of one request (C{None} for an empty one)."""
        _, data = await self._exchange(host, step, method, path, login, body, self._http)
        return data

    async def _exchange(
        self, host: str, step: str, method: str, path: str, login: _Login | None, body: Any, http: Any
    ) -> tuple[Answer, Any]:
        """One request, bounded, with retries when no connection could be set up."""
        url = self._url(host, path)
        headers = {"Accept": "application/json", "OData-Version": "4.0"}
        kwargs: dict[str, Any] = {}
        if login is not None:
            headers.update(login.headers)
            if login.auth is not None:
                kwargs["auth"] = login.auth
        if body is not None:
            kwargs["data"] = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        kwargs["headers"] = headers
        attempts = self._config.retries + 1
        for attempt in range(1, attempts + 1):

            def timed_out() -> RedfishTimeout:
                return RedfishTimeout(host, step, f"no answer within {self._config.timeout:g}s")

            try:
                answer = await within(
                    self._reactor,
                    self._config.timeout,
                    fetch(http, method, url, max_body=_MAX_BODY, **kwargs),
                    f"Redfish {host}: {step}",
                    timeout_error=timed_out,
                )
            except RedfishTimeout:
                _log.warn("Redfish {bmc}: {step}: timed out", bmc=host, step=step)
                raise
            except CancelledError:
                raise
            except FetchFailed as failed:
                reason = self._scrub(failed.reason)
                if failed.reason.startswith(_SETUP_FAILURES) and attempt < attempts:
                    _log.info(
                        "Redfish {bmc}: {step}: {reason}; trying again ({attempt}/{attempts})",
                        bmc=host,
                        step=step,
                        reason=reason,
                        attempt=attempt + 1,
                        attempts=attempts,
                    )
                    continue
                error_class = RedfishUnavailable if failed.status is None else RedfishError
                raise error_class(host, step, reason, status=failed.status) from None
            return answer, self._decode(host, step, answer)
        raise AssertionError("unreachable")  # pragma: no cover

    def _decode(self, host: str, step: str, answer: Answer) -> Any:
        """The answer's JSON, or the error it stands for."""
        code = answer.status
        if code == 401:
            raise RedfishAuthError(host, step, "HTTP 401: credentials refused", status=code)
        if not 200 <= code < 300:
            detail = _redfish_message(answer.body)
            reason = f"HTTP {code} {answer.phrase}".rstrip() + (f": {detail}" if detail else "")
            raise RedfishError(host, step, self._scrub(reason), status=code)
        if not answer.body.strip():
            return None
        try:
            return json.loads(answer.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RedfishError(host, step, f"HTTP {code}: answer is not JSON", status=code) from None

    def _url(self, host: str, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host
        port = f":{self._config.port}" if self._config.port is not None else ""
        return f"{self._config.scheme}://{name}{port}{path if path.startswith('/') else '/' + path}"

    def _scrub(self, text: str) -> str:
        """C{text} with the password, should a BMC ever echo it, masked."""
        password = self._password.reveal()
        return text.replace(password, "********") if password else text


def _link(value: Any) -> str | None:
    """The C{@odata.id} of a Redfish link object."""
    if isinstance(value, dict) and isinstance(value.get("@odata.id"), str) and value["@odata.id"]:
        return str(value["@odata.id"])
    return None


def _listed(values: Sequence[Any]) -> str:
    return ", ".join(str(value) for value in values) if values else "none"


def _quoted(value: Any) -> str:
    return repr(value)[:_MAX_DETAIL]


def _redfish_message(body: bytes) -> str:
    """The C{error.message} (or first extended message) of a Redfish error body, shortened."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    message = error.get("message")
    extended = error.get("@Message.ExtendedInfo")
    if isinstance(extended, list) and extended and isinstance(extended[0], dict) and extended[0].get("Message"):
        message = extended[0]["Message"]
    return " ".join(str(message).split())[:_MAX_DETAIL] if message else ""
