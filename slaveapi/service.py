"""
Builds the running service: web server, action processor, results store,
configuration reloads, logging, and in C{--lab} mode the simulated fleet.

The children of the top L{OrderedMultiService} start in order (store, processor,
health loop, web) and stop in reverse, one at a time, so the port closes first, running
actions then clean up, and the store closes last.

Results are kept in SQLite under C{--data}, or, with C{[store] url =
postgresql://...}, in one database several instances share
(L{slaveapi.postgres}): the instance then joins the cluster (heartbeats,
failover) once the store is open and before the port listens, and leaves it
after the processor has stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.web.client import HTTPConnectionPool

from slaveapi.actions.registry import ACTIONS
from slaveapi.admission import server_limits
from slaveapi.config import (
    Config,
    ConfigError,
    LoggingConfig,
    check_host_key_policy,
    load_config,
    plain_http_credentials,
)
from slaveapi.context import Context, build_context, close_contexts
from slaveapi.datadir import DataDirError, DataDirLock, DataDirLockService, ensure_data_dir, lock_data_dir
from slaveapi.events import ResultEvents
from slaveapi.health import VERDICTS, HealthService, IHealthStore, Remediation, SQLiteHealthStore, default_health_path
from slaveapi.metrics import ServiceMetrics
from slaveapi.postgres import (
    Database,
    DatabaseSettings,
    Membership,
    PostgreSQLCluster,
    PostgreSQLHealthStore,
    PostgreSQLResultStore,
    SweepLease,
    as_deferred,
)
from slaveapi.processor import ActionProcessor
from slaveapi.results import ActionResult
from slaveapi.store import (
    IResultStore,
    SQLiteResultStore,
    StoreUnavailable,
    StoreUnreadable,
    default_store_path,
    prepare_store_file,
)
from slaveapi.web.gate import GatedSite
from slaveapi.web.listening import check_anonymous_exposure, with_backlog
from slaveapi.web.routes import SlaveAPIWeb
from slaveapi.webhooks import WebhookSender

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


class OrderedMultiService(MultiService):
    """
    Stops its children one at a time, the last started first, each only once
    the one before it has finished stopping: the port closes, then running
    actions clean up, then their clients are released, then the store closes.
    """

    _log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)

        async def stop_each() -> None:
            for child in reversed(list(self)):
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self._log.failure("Stopping {child} failed", child=child)

        return Deferred.fromCoroutine(stop_each())


#: Seconds between prunings of old results.
PRUNE_INTERVAL = 3600.0

#: Seconds between looks for replaced contexts whose clients can be released.
RETIRED_SWEEP_INTERVAL = 60.0


class StartupError(Exception):
    """The service cannot start; the message is one line saying why."""


class ListenWhenReady(StreamServerEndpointService):
    """
    Opens the port only once C{ready} has fired.

    With C{--lab}, the lab's BMCs and its EC2 server start in processes of
    their own and are ready a few seconds after the port could be bound; a
    request sent the moment the API first answers must behave exactly as one
    sent a minute later, so the API does not answer before then. Without a
    lab, C{ready} has already fired and a port that cannot be bound stops
    start-up at once. A C{ready} that fails, or a port that cannot be bound
    later, stops the process with one log line.

    @ivar listening: fires with the listening port once it is open.
    """

    _log = Logger()

    def __init__(self, endpoint: Any, factory: Any, ready: Deferred[None], reactor: Any) -> None:
        super().__init__(endpoint, factory)
        self._ready = ready
        self._reactor = reactor
        self.listening: Deferred[Any] = Deferred()
        # A port that cannot be bound stops start-up instead of leaving a deaf service.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """Nothing yet: binding waits for C{ready} (twistd calls this before dropping privileges)."""

    def startService(self) -> None:
        Service.startService(self)
        self._ready.addCallbacks(self._listen, self._not_ready)

    def _listen(self, _: object) -> None:
        if not self.running:
            return
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except Exception as error:
            if not self._reactor.running:
                raise
            self._log.critical("slaveapi: cannot listen: {reason}", reason=str(error))
            self._reactor.stop()
            return
        assert self._waitingForPort is not None  # noqa: S101  # set by privilegedStartService
        self._waitingForPort.chainDeferred(self.listening)

    def stopService(self) -> Deferred[None] | None:
        if self._waitingForPort is None:
            Service.stopService(self)
            return None
        stopped: Deferred[None] = StreamServerEndpointService.stopService(self)
        return stopped

    def _not_ready(self, failure: Failure) -> None:
        if not self.running:
            return
        self._log.critical("slaveapi: not starting: {reason}", reason=failure.getErrorMessage())
        if self._reactor.running:
            self._reactor.stop()


@dataclass
class ServiceOptions:
    """What C{twistd slaveapi} was asked for on its command line."""

    config: str | None = None
    listen: str | None = None
    data: str = "."
    lab: int | None = None
    lab_boot_time: float = 5.0
    lab_health_interval: float = 20.0


class ContextHolder(Service):
    """
    Holds the current context and replaces it when configuration is reloaded.

    SIGHUP re-reads the ini and the credentials; a configuration that does not
    load is refused with a log line and the old one stays. Actions already
    queued or running keep the context they have.

    @param lab: whether SlaveAPI runs against the simulated lab (which alone
        may turn host key checks off).
    @param check: refuses a reloaded configuration the running service
        cannot take (raising L{ConfigError}).
    @param metrics: where the clients' calls are counted, if anywhere.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        data_dir: str,
        *,
        lab: bool = False,
        check: Callable[[Config], None] = lambda config: None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._reactor = reactor
        self._metrics = metrics
        self._check = check
        self._data_dir = data_dir
        self._lab = lab
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 10
        self._current = build_context(config, reactor, self._pool, data_dir, metrics=metrics)
        # Contexts replaced by reloads: their clients are released once no
        # queued or running action, nor a health sweep, uses them any more.
        self._retired: list[Context] = []
        self._users: list[Callable[[Context], bool]] = []
        self._on_reload: list[Callable[[], None]] = []
        self._sweeper = LoopingCall(self._release_idle)
        self._sweeper.clock = reactor
        self._previous_handler: Any = None

    def watch(self, in_use: Callable[[Context], bool]) -> None:
        """Learn which contexts are still used (actions: the processor knows; the health loop's sweep)."""
        self._users.append(in_use)

    def _in_use(self, ctx: Context) -> bool:
        return any(in_use(ctx) for in_use in self._users)

    def on_reload(self, listener: Callable[[], None]) -> None:
        """Call C{listener} after each reload that took effect (the health loop follows its interval)."""
        self._on_reload.append(listener)

    def context(self) -> Context:
        """The context new requests and actions use."""
        return self._current

    def reload(self) -> bool:
        """Re-read the configuration files; True if the new configuration took effect."""
        path = self._current.config.path
        try:
            config = load_config(path)
            check_host_key_policy(config, lab=self._lab)
            self._check(config)
        except ConfigError as error:
            self._log.error("Configuration reload refused, keeping the old one: {reason}", reason=str(error))
            return False
        warn_plain_http(config)
        previous = self._current
        self._current = build_context(
            config, self._reactor, self._pool, self._data_dir, previous, metrics=self._metrics
        )
        self._retired.append(previous)
        self._log.info("Configuration reloaded from {path}", path=path)
        for listener in self._on_reload:
            listener()
        if not self._sweeper.running:
            self._sweeper.start(RETIRED_SWEEP_INTERVAL, now=True).addErrback(
                lambda failure: self._log.failure("Releasing old clients stopped", failure)
            )
        return True

    def _release_idle(self) -> Deferred[None] | None:
        """Release the clients of replaced contexts no action uses any more."""
        idle = [ctx for ctx in self._retired if not self._in_use(ctx)]
        if not idle:
            return None
        self._retired = [ctx for ctx in self._retired if ctx not in idle]
        if not self._retired:
            self._sweeper.stop()
        return Deferred.fromCoroutine(close_contexts(idle, keep=[self._current, *self._retired]))

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(
                signal.SIGHUP, lambda _signum, _frame: self._reactor.callFromThread(self.reload)
            )

    def stopService(self) -> Any:
        super().stopService()
        if hasattr(signal, "SIGHUP") and self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
        if self._sweeper.running:
            self._sweeper.stop()
        return Deferred.fromCoroutine(self._release())

    async def _release(self) -> None:
        await close_contexts([*self._retired, self._current])
        await self._pool.closeCachedConnections()


