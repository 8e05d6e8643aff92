"""
The PostgreSQL schema and its versioned migrations.

Each migration is a version number and the statements that take a database
from the version before it; C{schema_version} holds the version a database
is at. At start-up every instance runs L{migrate}: under a transaction-level
advisory lock (so that instances starting together never migrate twice), it
applies the migrations the database lacks, each in its own transaction with
its version, and refuses a database newer than the code (an instance of an
older release must not write to a schema it does not know). Migrations only
add: a release that needs a column dropped does it a release later, once no
instance of the release before reads it, so that instances can be upgraded
one at a time.

Request ids come from a sequence, which never hands out a number twice, not
even after a failed transaction or a prune: ids also key things outside
SlaveAPI (an EC2 loan's C{ClientToken}).

While a single-flight action is pending or running, its result's C{flight}
column holds its machine and action; a unique index over C{flight} is what
makes a second request for it, through any instance, join the first. It is
cleared when the result finishes.

Machine and action names sort byte by byte (C{COLLATE "C"}), as in SQLite,
so that results are listed in the same order whatever the database's locale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

#: The advisory lock key instances take while migrating ("slaveapi" in ASCII, as a number).
_MIGRATION_LOCK = 0x736C617665617069


@dataclass(frozen=True)
class Migration:
    """What takes a database from version C{version - 1} to C{version}."""

    version: int
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            "CREATE SEQUENCE requestids AS bigint",
            """
            CREATE TABLE results (
                requestid bigint PRIMARY KEY,
                slave text COLLATE "C" NOT NULL,
                action text COLLATE "C" NOT NULL,
                state smallint NOT NULL,
                text text NOT NULL,
                request_timestamp bigint NOT NULL,
                start_timestamp bigint NOT NULL,
                finish_timestamp bigint NOT NULL,
                client text,
                instance text NOT NULL,
                flight text
            )
            """,
            "CREATE UNIQUE INDEX results_in_flight ON results (flight) WHERE flight IS NOT NULL",
            "CREATE INDEX results_by_slave_action ON results (slave, action, requestid)",
            "CREATE INDEX results_by_action ON results (action, requestid)",
            "CREATE INDEX results_by_slave ON results (slave, requestid)",
            "CREATE INDEX results_by_state ON results (state, requestid)",
            "CREATE INDEX results_by_request_timestamp ON results (request_timestamp)",
            "CREATE INDEX results_unfinished ON results (instance, state) WHERE state IN (0, 1)",
            "CREATE INDEX results_finished ON results (finish_timestamp) WHERE state IN (2, 3)",
            "CREATE TABLE result_fields (requestid bigint PRIMARY KEY, fields text NOT NULL)",
            """
            CREATE TABLE steps (
                requestid bigint NOT NULL,
                n integer NOT NULL,
                heading text NOT NULL,
                started double precision NOT NULL,
                finished double precision,
                outcome text,
                PRIMARY KEY (requestid, n)
            )
            """,
            """
            CREATE TABLE instances (
                name text PRIMARY KEY,
                started double precision NOT NULL,
                heartbeat double precision NOT NULL
            )
            """,
            """
            CREATE TABLE machine_locks (
                machine text PRIMARY KEY,
                requestid bigint NOT NULL,
                instance text NOT NULL,
                taken double precision NOT NULL
            )
            """,
            "CREATE INDEX machine_locks_by_instance ON machine_locks (instance)",
            """
            CREATE TABLE leases (
                name text PRIMARY KEY,
                holder text NOT NULL,
                expires double precision NOT NULL
            )
            """,
            """
            CREATE TABLE health (
                slave text PRIMARY KEY,
                record text NOT NULL
            )
            """,
            """
            CREATE TABLE health_reboots (
                slave text PRIMARY KEY,
                at double precision NOT NULL
            )
            """,
            """
            CREATE TABLE health_sweeps (
                id smallint PRIMARY KEY CHECK (id = 1),
                finished double precision NOT NULL
            )
            """,
        ),
    ),
)

#: The schema version this code writes.
CURRENT_VERSION = MIGRATIONS[-1].version


class SchemaTooNew(Exception):
    """The database was migrated by a newer SlaveAPI; the message says so in one line."""


async def schema_version(connection: AsyncConnection[Any]) -> int:
    """The version the database is at (0: never migrated)."""
    await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    cursor = await connection.execute("SELECT max(version) FROM schema_version")
    row = await cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def migrate(connection: AsyncConnection[Any], migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """
    Bring the database up to the last of C{migrations}.

    @return: the versions applied (none when it was up to date).
    @raise SchemaTooNew: if the database is at a later version than the code knows.
    """
    newest = migrations[-1].version if migrations else 0
    applied: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        version = await schema_version(connection)
        if version > newest:
            raise SchemaTooNew(
                f"the database's schema is version {version}, newer than this SlaveAPI's ({newest}):"
                " upgrade this instance to the release the others run"
            )
        for migration in migrations:
            if migration.version <= version:
                continue
            async with connection.transaction():
                for statement in migration.statements:
                    await connection.execute(statement)
                await connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (migration.version,))
            applied.append(migration.version)
    return applied
