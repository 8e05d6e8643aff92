"""
A throwaway, real PostgreSQL server for tests: its own cluster in a temporary
directory, on a free loopback port, started and stopped by PID.

The PostgreSQL results store is tested against a real server rather than a
fake, since what matters there (transactions, locking, SQL dialect) is what a
fake would get wrong. Starting a cluster costs a second or two, so a test
session starts one (L{ThrowawayPostgres.start}, blocking, from a pytest
session fixture: never from the reactor) and gives each test its own empty
database (L{ThrowawayPostgres.create_database}), which is cheap.

The cluster trades durability for speed (C{fsync=off} and friends): its data
is thrown away with it. initdb refuses to run as root, so under root the
cluster is made and run as the C{postgres} system user that Debian's
C{postgresql} package creates.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

#: Where Debian's postgresql-<N> packages put the server binaries.
DEBIAN_POSTGRES_ROOT = "/usr/lib/postgresql"
#: The system user the server runs as when the tests run as root.
POSTGRES_SYSTEM_USER = "postgres"

_SUPERUSER = "slaveapi_test"
_DATABASE = "slaveapi"
_HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 2
_POLL_INTERVAL = 0.1
_STOP_TIMEOUT = 30.0
_KILL_TIMEOUT = 10.0
_INITDB_TIMEOUT = 120.0
_LOG_TAIL_LINES = 30
# A Unix socket path (<dir>/.s.PGSQL.<port>) must fit in sun_path (108 bytes).
_MAX_SOCKET_DIR = 80
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_postgres_bin() -> str | None:
    """
    The newest C{/usr/lib/postgresql/<N>/bin} that holds C{initdb} and
    C{postgres}, or C{None} when no PostgreSQL server is installed.
    """
    root = Path(DEBIAN_POSTGRES_ROOT)
    if not root.is_dir():
        return None
    found: list[tuple[tuple[int, ...], Path]] = []
    for version_dir in root.iterdir():
        bin_dir = version_dir / "bin"
        if not all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres")):
            continue
        try:
            version = tuple(int(part) for part in version_dir.name.split("."))
        except ValueError:
            continue
        found.append((version, bin_dir))
    return str(max(found)[1]) if found else None


@dataclass
class ThrowawayPostgres:
    """
    A running throwaway PostgreSQL server; start one with L{start}, end it with
    L{stop}.

    @ivar host: Always C{127.0.0.1}; the server listens on loopback only.
    @ivar port: The TCP port it listens on.
    @ivar user: Its superuser.
    @ivar password: That superuser's password (random per server).
    @ivar database: A database made at start, C{slaveapi}.
    @ivar pid: The PID of the C{postgres} server process itself.
    """

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    pid: int
    _process: subprocess.Popen[bytes] = field(repr=False)
    _cluster_dir: str = field(repr=False)
    _log_path: str = field(repr=False)
    #: Where this server's lines start in the log (a log may hold an earlier try's).
    _log_start: int = field(repr=False)

    @classmethod
    def start(cls, workdir: str) -> ThrowawayPostgres:
        """
        Make a fresh cluster and start a server on it; return once it accepts
        connections. Blocks for a few seconds: call it from a fixture, not
        from the reactor.

        @param workdir: A directory of the caller's; the server log
            (C{postgres.log}) goes there, and the cluster too unless the tests
            run as root (then the cluster is in a directory of the system temp
            directory, which the C{postgres} user can reach).
        @raise RuntimeError: PostgreSQL is not installed, or the server did not
            come up (with the end of its log).
        """
        bin_dir = find_postgres_bin()
        if bin_dir is None:
            raise RuntimeError(f"no PostgreSQL server under {DEBIAN_POSTGRES_ROOT}: install Debian's postgresql")
        run_as = _system_user() if os.geteuid() == 0 else None
        cluster_dir = tempfile.mkdtemp(prefix="slaveapi-pg-", dir=None if run_as else workdir)
        log_path = os.path.join(workdir, "postgres.log")
        password = secrets.token_urlsafe(24)
        try:
            data_dir = _initdb(bin_dir, cluster_dir, password, run_as)
            for attempt in range(2):
                port = _free_port()
                log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
                process = _launch(bin_dir, data_dir, cluster_dir, port, log_path, run_as)
                server = cls(
                    _HOST, port, _SUPERUSER, password, _DATABASE, process.pid, process, cluster_dir, log_path, log_start
                )
                try:
                    server._wait_until_ready()
                except _PortTaken:
                    if attempt == 0:
                        continue
                    raise RuntimeError(
                        f"PostgreSQL found its port taken twice:\n{_log_tail(log_path, log_start)}"
                    ) from None
                except BaseException:
                    server._end_process()
                    raise
                try:
                    server._create(_DATABASE)
                except BaseException:
                    server._end_process()
                    raise
                return server
            raise AssertionError("unreachable")
        except BaseException:
            shutil.rmtree(cluster_dir, ignore_errors=True)
            raise

    def url(self, database: str | None = None) -> str:
        """A C{postgresql://} URL for C{database} (by default L{database}), with the credentials."""
        name = self.database if database is None else database
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(name, safe='')}"
        )

    def create_database(self, name: str) -> str:
        """
        Create an empty database C{name} (lower-case letters, digits and
        underscores) and return its URL.
        """
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self._create(name)
        return self.url(name)

    def stop(self) -> None:
        """
        Stop the server (fast shutdown: clients are disconnected; killed if it
        has not ended within 30 seconds), reap it, and remove its cluster
        directory. The log in the caller's directory stays. Idempotent.
        """
        self._end_process()
        shutil.rmtree(self._cluster_dir, ignore_errors=True)

    def _end_process(self) -> None:
        if self._process.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait
        # for every client, such as a pool a test left open, to disconnect.
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=_KILL_TIMEOUT)

    def _create(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=_CONNECT_TIMEOUT) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        last_error = "none"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = _log_tail(self._log_path, self._log_start)
                if "could not bind" in tail or "Address already in use" in tail:
                    raise _PortTaken()
                raise RuntimeError(f"PostgreSQL exited with status {self._process.returncode} while starting:\n{tail}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=_CONNECT_TIMEOUT):
                    return
            except psycopg.OperationalError as error:
                # psycopg's message names host and port, never the password.
                last_error = str(error).strip()
            time.sleep(_POLL_INTERVAL)
        raise RuntimeError(
            f"PostgreSQL did not accept connections within {_STARTUP_TIMEOUT:.0f} s "
            f"(last error: {last_error}):\n{_log_tail(self._log_path, self._log_start)}"
        )


class _PortTaken(Exception):
    """The server could not listen on its port: something took it in between."""


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no {POSTGRES_SYSTEM_USER!r} user to run PostgreSQL as "
            "(initdb refuses root): install Debian's postgresql, or run the tests as another user"
        ) from None


