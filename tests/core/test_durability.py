"""
Results are shown only once written: a full disk, a slow disk, a corrupt
database, private files and one instance per data directory.

The store runs on connections the test controls (L{_Disk}): their writes can
fail as on a full disk, or wait until the test lets them through. The HTTP
API is served on a loopback port and asked with treq; the processor runs on
a L{Clock}, so the retries of a final write happen when the test advances it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.web.server import Site

from slaveapi.actions import Action, ActionRun
from slaveapi.datadir import LOCK_FILE, DataDirBusy, ensure_data_dir, lock_data_dir
from slaveapi.processor import FINAL_WRITE_MAX_DELAY, FINAL_WRITE_PATIENCE, ActionProcessor
from slaveapi.results import FAILURE, PENDING, RUNNING, SUCCESS
from slaveapi.service import ServiceOptions, StartupError, make_service
from slaveapi.store import (
    INTERRUPTED_TEXT,
    SQLiteResultStore,
    StoreUnavailable,
    StoreUnreadable,
    prepare_store_file,
)
from slaveapi.web.routes import SlaveAPIWeb

_DISK_FULL = "database or disk is full"

#: Real seconds a held write waits for the test at most, so that a failing test cannot hang.
_HOLD_LIMIT = 30.0


def _is_write(sql: str) -> bool:
    return sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")


class _Disk:
    """
    What the store's writes meet: C{full} makes them fail as SQLite does on a
    full disk; C{hold_finished} makes the write of a finished result wait
    until C{release} (on the store's writer thread, as a slow disk would).
    """

    def __init__(self) -> None:
        self.full = False
        self.hold_finished = False
        self.holding = threading.Event()
        self._released = threading.Event()
        self.statements: list[str] = []

    def connect(self, path: str, **kwargs: Any) -> _Connection:
        return _Connection(sqlite3.connect(path, **kwargs), self)

    def release(self) -> None:
        self.hold_finished = False
        self._released.set()

    def before(self, sql: str, params: Any) -> None:
        self.statements.append(" ".join(sql.split()))
        if not _is_write(sql):
            return
        if self.full:
            raise sqlite3.OperationalError(_DISK_FULL)
        if self.hold_finished and params and params[3] in (SUCCESS, FAILURE):
            self.holding.set()
            self._released.wait(_HOLD_LIMIT)


class _Connection:
    """An SQLite connection whose statements pass through a L{_Disk} first."""

    def __init__(self, db: sqlite3.Connection, disk: _Disk) -> None:
        self._db = db
        self._disk = disk

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._disk.before(sql, params)
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        self._disk.before(sql, None)
        return self._db.executemany(sql, rows)

    def executescript(self, script: str) -> Any:
        return self._db.executescript(script)

    def close(self) -> None:
        self._db.close()


class _Gated:
    """
    An action whose runs wait for the test: C{runs[n]} is the gate of the
    nth run, C{started[n]} fires (on the next reactor turn) once it began.
    """

    def __init__(self, most: int = 8) -> None:
        self.runs: list[Deferred[Any]] = []
        self.started: list[Deferred[None]] = [Deferred() for _ in range(most)]

    async def __call__(self, run: ActionRun) -> Any:
        from twisted.internet import reactor

        gate: Deferred[Any] = Deferred()
        self.runs.append(gate)
        reactor.callLater(0, self.started[len(self.runs) - 1].callback, None)
        return await gate


async def _within(d: Deferred[Any], seconds: float = 10.0) -> Any:
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


class _Service:
    """A store on a controlled disk, a processor on a clock, and the HTTP API on a loopback port."""

    def __init__(self, store: SQLiteResultStore, disk: _Disk, clock: Clock, context_box: SimpleNamespace) -> None:
        self.store = store
        self.disk = disk
        self.clock = clock
        self.action = _Gated()
        self.processor = ActionProcessor(store, lambda: context_box.context, concurrency=4, reactor=clock)
        actions = [
            Action(name="gated_action", run=self.action, routes=("gated",)),
            Action(name="locked_action", run=self.action, exclusive=True, routes=("locked",)),
            Action(name="quick_action", run=_quick, routes=("quick",)),
        ]
        self.app = SlaveAPIWeb(self.processor, store, lambda: context_box.context, actions=actions)
        self.url = ""
        self.port: Any = None

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        response = await treq.request(method, self.url + path, timeout=10, **kwargs)
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return response.code, await response.json(), response.headers


async def _quick(run: ActionRun) -> str:
    return "done"


@pytest_twisted.async_yield_fixture
async def service(tmp_path: Any, clock: Clock, context_box: SimpleNamespace) -> AsyncIterator[_Service]:
    from twisted.internet import reactor

    disk = _Disk()
    store = SQLiteResultStore(str(tmp_path / "results.sqlite"), reactor, connect=disk.connect)  # type: ignore[arg-type]  # a sqlite3.Connection look-alike
    store.open()
    under_test = _Service(store, disk, clock, context_box)
    under_test.port = reactor.listenTCP(0, Site(under_test.app.resource()), interface="127.0.0.1")  # type: ignore[arg-type]  # Twisted's ServerFactory generics
    under_test.url = f"http://127.0.0.1:{under_test.port.getHost().port}"
    try:
        yield under_test
    finally:
        disk.full = False
        disk.release()
        for gate in under_test.action.runs:
            if not gate.called:
                gate.callback("released")
        await under_test.port.stopListening()
        # Bounded in real time: the processor's own grace period runs on the test's clock.
        await _within(under_test.processor.stopService())
        await _within(store.close())


async def _results(service: _Service) -> dict[str, Any]:
    code, body, _ = await service.request("GET", "/results")
    assert code == 200
    return body


# -- a full disk ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_post_that_cannot_be_recorded_is_a_503_and_leaves_no_ghost(service: _Service) -> None:
    code, first, _ = await service.request("POST", "/slaves/bld-1/actions/quick", data={"waittime": "5"})
    assert (code, first["state"]) == (200, SUCCESS)

    service.disk.full = True
    code, error, headers = await service.request("POST", "/slaves/bld-1/actions/quick", data={"waittime": "5"})
    assert code == 503
    assert error["error"] == "store_unavailable"
    assert _DISK_FULL in error["msg"] and "retry later" in error["msg"]
    assert set(error) == {"error", "msg"}
    assert headers.getRawHeaders(b"retry-after") == [b"30"]
    # Nothing was queued, and no request appears anywhere.
    assert service.action.runs == []
    assert await _results(service) == {"bld-1": {"quick_action": {str(first["requestid"]): _without_id(first)}}}
    code, listing, _ = await service.request("GET", "/slaves/bld-1/actions/quick")
    assert (code, list(listing["quick_action"])) == (200, [str(first["requestid"])])

    service.disk.full = False
    code, again, _ = await service.request("POST", "/slaves/bld-1/actions/quick", data={"waittime": "5"})
    assert (code, again["state"]) == (200, SUCCESS)
    assert again["requestid"] > first["requestid"]
    assert set((await _results(service))["bld-1"]["quick_action"]) == {
        str(first["requestid"]),
        str(again["requestid"]),
    }


def _without_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "requestid"}


@pytest_twisted.ensureDeferred
async def test_store_create_failing_raises_and_records_nothing(tmp_path: Any) -> None:
    from twisted.internet import reactor

    disk = _Disk()
    store = SQLiteResultStore(str(tmp_path / "r.sqlite"), reactor, connect=disk.connect)  # type: ignore[arg-type]  # a sqlite3.Connection look-alike
    store.open()
    try:
        disk.full = True
        with pytest.raises(StoreUnavailable, match=_DISK_FULL):
            await store.create("bld-1", "reboot", None)
        assert store.find() == []
        disk.full = False
        created = await store.create("bld-1", "reboot", None)
        assert [r.requestid for r in store.find()] == [created.requestid]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_change_that_cannot_be_written_is_not_shown(tmp_path: Any) -> None:
    from twisted.internet import reactor

    disk = _Disk()
    store = SQLiteResultStore(str(tmp_path / "r.sqlite"), reactor, connect=disk.connect)  # type: ignore[arg-type]  # a sqlite3.Connection look-alike
    store.open()
    try:
        mine = await store.create("bld-1", "reboot", None)
        mine.state, mine.text = RUNNING, "Trying SSH..."
        await store.save(mine)
        mine.state, mine.text, mine.finish_timestamp = SUCCESS, "Rebooted.", 5
        disk.full = True
        with pytest.raises(StoreUnavailable):
            await store.save(mine)
        shown = store.get(mine.requestid)
        assert shown is not mine
        assert (shown.state, shown.text, shown.finish_timestamp) == (RUNNING, "Trying SSH...", 0)
        disk.full = False
        await store.save(mine)
        # Each read is of the database: what it shows now is the row just written.
        again = store.get(mine.requestid)
        assert (again.state, again.text, again.finish_timestamp) == (SUCCESS, "Rebooted.", 5)
    finally:
        await store.close()


# -- a finished result is shown only once written ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_finished_result_shows_running_until_its_final_row_is_written(service: _Service) -> None:
    code, posted, _ = await service.request("POST", "/slaves/bld-1/actions/gated")
    assert code == 202
    requestid = posted["requestid"]
    await _within(service.action.started[0])
    one = f"/slaves/bld-1/actions/gated?requestid={requestid}"
    # A second client asks for the same machine and waits for its answer.
    answering = Deferred.fromCoroutine(
        service.request("POST", "/slaves/bld-1/actions/gated", data={"waittime": "60"})
    )
    await _within(service.action.started[1])

    service.disk.hold_finished = True
    service.action.runs[1].callback("Rebooted.")
    service.action.runs[0].callback("Rebooted too.")
    # The final row is on its way to the disk, held there by the test.
    await _within(_event(service.disk.holding))
    code, body, _ = await service.request("GET", one)
    assert (code, body["state"], body["finish_timestamp"]) == (200, RUNNING, 0)
    shown = (await _results(service))["bld-1"]["gated_action"]
    assert {entry["state"] for entry in shown.values()} == {RUNNING}
    assert not answering.called

    service.disk.release()
    code, waited, _ = await _within(answering)
    assert (code, waited["state"], waited["text"]) == (200, SUCCESS, "Rebooted.")
    await _within(service.processor.wait(posted_result(service, requestid), 60))
    code, body, _ = await service.request("GET", one)
    assert (code, body["state"], body["text"]) == (200, SUCCESS, "Rebooted too.")
    db = sqlite3.connect(service.store.path)
    try:
        rows = db.execute("SELECT requestid, state FROM results ORDER BY requestid").fetchall()
    finally:
        db.close()
    assert rows == [(requestid, SUCCESS), (waited["requestid"], SUCCESS)]


def posted_result(service: _Service, requestid: int) -> Any:
    result = service.store.get(requestid)
    assert result is not None
    return result


def _event(event: threading.Event) -> Deferred[bool]:
    """Fires once C{event} is set on another thread (waited for, bounded, in a thread)."""
    from twisted.internet.threads import deferToThread

    return deferToThread(event.wait, _HOLD_LIMIT)


@pytest_twisted.ensureDeferred
async def test_a_final_write_that_fails_is_retried_until_the_disk_has_room(service: _Service) -> None:
    _code, posted, _ = await service.request("POST", "/slaves/bld-1/actions/gated")
    requestid = posted["requestid"]
    await _within(service.action.started[0])
    waiter = service.processor.wait(posted_result(service, requestid), 7200)

    service.disk.full = True
    service.action.runs[0].callback("Rebooted.")
    await _within(service.store.flushed())
    # Still shown as running, and the POST waiting for it is not told it finished.
    assert posted_result(service, requestid).state == RUNNING
    assert not waiter.called
    for delay in (1, 2, 4):
        service.clock.advance(delay)
        await _within(service.store.flushed())
        assert posted_result(service, requestid).state == RUNNING
    assert not waiter.called

    service.disk.full = False
    service.clock.advance(8)
    await _within(waiter)
    result = posted_result(service, requestid)
    assert (result.state, result.text) == (SUCCESS, "Rebooted.")
    _code, body, _ = await service.request("GET", f"/slaves/bld-1/actions/gated?requestid={requestid}")
    assert (body["state"], body["text"]) == (SUCCESS, "Rebooted.")


@pytest_twisted.ensureDeferred
async def test_a_final_write_is_given_up_after_its_patience(service: _Service) -> None:
    from twisted.internet import reactor

    _code, posted, _ = await service.request("POST", "/slaves/bld-1/actions/gated")
    requestid = posted["requestid"]
    await _within(service.action.started[0])
    waiter = service.processor.wait(posted_result(service, requestid), 2 * FINAL_WRITE_PATIENCE)

    service.disk.full = True
    service.action.runs[0].callback("Rebooted.")
    await _within(service.store.flushed())
    waited = 0.0
    while not waiter.called and waited <= 2 * FINAL_WRITE_PATIENCE:
        service.clock.advance(FINAL_WRITE_MAX_DELAY)
        waited += FINAL_WRITE_MAX_DELAY
        await _within(service.store.flushed())
    # Waiters are let go, with the result still as last recorded.
    assert waiter.called
    assert waited <= FINAL_WRITE_PATIENCE + FINAL_WRITE_MAX_DELAY
    assert posted_result(service, requestid).state == RUNNING
    assert service.clock.getDelayedCalls() == []

    # The next start records it as interrupted, with its progress.
    service.disk.full = False
    again = SQLiteResultStore(service.store.path, reactor)
    again.open()
    try:
        restarted = again.get(requestid)
        assert restarted is not None
        assert restarted.state == FAILURE
        assert restarted.text.startswith(INTERRUPTED_TEXT)
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_an_action_whose_start_cannot_be_recorded_does_not_run(service: _Service) -> None:
    await service.request("POST", "/slaves/bld-1/actions/locked")
    await _within(service.action.started[0])
    # Recorded, then waiting for the machine's lock while the disk fills up.
    code, second, _ = await service.request("POST", "/slaves/bld-1/actions/locked")
    assert (code, second["state"]) == (202, PENDING)
    waiter = service.processor.wait(posted_result(service, second["requestid"]), 7200)

    service.disk.full = True
    service.action.runs[0].callback("done")
    await _within(service.store.flushed())
    service.clock.advance(1)
    await _within(service.store.flushed())
    assert len(service.action.runs) == 1
    assert posted_result(service, second["requestid"]).state == PENDING

    service.disk.full = False
    service.clock.advance(2)
    await _within(waiter)
    code, body, _ = await service.request("GET", f"/slaves/bld-1/actions/locked?requestid={second['requestid']}")
    assert body["state"] == FAILURE
    assert body["text"] == f"Not started: its start could not be recorded ({_DISK_FULL})."
    assert len(service.action.runs) == 1


# -- start-up ---------------------------------------------------------------------------------


def test_a_database_that_is_not_one_is_named_in_one_line(tmp_path: Any) -> None:
    path = tmp_path / "slaveapi-results.sqlite"
    path.write_bytes(b"this is not SQLite, just garbage\n" * 200)
    with pytest.raises(StoreUnreadable) as raised:
        prepare_store_file(str(path), 0, Logger())
    message = str(raised.value)
    assert message == (
        f"{path}: not a readable SlaveAPI results database (file is not a database); "
        "move it aside to start with an empty store, or restore it from a backup"
    )
    assert "\n" not in message


def test_a_stored_result_that_cannot_be_read_is_named_too(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    prepare_store_file(path, 0, Logger())
    db = sqlite3.connect(path)
    db.execute("INSERT INTO results VALUES (1, 'bld-1', 'reboot', 2, '{not json', 1, 1, 1, NULL)")
    db.commit()
    db.close()
    with pytest.raises(StoreUnreadable, match=r"r\.sqlite: not a readable SlaveAPI results database \(a stored"):
        prepare_store_file(path, 0, Logger())


def test_interrupted_results_are_failed_at_start_up(tmp_path: Any) -> None:
    path = str(tmp_path / "r.sqlite")
    prepare_store_file(path, 0, Logger())
    db = sqlite3.connect(path)
    db.execute("""INSERT INTO results VALUES (7, 'bld-1', 'reboot', 1, '"Trying SSH..."', 1, 2, 0, NULL)""")
    db.commit()
    db.close()
    prepare_store_file(path, 1234, Logger())
    db = sqlite3.connect(path)
    state, text, finished = db.execute("SELECT state, text, finish_timestamp FROM results").fetchone()
    db.close()
    assert (state, finished) == (FAILURE, 1234)
    assert "Trying SSH..." in text


@pytest_twisted.ensureDeferred
async def test_every_commit_is_synced_and_files_are_private(tmp_path: Any) -> None:
    from twisted.internet import reactor

    disk = _Disk()
    path = str(tmp_path / "r.sqlite")
    store = SQLiteResultStore(path, reactor, connect=disk.connect)  # type: ignore[arg-type]  # a sqlite3.Connection look-alike
    store.open()
    try:
        await store.create("bld-1", "reboot", None)
        assert "PRAGMA synchronous=FULL" in disk.statements
        assert "PRAGMA journal_mode=WAL" in disk.statements
        for name in (path, path + "-wal", path + "-shm"):
            assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    finally:
        await store.close()


def test_the_data_directory_is_created_private(tmp_path: Any) -> None:
    created = ensure_data_dir(str(tmp_path / "new" / "data"))
    assert stat.S_IMODE(os.stat(created).st_mode) == 0o700
    lock = lock_data_dir(created)
    try:
        assert stat.S_IMODE(os.stat(os.path.join(created, LOCK_FILE)).st_mode) == 0o600
    finally:
        lock.release()


def test_a_data_directory_is_locked_by_one_holder_at_a_time(tmp_path: Any) -> None:
    directory = ensure_data_dir(str(tmp_path / "data"))
    first = lock_data_dir(directory)
    try:
        with pytest.raises(DataDirBusy) as raised:
            lock_data_dir(directory)
        assert raised.value.pid == os.getpid()
        assert str(raised.value) == (
            f"--data {directory} is in use by another SlaveAPI (pid {os.getpid()}): "
            "stop that one first, or give this one another --data directory"
        )
    finally:
        first.release()
    again = lock_data_dir(directory)
    again.release()


def test_make_service_refuses_a_data_directory_in_use(tmp_path: Any) -> None:
    from twisted.internet import reactor

    data = ensure_data_dir(str(tmp_path / "data"))
    holder = lock_data_dir(data)
    try:
        options = ServiceOptions(config=str(tmp_path / "missing.ini"), data=data)
        with pytest.raises(StartupError, match=rf"--data {data} is in use by another SlaveAPI \(pid {os.getpid()}\)"):
            make_service(options, reactor)
    finally:
        holder.release()
    # A start-up that fails later gives the directory up again.
    with pytest.raises(StartupError, match=r"missing\.ini"):
        make_service(options, reactor)
    lock_data_dir(data).release()


def test_make_service_names_a_corrupt_database_in_one_line(tmp_path: Any) -> None:
    from twisted.internet import reactor

    data = ensure_data_dir(str(tmp_path / "data"))
    path = os.path.join(data, "slaveapi-results.sqlite")
    with open(path, "wb") as handle:
        handle.write(os.urandom(8192))
    ini = tmp_path / "slaveapi.ini"
    ini.write_text(
        "[secrets]\ncredentials_file = credentials.json\n[slavealloc]\napi_url = http://127.0.0.1:1/api\n"
        "[inventory]\napi_url = http://127.0.0.1:1/api\n[bugzilla]\napi_url = http://127.0.0.1:1/rest\n"
        "[buildapi]\napi_url = http://127.0.0.1:1/buildapi\n[slaves]\ndefault_domain = build.example.test\n"
    )
    (tmp_path / "credentials.json").write_text('{"ssh": {}}')
    with pytest.raises(StartupError) as raised:
        make_service(ServiceOptions(config=str(ini), data=data, listen="tcp:0:interface=127.0.0.1"), reactor)
    assert str(raised.value).startswith(f"{path}: not a readable SlaveAPI results database (")
    lock_data_dir(data).release()