class StoreService(Service):
    """
    Opens the results store at start and closes it, writes flushed, at stop;
    meanwhile forgets, every hour, finished results older than C{keep_days}
    (0 keeps everything).
    """

    _log = Logger()

    def __init__(self, store: IResultStore, reactor: Any, keep_days: float) -> None:
        self.store = store
        self._reactor = reactor
        self._keep_days = keep_days
        self._pruning: LoopingCall | None = None
        self._opened: Failure | bool = False
        self._waiting: list[Deferred[None]] = []

    def when_open(self) -> Deferred[None]:
        """
        Fires once the store is open (a PostgreSQL store opens over the
        network); fails, after the reactor is told to stop, if it cannot be.
        """
        if isinstance(self._opened, Failure):
            return fail(self._opened)
        if self._opened:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def startService(self) -> None:
        opening = maybeDeferred(self.store.open)
        opening.addCallbacks(self._open, self._not_open)

    def _not_open(self, failure: Failure) -> None:
        # For SQLite make_service checked the file: this is a race with something else.
        self._log.critical("slaveapi: not starting: {reason}", reason=failure.getErrorMessage())
        self._reactor.callWhenRunning(self._reactor.stop)
        self._opened = failure
        for waiting in self._waiting:
            waiting.errback(failure)
        self._waiting.clear()

    def _open(self, _: object) -> None:
        super().startService()
        self._opened = True
        for waiting in self._waiting:
            waiting.callback(None)
        self._waiting.clear()
        if self._keep_days > 0:
            self._pruning = LoopingCall(self._prune)
            self._pruning.clock = self._reactor
            self._pruning.start(PRUNE_INTERVAL, now=True).addErrback(
                lambda failure: self._log.failure("Pruning old results stopped", failure)
            )

    def _prune(self) -> Deferred[int]:
        return self.store.prune(self._reactor.seconds() - self._keep_days * 86400)

    def stopService(self) -> Any:
        if not self.running:
            return None
        super().stopService()
        if self._pruning is not None and self._pruning.running:
            self._pruning.stop()
        return self.store.close()