def _uid(run_as: pwd.struct_passwd | None) -> int | None:
    return None if run_as is None else run_as.pw_uid


def _gid(run_as: pwd.struct_passwd | None) -> int | None:
    return None if run_as is None else run_as.pw_gid


def _extra_groups(run_as: pwd.struct_passwd | None) -> list[int] | None:
    # Dropping root's supplementary groups along with its uid.
    return None if run_as is None else []


def _child_env(run_as: pwd.struct_passwd | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    env["HOME"] = run_as.pw_dir if run_as is not None else os.environ.get("HOME", "/")
    return env


def _initdb(bin_dir: str, cluster_dir: str, password: str, run_as: pwd.struct_passwd | None) -> str:
    """Make a cluster in C{cluster_dir}/data whose superuser has C{password}; its path."""
    data_dir = os.path.join(cluster_dir, "data")
    pwfile = os.path.join(cluster_dir, "pwfile")
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    if run_as is not None:
        os.chown(cluster_dir, run_as.pw_uid, run_as.pw_gid)
        os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)
    command = [
        os.path.join(bin_dir, "initdb"),
        "-D",
        data_dir,
        "-U",
        _SUPERUSER,
        "-A",
        "scram-sha-256",
        f"--pwfile={pwfile}",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    ]
    try:
        result = subprocess.run(  # noqa: S603 (fixed binary paths and our own arguments)
            command,
            cwd=cluster_dir,
            env=_child_env(run_as),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=_INITDB_TIMEOUT,
            check=False,
            user=_uid(run_as),
            group=_gid(run_as),
            extra_groups=_extra_groups(run_as),
        )
    finally:
        os.unlink(pwfile)
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace")
        raise RuntimeError(f"initdb failed with status {result.returncode}:\n{output}")
    return data_dir


def _launch(
    bin_dir: str, data_dir: str, cluster_dir: str, port: int, log_path: str, run_as: pwd.struct_passwd | None
) -> subprocess.Popen[bytes]:
    """Start C{postgres} itself in the foreground (so its PID is the server's), logging to C{log_path}."""
    socket_dir = cluster_dir if len(cluster_dir) <= _MAX_SOCKET_DIR else ""
    settings = {
        "listen_addresses": _HOST,
        "unix_socket_directories": socket_dir,
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "300",
        "shared_buffers": "64MB",
    }
    command = [os.path.join(bin_dir, "postgres"), "-D", data_dir, "-p", str(port)]
    for name, value in settings.items():
        command += ["-c", f"{name}={value}"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 (fixed binary paths and our own arguments)
            command,
            cwd=cluster_dir,
            env=_child_env(run_as),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for pytest does not reach it first.
            start_new_session=True,
            user=_uid(run_as),
            group=_gid(run_as),
            extra_groups=_extra_groups(run_as),
        )
    return process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def _log_tail(log_path: str, start: int) -> str:
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            lines = log.read().decode("utf-8", "replace").splitlines(keepends=True)
    except OSError as error:
        return f"(no server log: {error})"
    return "".join(lines[-_LOG_TAIL_LINES:]).rstrip()
