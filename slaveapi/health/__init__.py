"""
The fleet health loop: which machines are down before anyone asks.

Every C{[health] interval} each machine slavealloc lists as enabled is
checked (reachable, SSH login, buildbot state, power and BMC health where a
BMC exists) and gets a verdict, C{ok}, C{degraded}, C{down} or
C{unknown}, with its evidence, since when and when last checked. Verdicts
are stored (they survive a restart) and served by C{GET /health} and
C{GET /slaves/<slave>/health}; with C{[health] remediate}, machines down
long enough are rebooted within limits. See C{docs/power-and-health.rst}.
"""

from slaveapi.health._checks import check_machine
from slaveapi.health._remediation import HEALTH_CLIENT, Remediation
from slaveapi.health._store import HealthStoreError, IHealthStore, SQLiteHealthStore, default_health_path
from slaveapi.health._sweep import HealthService
from slaveapi.health._verdict import (
    BAD,
    DEGRADED,
    DOWN,
    GOOD,
    OK,
    UNCHECKED,
    UNKNOWN,
    VERDICTS,
    Evidence,
    HealthRecord,
    never_checked,
    next_record,
    not_checked,
    verdict_of,
)

__all__ = [
    "BAD",
    "DEGRADED",
    "DOWN",
    "GOOD",
    "HEALTH_CLIENT",
    "OK",
    "UNCHECKED",
    "UNKNOWN",
    "VERDICTS",
    "Evidence",
    "HealthRecord",
    "HealthService",
    "HealthStoreError",
    "IHealthStore",
    "Remediation",
    "SQLiteHealthStore",
    "check_machine",
    "default_health_path",
    "never_checked",
    "next_record",
    "not_checked",
    "verdict_of",
]
