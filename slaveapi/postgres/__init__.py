"""
The PostgreSQL store, for several SlaveAPI instances sharing one database.

One instance alone keeps its results in SQLite (L{slaveapi.store}). Several
instances share a PostgreSQL database instead: the results
(L{PostgreSQLResultStore}, the same L{slaveapi.store.IResultStore} and
L{slaveapi.store.IResultReads} as the SQLite store), and what the instances
agree on through it (L{PostgreSQLCluster}, L{slaveapi.coordination.ICluster}:
single flight and machine locks; L{Membership}: heartbeats and failover), and
the health loop's verdicts and sweep lease (L{PostgreSQLHealthStore},
L{SweepLease}). L{Database} is the bounded connection pool they all go through.
"""

from slaveapi.postgres._cluster import PostgreSQLCluster
from slaveapi.postgres._database import Database, DatabaseSettings, DatabaseUnavailable, as_deferred
from slaveapi.postgres._health import PostgreSQLHealthStore, SweepLease
from slaveapi.postgres._membership import InstanceNameInUse, Membership
from slaveapi.postgres._results import DatabaseSchemaTooNew, PostgreSQLResultStore

__all__ = [
    "Database",
    "DatabaseSchemaTooNew",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "InstanceNameInUse",
    "Membership",
    "PostgreSQLCluster",
    "PostgreSQLHealthStore",
    "PostgreSQLResultStore",
    "SweepLease",
    "as_deferred",
]