class LogFileService(Service):
    """Writes the log to C{[logging] file}, rotated by size, at C{[logging] level}."""

    def __init__(self, config: LoggingConfig) -> None:
        self._config = config
        self._observer: Any = None
        self._file: LogFile | None = None

    def startService(self) -> None:
        super().startService()
        if not self._config.file:
            return
        directory, name = os.path.split(self._config.file)
        self._file = LogFile(
            name, directory or ".", rotateLength=self._config.maxsize, maxRotatedFiles=self._config.maxfiles
        )
        predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[self._config.level])
        output = textFileLogObserver(self._file)  # type: ignore[arg-type]  # file-like, not an IO subclass
        self._observer = FilteringLogObserver(output, [predicate])
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def warn_plain_http(config: Config) -> None:
    """One warning per section whose credentials C{allow_plain_http} lets travel in clear text."""
    log = Logger(namespace="slaveapi.config")
    for plain in plain_http_credentials(config):
        if plain.allowed:
            log.warn(
                "[{section}] allow_plain_http = true: {credential} is sent over plain http to {where}",
                section=plain.section,
                key=plain.key,
                credential=plain.credential,
                where=plain.where,
            )


def check_reactor(reactor: Any) -> None:
    """Refuse any reactor but asyncio's: pysnmp 7 runs only on asyncio."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise StartupError(
            f"slaveapi needs the asyncio reactor, not {type(reactor).__name__}: "
            "run it as 'twistd -r asyncio slaveapi ...'"
        )


def make_service(options: ServiceOptions, reactor: Any) -> OrderedMultiService:
    """
    Assemble SlaveAPI.

    @raise StartupError: for a reactor, configuration or listening address
        that cannot work, a C{--data} directory another instance holds, or a
        results database that cannot be read or written.
    """
    check_reactor(reactor)
    try:
        data_dir = ensure_data_dir(options.data)
        lock = lock_data_dir(data_dir)
    except DataDirError as error:
        raise StartupError(str(error)) from None
    try:
        return _assemble(options, reactor, data_dir, lock)
    except BaseException:
        lock.release()
        raise


@dataclass
class _Stores:
    """
    Where this instance keeps results and verdicts: SQLite files under
    C{--data} (alone), or one PostgreSQL database shared with other instances
    (C{cluster} and C{membership} then say how they agree).
    """

    results: IResultStore
    health: IHealthStore
    cluster: PostgreSQLCluster | None = None
    membership: Membership | None = None
    sweep_lease: SweepLease | None = None
    heartbeats: Database | None = None


def _sqlite_stores(reactor: Any, data_dir: str) -> _Stores:
    store_path = default_store_path(data_dir)
    try:
        prepare_store_file(store_path, reactor.seconds(), Logger(namespace="slaveapi.store"))
    except (StoreUnreadable, StoreUnavailable) as error:
        raise StartupError(str(error)) from None
    return _Stores(SQLiteResultStore(store_path, reactor), SQLiteHealthStore(default_health_path(data_dir), reactor))


def _postgresql_stores(config: Config, reactor: Any, adopt: Callable[[ActionResult, dict[str, str]], None]) -> _Stores:
    password = config.credentials.postgresql_password
    settings = DatabaseSettings(
        config.store.url,
        password=password.reveal() if password is not None else None,
        pool_size=config.store.pool_size,
        statement_timeout=config.store.statement_timeout,
    )
    database = Database(settings)
    # Reads have a pool of their own, so that a burst of writes never makes a GET wait behind it.
    reader = Database(dataclasses.replace(settings, pool_size=max(2, config.store.pool_size // 2)))
    # Heartbeats have a connection of their own: a busy pool must not make a live instance look stopped.
    heartbeats = Database(dataclasses.replace(settings, pool_size=1))
    instance = config.store.instance or socket.gethostname()
    results = PostgreSQLResultStore(database, instance, reactor, reader=reader)

    def fenced(reason: str) -> None:
        Logger(namespace="slaveapi.cluster").critical("slaveapi: stopping: {reason}", reason=reason)
        reactor.callWhenRunning(reactor.stop)

    return _Stores(
        results,
        PostgreSQLHealthStore(database, reactor),
        cluster=PostgreSQLCluster(database, results, instance, reactor),
        membership=Membership(heartbeats, instance, reactor, config.store.lease, adopt=adopt, fenced=fenced),
        heartbeats=heartbeats,
        sweep_lease=SweepLease(database, instance, reactor),
    )


class ClusterService(Service):
    """
    With several instances on one database: once the store is open, listens
    for the others' changes and joins the cluster (heartbeats, failover);
    at stop, after the processor has stopped, leaves it. A start that fails
    stops the service with one line.
    """

    _log = Logger(namespace="slaveapi.cluster")

    def __init__(self, stores: _Stores, opened: Callable[[], Deferred[None]], reactor: Any) -> None:
        self._stores = stores
        self._opened = opened
        self._reactor = reactor
        self._joined = False
        self._joining: Deferred[None] | None = None
        #: Fires once this instance is in the cluster (or has failed to join).
        self.joined: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self._joining = Deferred.fromCoroutine(self._join())
        self._joining.addCallbacks(lambda _: self.joined.callback(None), self._failed)

    async def _join(self) -> None:
        stores = self._stores
        assert stores.cluster is not None and stores.heartbeats is not None and stores.membership is not None  # noqa: S101  # made so by _postgresql_stores
        await self._opened()
        await stores.cluster.start()
        await as_deferred(stores.heartbeats.open())
        await stores.membership.start()
        self._joined = True

    def _failed(self, failure: Failure) -> None:
        self._log.critical("slaveapi: not starting: {reason}", reason=failure.getErrorMessage())
        self._reactor.callWhenRunning(self._reactor.stop)
        self.joined.errback(failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # A stop while joining waits for the join (bounded by the database's timeouts), then leaves.
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        if self._joining is not None and not self._joining.called:
            with contextlib.suppress(Exception):
                await self._joining
        if self._joined and self._stores.membership is not None:
            self._joined = False
            await self._stores.membership.stop()
        if self._stores.heartbeats is not None:
            await as_deferred(self._stores.heartbeats.close())


def _assemble(options: ServiceOptions, reactor: Any, data_dir: str, lock: DataDirLock) -> OrderedMultiService:
    """Everything but the data directory's lock, which the caller holds."""
    top = OrderedMultiService()
    # The first child stops last: the directory is given up once all else has stopped.
    DataDirLockService(lock).setServiceParent(top)
    config_path = options.config
    ready: Deferred[None] = succeed(None)
    processors: list[ActionProcessor] = []

    def adopt(result: ActionResult, fields: dict[str, str]) -> None:
        processors[0].adopt(result, ACTIONS.get(result.action), fields)

    stores: _Stores | None = None
    if options.lab is not None:
        # The lab's configuration keeps results in SQLite: its file is checked before the lab starts.
        stores = _sqlite_stores(reactor, data_dir)
        config_path, ready = _start_lab(options, reactor, data_dir, top)
    assert config_path is not None  # noqa: S101  # the options require --config or --lab
    try:
        config = load_config(config_path)
        check_host_key_policy(config, lab=options.lab is not None)
    except ConfigError as error:
        raise StartupError(str(error)) from None
    warn_plain_http(config)
    listen = options.listen or config.server.listen
    try:
        endpoint = serverFromString(reactor, with_backlog(listen))
    except (ValueError, KeyError, TypeError) as error:
        raise StartupError(f"--listen {listen}: not a server endpoint string ({error})") from None
    try:
        check_anonymous_exposure(config, listen)
    except ConfigError as error:
        raise StartupError(str(error)) from None

    LogFileService(config.logging).setServiceParent(top)
    if stores is None:
        stores = _postgresql_stores(config, reactor, adopt) if config.store.postgresql else _sqlite_stores(
            reactor, data_dir
        )
    store = stores.results
    store_service = StoreService(store, reactor, config.store.keep_days)
    store_service.setServiceParent(top)
    if stores.cluster is not None:
        # Before the processor: it leaves the cluster after the processor has stopped.
        cluster_service = ClusterService(stores, store_service.when_open, reactor)
        cluster_service.setServiceParent(top)
        ready = gatherResults([ready, cluster_service.joined], consumeErrors=True).addCallback(lambda _: None)
    else:
        ready = gatherResults([ready, store_service.when_open()], consumeErrors=True).addCallback(lambda _: None)
    metrics = ServiceMetrics()
    holder = ContextHolder(
        config,
        reactor,
        data_dir,
        lab=options.lab is not None,
        check=lambda new: check_anonymous_exposure(new, listen),
        metrics=metrics,
    )
    holder.setServiceParent(top)
    events = ResultEvents(max_bytes=config.events.buffer_bytes)
    metrics.follow(events)
    # Stopping, it gives what is unsent one last attempt within [webhooks] timeout, listening
    # meanwhile: the finish of actions the processor cancels as it stops is delivered that way.
    WebhookSender(events, lambda: holder.context().config, reactor).setServiceParent(top)
    processor = ActionProcessor(
        store,
        holder.context,
        config.server.concurrency,
        reactor,
        timeouts=lambda: dict(holder.context().config.timeouts),
        limits=lambda: server_limits(holder.context().config.server),
        events=events,
        cluster=stores.cluster,
    )
    processors.append(processor)
    processor.setServiceParent(top)
    holder.watch(processor.uses)
    metrics.watch_processor(processor.queued, processor.in_flight)
    health_store = stores.health
    # After the processor: it stops before it, so no reboot is submitted to a stopped processor.
    health = HealthService(
        health_store,
        holder.context,
        reactor,
        Remediation(processor, store, health_store, reactor),
        ready=ready,
        lease=stores.sweep_lease,
    )
    health.setServiceParent(top)
    metrics.watch_health(health_store, VERDICTS)
    holder.watch(health.uses)
    holder.on_reload(health.reloaded)
    web = SlaveAPIWeb(
        processor, store, holder.context, health=health_store, events=events, clock=reactor, metrics=metrics
    )
    # Stopped right after the port closes: open event streams end.
    web.streams.setServiceParent(top)
    site = GatedSite(web.resource(), lambda: holder.context().config, reactor)
    ListenWhenReady(endpoint, site, ready, reactor).setServiceParent(top)
    return top


def _start_lab(
    options: ServiceOptions, reactor: Any, data_dir: str, top: OrderedMultiService
) -> tuple[str, Deferred[None]]:
    """Start the lab; the path of the ini pointing at it, and when every part of it answers."""
    from slaveapi.lab import Lab, LabService

    lab_dir = os.path.join(data_dir, "lab")
    os.makedirs(lab_dir, exist_ok=True)
    lab = Lab.start(
        reactor,
        slaves=options.lab or 0,
        workdir=lab_dir,
        boot_time=options.lab_boot_time,
        health_interval=options.lab_health_interval,
    )
    LabService(lab).setServiceParent(top)
    ini = lab.write_config(lab_dir, listen=options.listen or "tcp:9999:interface=127.0.0.1")
    return ini, lab.ready()
