"""
IPMI client: read and set a machine's chassis power and next boot device through its BMC (IPMI 2.0, RMCP+).

The reboot action uses it after SSH and Mozpool: L{IPMIClient.available}
says whether a BMC answers, L{IPMIClient.powercycle} takes the machine down
(gracefully first) and brings it back. The power actions use
L{IPMIClient.power_state} and L{IPMIClient.set_power}, and
L{IPMIClient.set_boot_device} / L{IPMIClient.boot_device} for a one-time
boot device (the chassis boot flags: forced device, "valid", not
"persistent"; a BMC clears them once the machine has booted).

The 60 s rule: per IPMI 2.0 boot option parameter 3 ("boot flag valid bit
clearing"), a BMC clears the boot flags' "valid" bit when no restart (no
chassis control command) follows within 60 s of setting them, unless told
not to. So L{IPMIClient.set_boot_device} first tells it not to (parameter
3, bit 3, as pyghmi's own C{set_bootdev} does), then sets the flags: a boot
device set now still holds for a reboot an hour later. A BMC that does not
support parameter 3 is used anyway, and that is logged: it may drop the
device after 60 s. L{IPMIClient.boot_device} reports whether the override
read back is for the next boot only or persistent (L{BootOverride}), and
fails when the BMC marks the boot flags invalid or locked.

Execution model
===============

The protocol work is done by pyghmi, which cannot run on the reactor nor in
ordinary threads: it blocks, has no per-call timeout (an unknown user or a
BMC that stops answering can hang it for ever), deadlocks when several
threads of one process use it at once (seen with pyghmi 1.6.19), and must
not share a process with pyghmi's BMC server (both use pyghmi's global
session tables: calls stall for about 30 s, then the server's loop dies).
So:

  - pyghmi runs in a pool of at most C{workers} long-lived worker processes
    (L{slaveapi.clients._ipmi_worker}), spawned lazily with
    C{reactor.spawnProcess} and the parent's environment. Each serves one
    request at a time, in one thread, so pyghmi never sees concurrency.
  - Requests and answers are JSON lines over the worker's stdin and stdout.
    The credentials travel inside the request over the pipe, never on a
    command line or in a log; the worker hands pyghmi bytes credentials
    (str ones hang the second session of a process) and logs out after
    every request, so no BMC session outlives a request.
  - Requests wait in a FIFO queue for a free worker; the deadline
    (C{timeout}) starts when a worker takes the request, so waiting in the
    queue does not count against it. When the deadline passes, the worker is
    killed by PID (SIGKILL) and dropped from the pool, and the caller gets
    L{IPMITimeout}: a hung BMC never hangs an action nor poisons the pool. A
    worker that dies is dropped the same way. Replacements are spawned when
    there is queued work and fewer than C{workers} processes.
  - At most C{per_bmc} requests are in flight to one BMC address at once
    (a BMC serves few sessions, and a wave must not crowd one); the others
    wait in that BMC's own FIFO line (L{TargetSlots}) before they join the
    worker queue. Like the worker queue, that line does not count against
    the deadline. Requests to different BMCs do not wait for each other
    there: C{workers} alone limits them.
  - A session set-up that fails (no answer, a session that broke off) is
    tried again up to C{retries} more times, each attempt with its own
    deadline; refused credentials (L{IPMIAuthError}) and deadlines are not
    retried. One call is therefore bounded by C{(retries + 1) * timeout}
    plus its time in the queues.

A request to a healthy BMC takes a few milliseconds (one RMCP+ session:
open, RAKP, the command, close), so a wave of hundreds of power cycles
spends its time in the polling waits, which run on the reactor, not in the
pool (measured on the lab: 50 concurrent power cycles on 4 workers in
1.5 s; 2,400 status requests from 8 workers to 500 BMCs in 10.5 s). A hung
BMC holds one worker for at most C{timeout}.

Nothing bounds a request's time in the queues but the requests ahead of it,
each bounded by its deadline: a burst larger than the pool only waits
longer, it never times out for want of a worker. The pauses of a power
cycle (C{power_delay}, and the polls while waiting for a power state, via
L{poll_until}) go through L{slaveapi.work.pause}, so a power cycle that only
waits holds no work slot of its action.

A power cycle whose caller is cancelled (an action's timeout, a service
stop) once its first power-state query has answered (the next step switches
power off) still powers the machine on: the off-to-on part runs as its own
task the caller only waits for, bounded by the deadlines above, and
L{IPMIClient.close} waits for it (bounded) first.

L{IPMIClient.close} stops every worker (stdin closed, then SIGKILL by PID
after a grace period) and waits for them to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import slaveapi
from slaveapi.clients._boot import BootOverride
from slaveapi.clients._bounded import poll_until, settled, within
from slaveapi.clients._errors import ClientError, ClientTimeout, Unreachable
from slaveapi.clients._targets import TargetSlots
from slaveapi.clients._unfinished import Unfinished
from slaveapi.config import IPMIConfig, Secret
from slaveapi.interfaces import IIPMI
from slaveapi.work import pause

_log = Logger(namespace="slaveapi.clients.ipmi")

#: The states L{IPMIClient.set_power} accepts, and their chassis control directives.
POWER_DIRECTIVES: dict[str, int] = {"off": 0, "on": 1, "cycle": 2, "reset": 3, "soft": 5}

_STEP_NAMES = {
    "off": "hard power off",
    "on": "power on",
    "cycle": "power cycle",
    "reset": "power reset",
    "soft": "soft power off",
}

#: The devices L{IPMIClient.set_boot_device} accepts, and their boot device
#: selectors (IPMI 2.0, table 28-14): PXE, the default hard drive, BIOS setup.
BOOT_SELECTORS: dict[str, int] = {"pxe": 0b0001, "disk": 0b0010, "bios": 0b0110}

# What L{IPMIClient.boot_device} calls the other selectors a BMC may report (set by someone else).
_OTHER_SELECTORS = {
    0b0011: "disk-safe-mode",
    0b0100: "diagnostic",
    0b0101: "cdrom",
    0b0111: "remote-floppy",
    0b1000: "remote-cdrom",
    0b1001: "remote-media",
    0b1011: "remote-disk",
    0b1111: "floppy",
}

_WORKER_MODULE = "slaveapi.clients._ipmi_worker"

# How long close() lets workers finish their request after stdin closes.
_CLOSE_GRACE = 2.0
# How long close() waits for killed workers to be reaped.
_REAP_BOUND = 5.0
# A worker that says nothing for this long after starting is killed.
_START_BOUND = 30.0
# Worker output beyond this without a newline is a broken worker.
_MAX_LINE = 64 * 1024


class IPMIError(ClientError):
    """An IPMI call failed; the message is one line naming the host and the step."""


class IPMITimeout(IPMIError, ClientTimeout):
    """The BMC did not finish the call within our deadline."""


class IPMIUnavailable(IPMIError, Unreachable):
    """No BMC answered, or no session could be set up, after every retry."""


class _NotReached(Exception):
    """The power state waited for was not reached in time."""


class IPMIAuthError(IPMIError):
    """The BMC refused the user name or password."""


@dataclass(eq=False)
class _Request:
    """One call waiting for, or being served by, a worker."""

    ident: int
    host: str
    step: str
    # Holds the BMC password on its way to the worker: never in a repr.
    payload: dict[str, Any] = field(repr=False)
    result: Deferred[dict[str, Any]]
    worker: _Worker | None = None
    timer: IDelayedCall | None = None


class _Worker(ProcessProtocol):
    """One worker process, as its pool sees it."""

    def __init__(self, pool: _WorkerPool) -> None:
        self._pool = pool
        self._buffer = b""
        self.ready = False
        self.request: _Request | None = None
        self.ended: Deferred[None] = Deferred()
        self.exited = False
        self.doomed = False
        self.pid: int | None = None
        self.start_timer: IDelayedCall | None = None

    @property
    def _process(self) -> IProcessTransport:
        assert self.transport is not None  # noqa: S101  (set before any of these is called)
        return self.transport

    def connectionMade(self) -> None:
        self.pid = self._process.pid

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                self._pool._line(self, line)
        if len(self._buffer) > _MAX_LINE:
            self._buffer = b""
            self.kill()

    def errReceived(self, data: bytes) -> None:
        # pyghmi's own complaints (tracebacks, prints); never contain the password.
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                _log.debug("ipmi worker {pid}: {line}", pid=self.pid, line=line[:500])

    def write(self, message: dict[str, Any]) -> None:
        self._process.write(json.dumps(message).encode("utf-8") + b"\n")

    def kill(self) -> None:
        """SIGKILL the process by its PID (if it still runs); it takes no more work."""
        self.doomed = True
        if self.exited or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def close_stdin(self) -> None:
        if not self.exited:
            self._process.closeStdin()

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        if self.start_timer is not None and self.start_timer.active():
            self.start_timer.cancel()
        self._pool._ended(self, reason)
        if not self.ended.called:
            self.ended.callback(None)


class _WorkerPool:
    """At most C{size} worker processes, each serving one request at a time."""

    def __init__(self, reactor: Any, size: int, timeout: float) -> None:
        self._reactor = reactor
        self._size = size
        self._timeout = timeout
        self._workers: list[_Worker] = []
        self._queue: deque[_Request] = deque()
        self._next_id = 0
        self._closed = False
        self.spawned = 0

    def run(self, host: str, step: str, payload: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Queue a request; fires with the worker's answer or fails with an L{IPMIError}."""
        if self._closed:
            return defer.fail(IPMIError(f"IPMI {step} on {host}: client closed"))
        self._next_id += 1
        request = _Request(self._next_id, host, step, payload, Deferred(self._cancel))
        self._queue.append(request)
        self._dispatch()
        return request.result

    def _cancel(self, result: Deferred[dict[str, Any]]) -> None:
        for request in list(self._queue):
            if request.result is result:
                self._queue.remove(request)
                return
        for worker in self._workers:
            busy = worker.request
            if busy is not None and busy.result is result:
                # pyghmi cannot be interrupted: the worker goes.
                self._finish(busy)
                self._drop(worker)
                worker.kill()
                return

    def _dispatch(self) -> None:
        while self._queue:
            worker = next((w for w in self._workers if w.ready and w.request is None and not w.doomed), None)
            if worker is None:
                break
            self._assign(worker, self._queue.popleft())
        starting = sum(1 for w in self._workers if not w.ready and not w.doomed)
        while not self._closed and len(self._queue) > starting and len(self._workers) < self._size:
            self._spawn()
            starting += 1

    def _spawn(self) -> None:
        worker = _Worker(self)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(slaveapi.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self._reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-m", _WORKER_MODULE], env=env, childFDs={0: "w", 1: "r", 2: "r"}
        )
        worker.start_timer = self._reactor.callLater(_START_BOUND, self._start_expired, worker)
        self._workers.append(worker)
        self.spawned += 1
        _log.debug("ipmi: worker {pid} started", pid=worker.pid)

    def _start_expired(self, worker: _Worker) -> None:
        _log.warn("ipmi: worker {pid} did not start within {bound}s; killing it", pid=worker.pid, bound=_START_BOUND)
        worker.kill()

    def _assign(self, worker: _Worker, request: _Request) -> None:
        worker.request = request
        request.worker = worker
        request.timer = self._reactor.callLater(self._timeout, self._expired, worker, request)
        worker.write(dict(request.payload, id=request.ident))

    def _line(self, worker: _Worker, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            _log.warn("ipmi: worker {pid} wrote something unreadable; killing it", pid=worker.pid)
            worker.kill()  # its request fails when it has gone (_ended)
            return
        if not worker.ready:
            if message.get("ready") is True:
                worker.ready = True
                if worker.start_timer is not None and worker.start_timer.active():
                    worker.start_timer.cancel()
                self._dispatch()
            return
        request = worker.request
        if request is None or message.get("id") != request.ident:
            return  # an answer to a request given up on; cannot happen with one at a time
        worker.request = None
        self._finish(request)
        request.result.callback(message)
        self._dispatch()

    def _expired(self, worker: _Worker, request: _Request) -> None:
        request.timer = None
        if worker.request is not request:
            return
        _log.warn(
            "ipmi: {step} on {host} hit the {timeout}s deadline; killing worker {pid}",
            step=request.step, host=request.host, timeout=self._timeout, pid=worker.pid,
        )
        self._finish(request)
        self._drop(worker)
        worker.kill()
        request.result.errback(
            IPMITimeout(f"IPMI {request.step} on {request.host}: no answer within {self._timeout:g}s")
        )
        self._dispatch()

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        request = worker.request
        known = worker in self._workers
        self._drop(worker)
        if request is not None and known:
            self._finish(request)
            _log.warn("ipmi: worker {pid} died during {step} on {host}", pid=worker.pid, step=request.step,
                      host=request.host)
            request.result.errback(IPMIError(f"IPMI {request.step} on {request.host}: worker process died"))
        elif not worker.ready and known and not self._closed:
            # It never got going (broken install?): fail what waits rather than respawn for ever.
            _log.error("ipmi: worker {pid} exited before it was ready", pid=worker.pid)
            waiting, self._queue = list(self._queue), deque()
            for queued in waiting:
                queued.result.errback(IPMIError(f"IPMI {queued.step} on {queued.host}: worker process failed to start"))
        self._dispatch()

    def _finish(self, request: _Request) -> None:
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        request.timer = None
        if request.worker is not None and request.worker.request is request:
            request.worker.request = None

    def _drop(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)

    async def close(self) -> None:
        """Fail queued requests, stop every worker and wait until all are gone."""
        self._closed = True
        waiting, self._queue = list(self._queue), deque()
        for request in waiting:
            request.result.errback(IPMIError(f"IPMI {request.step} on {request.host}: client closed"))
        workers = list(self._workers)
        for worker in workers:
            worker.close_stdin()  # idle ones exit now, busy ones after answering
        ended = defer.DeferredList([w.ended for w in workers], consumeErrors=True)
        def kill_all() -> None:
            for worker in workers:
                worker.kill()

        grace = self._reactor.callLater(_CLOSE_GRACE, kill_all)
        try:
            await _bounded(self._reactor, ended, _CLOSE_GRACE + _REAP_BOUND)
        finally:
            if grace.active():
                grace.cancel()
        self._workers.clear()


async def _bounded(reactor: Any, waiting: Deferred[Any], bound: float) -> None:
    """Wait for C{waiting}, at most C{bound} seconds (then give up quietly; C{waiting} is untouched)."""
    with contextlib.suppress(ClientTimeout):
        await within(reactor, bound, settled(waiting), "ipmi: waiting")


def _reason(error: IPMIError) -> str:
    """The part of an error's message after "IPMI <step> on <host>: "."""
    return str(error).split(": ", 1)[-1]


@implementer(IIPMI)
class IPMIClient:
    """
    Chassis power and the next boot device through BMCs, with our own deadlines (see the module docstring).

    @param config: port, deadline, retries, pool size, the per-BMC limit and the power-cycle timings.
    @param username: the BMC user (C{[slaves] ipmi_username}).
    @param password: its password (C{credentials.ipmi}); None means an empty one.
    """

    def __init__(self, reactor: Any, config: IPMIConfig, username: str, password: Secret | None) -> None:
        self._reactor = reactor
        self._config = config
        self._username = username
        self._password = password
        self._pool = _WorkerPool(reactor, config.workers, config.timeout)
        # At most config.per_bmc requests in flight to one BMC address.
        self._bmcs: TargetSlots[str] = TargetSlots(config.per_bmc)
        # The off-to-on parts of running power cycles; close() waits for them.
        self._unfinished = Unfinished(_log)

    async def power_state(self, host: str) -> bool:
        """Whether the machine behind C{host}'s BMC has chassis power."""
        answer = await self._call(host, "power status", {"op": "status"})
        return bool(answer["powered"])

    async def set_power(self, host: str, state: str) -> None:
        """
        Ask the BMC to change chassis power; returns once the BMC accepted it.

        @param state: C{on}, C{off} (hard, at once), C{soft} (ACPI shutdown
            request to the OS), C{reset} or C{cycle}.
        """
        directive = POWER_DIRECTIVES.get(state)
        if directive is None:
            raise ValueError(f"unknown power state {state!r}; expected one of {', '.join(POWER_DIRECTIVES)}")
        await self._call(host, _STEP_NAMES[state], {"op": "control", "directive": directive})

    async def set_boot_device(self, host: str, device: str) -> None:
        """
        Boot the machine from C{device} at its next boot only; returns once the BMC accepted it.

        The BMC is first told to keep the boot flags valid past its 60 s
        timeout (see the module docstring), so the device holds until the
        next boot however late that comes.

        @param device: C{pxe}, C{disk} (the default hard drive) or C{bios} (BIOS setup).
        @raise ValueError: C{device} is none of those (nothing is sent).
        """
        selector = BOOT_SELECTORS.get(device)
        if selector is None:
            raise ValueError(f"unknown boot device {device!r}; expected one of {', '.join(BOOT_SELECTORS)}")
        answer = await self._call(host, f"set boot device {device}", {"op": "set_boot", "selector": selector})
        if not answer.get("kept"):
            _log.warn("ipmi: {host}: the BMC does not support boot flag valid bit clearing; it may drop the boot "
                      "device {device} unless the machine restarts within 60s", host=host, device=device)

    async def boot_device(self, host: str) -> BootOverride | None:
        """
        The device the BMC forces: C{pxe}, C{disk}, C{bios} (or the name of
        another selector, such as C{cdrom}, should someone have set one),
        and whether at the next boot only (not "persistent"); C{None} when
        the boot flags are not valid or force no device.

        @raise IPMIError: among others, when the BMC marks the boot flags
            invalid or locked.
        """
        answer = await self._call(host, "boot device status", {"op": "get_boot"})
        selector = int(answer.get("selector") or 0)
        if not answer.get("valid") or selector == 0:
            return None
        once = not answer.get("persistent")
        for device, known in BOOT_SELECTORS.items():
            if known == selector:
                return BootOverride(device, once)
        return BootOverride(_OTHER_SELECTORS.get(selector, f"selector {selector:04b}b"), once)

    async def available(self, host: str) -> bool:
        """Whether a BMC at C{host} answers a power-state query (False rather than an error)."""
        try:
            await self.power_state(host)
        except IPMIError as error:
            _log.info("ipmi: no usable BMC at {host}: {reason}", host=host, reason=str(error))
            return False
        return True

    async def powercycle(self, host: str, progress: Callable[[str], None] | None = None) -> None:
        """
        Power-cycle the machine: soft off, hard off if it stays on, a pause, power on.

        Waits for off at most C{off_timeout} (polled every C{poll_interval}),
        then forces it (at once if the BMC refuses the soft off); after the
        hard off and the power on, confirms the new state (polled, bounded by
        C{timeout}). A machine already off is only powered on. Raises
        L{IPMIError} when a step fails or the state is not reached.

        Once the first power state is known, the rest (off, pause, on) runs
        as its own task: cancelling the caller (an action's timeout, a
        service stop) raises C{CancelledError} here at once, but never leaves
        the machine powered off: the power cycle finishes in the background,
        bounded by this client's deadlines, silently for C{progress}, and is
        logged. L{close} waits for such power cycles first.

        @param progress: told short human-readable lines as steps happen
            (until the caller is cancelled).
        """
        powered = await self.power_state(host)
        await self._unfinished.finish(
            lambda say: self._off_then_on(host, powered, say), progress, "ipmi: {host}", host=host
        )

    async def close(self) -> None:
        """
        Wait (bounded) for power cycles whose callers were cancelled, then stop
        every worker process; later calls fail with L{IPMIError}.
        """
        pending = self._unfinished.pending()
        if pending:
            waiting = defer.DeferredList(pending, consumeErrors=True)
            await _bounded(self._reactor, waiting, self._tail_bound())
        await self._pool.close()

    async def _off_then_on(self, host: str, powered: bool, say: Callable[[str], None]) -> None:
        """The power cycle from the first power-off command on (see L{powercycle})."""
        config = self._config
        if powered:
            try:
                await self.set_power(host, "soft")
            except (IPMITimeout, IPMIUnavailable, IPMIAuthError):
                raise
            except IPMIError as refused:
                # Some BMCs refuse a soft off (no ACPI OS running): go straight to a hard one.
                say(f"soft power off refused ({_reason(refused)}); hard power off")
                soft = False
            else:
                say("soft power off requested")
                soft = True
            if soft and await self._wait_for(host, False, config.off_timeout):
                say("powered off")
            else:
                if soft:
                    say(f"still on after {config.off_timeout:g}s; hard power off")
                await self.set_power(host, "off")
                if not await self._wait_for(host, False, config.timeout):
                    raise IPMIError(f"IPMI hard power off on {host}: still on after {config.timeout:g}s")
                say("powered off")
        else:
            say("already off")
        if config.power_delay > 0:
            await pause(self._reactor, config.power_delay)
        say("power on requested")
        await self.set_power(host, "on")
        if not await self._wait_for(host, True, config.timeout):
            raise IPMIError(f"IPMI power on on {host}: still off after {config.timeout:g}s")
        say("powered on")

    def _tail_bound(self) -> float:
        """How long the rest of one power cycle can take (see L{_off_then_on}), with slack."""
        config = self._config
        call = (config.retries + 1) * config.timeout + config.poll_interval
        # Up to six calls that each end a wait or a step, the waits' own bounds, the pause.
        return 6 * call + config.off_timeout + 2 * config.timeout + config.power_delay + _CLOSE_GRACE

    async def _wait_for(self, host: str, powered: bool, bound: float) -> bool:
        """Poll the power state until it is C{powered} or C{bound} seconds passed."""

        async def reached() -> bool:
            return await self.power_state(host) == powered

        what = f"ipmi: {host} powered {'on' if powered else 'off'}"
        try:
            await poll_until(self._reactor, reached, self._config.poll_interval, bound, what, timeout_error=_NotReached)
        except _NotReached:
            return False
        return True

    async def _call(self, host: str, step: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request to a worker, retrying failed session set-ups."""
        attempts = self._config.retries + 1
        for attempt in range(1, attempts + 1):
            payload = dict(
                request,
                host=host,
                port=self._config.port,
                username=self._username,
                password=self._password.reveal() if self._password is not None else "",
            )
            async with self._bmcs.hold(host.lower().rstrip(".")):
                answer = await self._pool.run(host, step, payload)
            if answer.get("ok"):
                _log.debug("ipmi: {step} on {host} done", step=step, host=host)
                return answer
            kind = answer.get("kind")
            reason = str(answer.get("message") or "failed")
            if kind == "auth":
                _log.warn("ipmi: {step} on {host}: credentials refused", step=step, host=host)
                raise IPMIAuthError(f"IPMI {step} on {host}: credentials refused ({reason})")
            if kind != "setup":
                _log.warn("ipmi: {step} on {host} failed: {reason}", step=step, host=host, reason=reason)
                raise IPMIError(f"IPMI {step} on {host}: {reason}")
            if attempt < attempts:
                _log.info(
                    "ipmi: {step} on {host}: session set-up failed ({reason}); attempt {next} of {attempts}",
                    step=step, host=host, reason=reason, next=attempt + 1, attempts=attempts,
                )
        _log.warn("ipmi: {step} on {host}: no session after {attempts} attempts", step=step, host=host,
                  attempts=attempts)
        raise IPMIUnavailable(f"IPMI {step} on {host}: no BMC session after {attempts} attempts ({reason})")
