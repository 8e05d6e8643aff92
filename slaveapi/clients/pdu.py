"""
The PDU client: switch a machine's power outlet off and on over SNMP.

The reboot action's power-cycle step uses it when SSH, Mozpool and IPMI
could not reboot a machine. Two kinds of switched PDU are spoken to:

- ServerTech Sentry (Sentry3-MIB): C{outletControlAction}
  C{1.3.6.1.4.1.1718.3.2.3.1.11.<tower>.<infeed>.<outlet>} (1 on, 2 off,
  3 reboot), read back from C{outletStatus} C{1.3.6.1.4.1.1718.3.2.3.1.5}
  (0 off, 1 on, 2 offWait, 3 onWait, 4 offError, 5 onError, 6 noComm,
  7 reading, 8 offFuse, 9 onFuse);
- APC rack PDUs (PowerNet-MIB): C{rPDUOutletControlOutletCommand}
  C{1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.<outlet>} (1 immediateOn,
  2 immediateOff, 3 immediateReboot), read back from
  C{rPDUOutletStatusOutletState} C{1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.<outlet>}
  (1 on, 2 off). An APC outlet is the number of the inventory's outlet
  (C{AA12} is outlet 12).

Like the cluster fence agents, a switch is a SET followed by reading the
outlet's state back every C{poll_interval} seconds until it matches, for at
most C{state_timeout} seconds. SNMP v2c uses the credentials' community; v3
uses USM. Requests go through pysnmp 7's asyncio API, awaited from Twisted
(the service runs on the asyncio reactor). Every request is bounded by
pysnmp's own C{timeout} x (C{retries} + 1) and by a deadline on the reactor
besides. Failures raise L{PDUError}, one line naming the PDU, the outlet and
the step, never the community or the keys.

A PDU is a small device switching dozens of machines: at most C{per_pdu}
requests are in flight to one PDU host at once, and at most
C{max_requests} to all PDUs together (each request holds a pysnmp socket
exchange and a place in its engine). A request waits first in its PDU's
FIFO line, then in the overall one (L{TargetSlots}), so one busy PDU never
holds places others could use; neither wait counts against the request's
deadline, which starts once it is sent. The pause between off and on and
the polls of the outlet's state go through L{slaveapi.work.pause} (the
polls through L{poll_until}), so a power cycle that only waits holds no
work slot of its action.

A power cycle whose caller is cancelled (an action's timeout, a service
stop) still switches the outlet back on: the off-to-on switching runs as its
own task the caller only waits for, bounded by the deadlines above, and
L{PDUClient.close} waits for it (bounded) first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    Integer,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
    set_cmd,
    usmAesCfb128Protocol,
    usmDESPrivProtocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMACMD5AuthProtocol,
    usmHMACSHAAuthProtocol,
    usmNoPrivProtocol,
)
from pysnmp.proto import errind
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from zope.interface import implementer

from slaveapi._text import error_line, one_line
from slaveapi.clients._bounded import poll_until, within
from slaveapi.clients._errors import ClientError
from slaveapi.clients._targets import TargetSlots
from slaveapi.clients._unfinished import Unfinished
from slaveapi.clients.inventory import PDUOutlet
from slaveapi.config import Secret, SNMPConfig
from slaveapi.interfaces import IPDU
from slaveapi.work import pause

SENTRY = "sentry"
APC = "apc"

#: Seconds added to pysnmp's own bound before the reactor deadline cancels a request.
_DEADLINE_SLACK = 0.5

_AUTH_PROTOCOLS = {
    "md5": usmHMACMD5AuthProtocol,
    "sha": usmHMACSHAAuthProtocol,
    "sha256": usmHMAC192SHA256AuthProtocol,
}
_PRIV_PROTOCOLS = {
    "none": usmNoPrivProtocol,
    "des": usmDESPrivProtocol,
    "aes": usmAesCfb128Protocol,
}


class PDUError(ClientError):
    """
    Switching or reading an outlet failed; the message is one line naming
    the PDU, the outlet and the step, and never a community or key.

    @ivar pdu: C{host:port} of the PDU.
    @ivar outlet: the outlet as inventory names it (C{AA12}).
    @ivar step: what was being done (C{read state}, C{set off}, C{wait for on}...).
    """

    def __init__(self, pdu: str, outlet: str, step: str, reason: str) -> None:
        super().__init__(f"{pdu} outlet {outlet}: {step}: {reason}")
        self.pdu = pdu
        self.outlet = outlet
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class _Dialect:
    """How one kind of PDU names an outlet, switches it and reports its state."""

    name: str
    control: tuple[int, ...]
    status: tuple[int, ...]
    on_command: int
    off_command: int
    on_state: int
    off_state: int
    state_names: Mapping[int, str]
    by_position: bool  # index is tower.infeed.outlet (Sentry) or the outlet number alone (APC)

    def index(self, outlet: PDUOutlet) -> tuple[int, ...]:
        if self.by_position:
            return (outlet.tower, outlet.infeed, outlet.number)
        return (outlet.number,)

    def describe(self, state: int) -> str:
        name = self.state_names.get(state)
        return f"{name} ({state})" if name else f"unknown state {state}"


_DIALECTS = {
    SENTRY: _Dialect(
        name=SENTRY,
        control=(1, 3, 6, 1, 4, 1, 1718, 3, 2, 3, 1, 11),
        status=(1, 3, 6, 1, 4, 1, 1718, 3, 2, 3, 1, 5),
        on_command=1,
        off_command=2,
        on_state=1,
        off_state=0,
        state_names={
            0: "off", 1: "on", 2: "offWait", 3: "onWait", 4: "offError",
            5: "onError", 6: "noComm", 7: "reading", 8: "offFuse", 9: "onFuse",
        },
        by_position=True,
    ),
    APC: _Dialect(
        name=APC,
        control=(1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 3, 1, 1, 4),
        status=(1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 4),
        on_command=1,
        off_command=2,
        on_state=1,
        off_state=2,
        state_names={1: "on", 2: "off"},
        by_position=False,
    ),
}


def _oid_text(oid: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in oid)


class _NoAnswer(Exception):
    """The reactor deadline ran out before pysnmp answered."""


@implementer(IPDU)
class PDUClient:
    """
    Reads and switches PDU outlets over SNMP.

    @param reactor: provides C{callLater} and C{seconds}; deadlines, polls
        and the power-cycle pause run on it.
    @param config: the C{[snmp]} section.
    @param community: the v2c community (C{snmp_community}).
    @param v3_auth_key: the v3 authentication pass phrase.
    @param v3_priv_key: the v3 privacy pass phrase (unused with privacy C{none}).
    @param resolve: maps a PDU host name to its IPv4 address, C{None} when
        the name does not exist (a Twisted coroutine function or one
        returning a Deferred, e.g. the DNS client's; bounded like a request);
        without it pysnmp asks the system resolver.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: SNMPConfig,
        community: Secret | None,
        v3_auth_key: Secret | None,
        v3_priv_key: Secret | None,
        resolve: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._community = community
        self._auth_key = v3_auth_key
        self._priv_key = v3_priv_key
        self._resolve = resolve
        self._snmp_engine: SnmpEngine | None = None
        # At most config.per_pdu requests in flight to one PDU host, config.max_requests to all.
        self._pdus: TargetSlots[str] = TargetSlots(config.per_pdu)
        self._overall: TargetSlots[None] = TargetSlots(config.max_requests)
        # The off-to-on parts of running power cycles; close() waits for them.
        self._unfinished = Unfinished(self._log)

    # --- public API -----------------------------------------------------------

    def pdu_type(self, host: str) -> str:
        """C{sentry} or C{apc}: the configured type of the PDU C{host}."""
        types = {name.lower(): kind for name, kind in self._config.pdu_types.items()}
        return types.get(host.lower(), self._config.default_pdu_type)

    async def outlet_state(self, outlet: PDUOutlet) -> bool:
        """
        Whether the outlet is on.

        @raise PDUError: no answer, no such outlet, or a state that is
            neither on nor off (e.g. C{onWait}, C{noComm}).
        """
        dialect = self._dialect(outlet)
        state = await self._read_state(outlet, dialect, "read state")
        if state == dialect.on_state:
            return True
        if state == dialect.off_state:
            return False
        raise PDUError(self._where(outlet), outlet.outlet, "read state", f"outlet reports {dialect.describe(state)}")

    async def set_outlet(self, outlet: PDUOutlet, on: bool) -> None:
        """
        Switch the outlet on or off and wait until it reports that state.

        The state is read right after the SET and then every
        C{poll_interval} seconds, for at most C{state_timeout} seconds.

        @raise PDUError: the SET got no answer or was refused, a read
            failed, or the outlet did not reach the state in time.
        """
        dialect = self._dialect(outlet)
        word = "on" if on else "off"
        command = dialect.on_command if on else dialect.off_command
        await self._set(outlet, dialect, command, f"set {word}")
        self._log.info(
            "pdu: {pdu} outlet {outlet} switched {state}", pdu=outlet.host, outlet=outlet.outlet, state=word
        )
        await self._wait_for(outlet, dialect, on)

    async def powercycle(self, outlet: PDUOutlet, progress: Callable[[str], None] | None = None) -> None:
        """
        Power-cycle the outlet: off, confirm, wait C{power_delay} seconds, on, confirm.

        The switching runs as its own task, from the off SET on: cancelling
        the caller (an action's timeout, a service stop) raises
        C{CancelledError} here at once, but never leaves the outlet off: the
        cycle finishes in the background, bounded by this client's deadlines,
        silently for C{progress}, and is logged. L{close} waits for such
        cycles first.

        @param progress: told about each step, in words fit for a result text
            (until the caller is cancelled).
        @raise PDUError: any step failed; the outlet may be left off.
        """
        name = f"{outlet.host}:{outlet.outlet}"
        await self._unfinished.finish(
            lambda tell: self._off_then_on(outlet, name, tell), progress, "pdu: {outlet}", outlet=name
        )

    async def close(self) -> None:
        """
        Wait (bounded) for power cycles whose callers were cancelled, then
        release the SNMP engine's socket; a later call opens a new one.
        """
        pending = self._unfinished.pending()
        if pending:
            # Only this wait ends at the bound: cancelling a DeferredList would cancel the cycles.
            waiting: Deferred[None] = Deferred(lambda _: None)
            DeferredList(pending, consumeErrors=True).addBoth(
                lambda _: None if waiting.called else waiting.callback(None)
            )
            try:
                await self._within(waiting, self._tail_bound())
            except _NoAnswer:
                self._log.warn("pdu: power cycles still running after {bound:g}s; closing anyway",
                               bound=self._tail_bound())
        engine, self._snmp_engine = self._snmp_engine, None
        if engine is not None:
            engine.close_dispatcher()

    # --- power cycle ----------------------------------------------------------

    async def _off_then_on(self, outlet: PDUOutlet, name: str, tell: Callable[[str], None]) -> None:
        """The switching part of L{powercycle}."""
        tell(f"switching PDU outlet {name} off")
        await self.set_outlet(outlet, False)
        delay = self._config.power_delay
        tell(f"PDU outlet {name} is off; switching it on in {delay:g}s")
        if delay > 0:
            await pause(self._reactor, delay)
        tell(f"switching PDU outlet {name} on")
        await self.set_outlet(outlet, True)
        tell(f"PDU outlet {name} is on")

    def _tail_bound(self) -> float:
        """How long one power cycle's switching can take, with slack."""
        config = self._config
        # A resolve and an exchange per request; per switch a SET, the wait, and its last read.
        request = 2 * self._bound()
        switch = 2 * request + config.state_timeout + config.poll_interval
        return 2 * switch + config.power_delay + _DEADLINE_SLACK

    # --- steps ----------------------------------------------------------------

    def _dialect(self, outlet: PDUOutlet) -> _Dialect:
        kind = self.pdu_type(outlet.host)
        dialect = _DIALECTS.get(kind)
        if dialect is None:
            raise PDUError(self._where(outlet), outlet.outlet, "choose PDU type", f"unknown PDU type {kind!r}")
        return dialect

    def _where(self, outlet: PDUOutlet) -> str:
        return f"{outlet.host}:{self._config.port}"

    async def _wait_for(self, outlet: PDUOutlet, dialect: _Dialect, on: bool) -> None:
        wanted = dialect.on_state if on else dialect.off_state
        word = "on" if on else "off"
        limit = self._config.state_timeout
        last: list[int] = []

        async def reached() -> bool:
            last.append(await self._read_state(outlet, dialect, f"wait for {word}"))
            return last[-1] == wanted

        def late() -> PDUError:
            reason = f"did not reach {word} within {limit:g}s (last state: {dialect.describe(last[-1])})"
            return PDUError(self._where(outlet), outlet.outlet, f"wait for {word}", reason)

        await poll_until(
            self._reactor, reached, self._config.poll_interval, limit, f"wait for {word}", timeout_error=late
        )

    async def _read_state(self, outlet: PDUOutlet, dialect: _Dialect, step: str) -> int:
        oid = dialect.status + dialect.index(outlet)
        return await self._exchange(outlet, step, oid, None)

    async def _set(self, outlet: PDUOutlet, dialect: _Dialect, command: int, step: str) -> None:
        oid = dialect.control + dialect.index(outlet)
        await self._exchange(outlet, step, oid, command)

    # --- SNMP -----------------------------------------------------------------

    def _engine(self) -> SnmpEngine:
        if self._snmp_engine is None:
            self._snmp_engine = SnmpEngine()
        return self._snmp_engine

    def _auth_data(self, fail: Callable[[str], PDUError]) -> CommunityData | UsmUserData:
        config = self._config
        if config.version == "3":
            if not config.v3_user or self._auth_key is None:
                raise fail("SNMP v3 needs [snmp] v3_user and snmp_v3_auth_key in the credentials")
            auth_protocol = _AUTH_PROTOCOLS.get(config.v3_auth_protocol)
            priv_protocol = _PRIV_PROTOCOLS.get(config.v3_priv_protocol)
            if auth_protocol is None or priv_protocol is None:
                raise fail(
                    f"unsupported SNMP v3 protocols {config.v3_auth_protocol}/{config.v3_priv_protocol}"
                )
            if priv_protocol is usmNoPrivProtocol:
                return UsmUserData(config.v3_user, authKey=self._auth_key.reveal(), authProtocol=auth_protocol)
            if self._priv_key is None:
                raise fail("SNMP v3 privacy needs snmp_v3_priv_key in the credentials")
            return UsmUserData(
                config.v3_user,
                authKey=self._auth_key.reveal(),
                privKey=self._priv_key.reveal(),
                authProtocol=auth_protocol,
                privProtocol=priv_protocol,
            )
        if self._community is None:
            raise fail("no snmp_community in the credentials")
        return CommunityData(self._community.reveal(), mpModel=0 if config.version == "1" else 1)

    def _bound(self) -> float:
        """The reactor deadline of one request: pysnmp's own bound plus slack."""
        config = self._config
        tries = config.retries + 1
        # A v3 request first discovers the agent's engine id: up to two exchanges.
        exchanges = 2 if config.version == "3" else 1
        return config.timeout * tries * exchanges + _DEADLINE_SLACK

    async def _address(self, outlet: PDUOutlet, fail: Callable[[str], PDUError]) -> str:
        if self._resolve is None:
            return outlet.host
        bound = self._bound()
        try:
            address = await self._within(self._resolve(outlet.host), bound)
        except _NoAnswer:
            raise fail(f"cannot resolve {outlet.host}: no answer within {bound:g}s") from None
        except CancelledError:
            raise
        except Exception as error:
            raise fail(f"cannot resolve {outlet.host}: {error_line(error)}") from None
        if not address:
            raise fail(f"{outlet.host} does not resolve")
        return str(address)

    async def _exchange(self, outlet: PDUOutlet, step: str, oid: tuple[int, ...], value: int | None) -> int:
        """
        One GET (C{value} None) or SET of an integer, bounded; the integer
        the agent answered.
        """
        where = self._where(outlet)

        def fail(reason: str) -> PDUError:
            return PDUError(where, outlet.outlet, step, reason)

        auth = self._auth_data(fail)
        address = await self._address(outlet, fail)
        bound = self._bound()
        try:
            async with self._pdus.hold(outlet.host.lower().rstrip(".")), self._overall.hold(None):
                error_indication, error_status, _error_index, var_binds = await self._run(
                    self._request(address, auth, oid, value), bound
                )
        except _NoAnswer:
            raise fail(f"no answer within {bound:g}s") from None
        except PySnmpError as error:
            raise fail(error_line(error)) from None

        tries = self._config.retries + 1
        if isinstance(error_indication, errind.RequestTimedOut):
            raise fail(f"no answer after {tries} {'try' if tries == 1 else 'tries'}")
        if error_indication:
            raise fail(one_line(str(error_indication)))
        if error_status:
            verb = "SET" if value is not None else "GET"
            raise fail(f"{verb} refused: {error_status.prettyPrint()}")
        if len(var_binds) != 1:
            raise fail(f"malformed answer: {len(var_binds)} variables")
        answer = var_binds[0][1]
        if isinstance(answer, (NoSuchInstance, NoSuchObject, EndOfMibView)):
            kind = type(answer).__name__
            raise fail(f"no such outlet ({kind[0].lower()}{kind[1:]} at {_oid_text(oid)})")
        try:
            return int(answer)
        except (TypeError, ValueError):
            raise fail(f"malformed answer: {type(answer).__name__} at {_oid_text(oid)}") from None

    async def _request(
        self, address: str, auth: CommunityData | UsmUserData, oid: tuple[int, ...], value: int | None
    ) -> tuple[Any, Any, Any, Any]:
        """The pysnmp side of one exchange (an asyncio coroutine)."""
        engine = self._engine()
        target = await UdpTransportTarget.create(
            (address, self._config.port), timeout=self._config.timeout, retries=self._config.retries
        )
        # pysnmp is untyped: its answer is (errorIndication, errorStatus, errorIndex, varBinds).
        answer: tuple[Any, Any, Any, Any]
        if value is None:
            answer = await get_cmd(
                engine, auth, target, ContextData(), ObjectType(ObjectIdentity(oid)), lookupMib=False
            )
        else:
            answer = await set_cmd(
                engine, auth, target, ContextData(), ObjectType(ObjectIdentity(oid), Integer(value)), lookupMib=False
            )
        return answer

    async def _run(self, coroutine: Any, bound: float) -> Any:
        """Await an asyncio coroutine (pysnmp's) from Twisted, cancelling it after C{bound} seconds."""
        return await self._within(Deferred.fromFuture(asyncio.ensure_future(coroutine)), bound)

    async def _within(self, awaitable: Awaitable[Any], bound: float) -> Any:
        """
        Await a Deferred, a Twisted coroutine or an asyncio future, cancelling
        it after C{bound} seconds.

        @raise _NoAnswer: the time ran out.
        """
        return await within(self._reactor, bound, awaitable, "snmp request", timeout_error=_NoAnswer)
