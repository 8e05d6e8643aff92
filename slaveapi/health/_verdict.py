"""
Evidence about one machine, and the one verdict it adds up to.

Each check of a sweep (L{slaveapi.health._checks}) yields L{Evidence}: the
check's name, C{ok}, C{bad} or C{unknown}, and one line saying what was
seen. L{verdict_of} combines them by these rules, in order:

  1. C{down}: the machine does not answer the probe. Only the probe makes
     a machine C{down}: a BMC reading alone (power off) never does, since
     a wrong reading would otherwise get an answering machine rebooted;
  2. C{unknown}: the probe could not be made, or the machine could not be
     looked up (an error of ours, not the machine's);
  3. C{degraded}: it answers, but some other check is C{bad} (SSH login
     fails, the worker is not connected to a master that can say, the BMC
     reports the power off or Warning or Critical, the buildbot is stopped
     or idle past C{[health] max_idle});
  4. C{ok} otherwise: a check that could not be made does not make a
     machine that answers any worse.

L{next_record} keeps C{since} while the verdict repeats, so it says when
the current verdict started; after a gap in the sweeps (SlaveAPI or the
loop stopped for a while) it starts afresh.
L{not_checked} is the record of a machine a sweep could not check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

OK = "ok"
DEGRADED = "degraded"
DOWN = "down"
UNKNOWN = "unknown"
#: Every verdict, in the order C{GET /health} counts them.
VERDICTS: tuple[str, ...] = (OK, DEGRADED, DOWN, UNKNOWN)

#: What one check found: fine, wrong, or could not tell.
GOOD = "ok"
BAD = "bad"
UNCHECKED = "unknown"

#: Checks whose C{bad} means the machine is down.
_DOWN_WHEN_BAD = frozenset({"probe"})
#: Checks whose C{unknown} means nothing can be said of the machine.
_UNKNOWN_WHEN_UNCHECKED = frozenset({"probe", "lookup", "slavealloc", "check"})


@dataclass(frozen=True)
class Evidence:
    """
    What one check found.

    @ivar check: C{lookup}, C{probe}, C{ssh}, C{buildbot}, C{worker},
        C{power}, C{bmc_health} (or C{slavealloc}, C{check} for a sweep's
        own failures).
    @ivar outcome: L{GOOD}, L{BAD} or L{UNCHECKED}.
    @ivar detail: one line saying what was seen.
    """

    check: str
    outcome: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "outcome": self.outcome, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        return cls(str(data["check"]), str(data["outcome"]), str(data["detail"]))


@dataclass(frozen=True)
class HealthRecord:
    """
    The verdict on one machine.

    @ivar name: the machine's canonical name (lower case, as results are filed).
    @ivar since: when this verdict started (Unix seconds); C{None} never checked.
    @ivar checked_at: when the machine was last checked; C{None} never.
    @ivar pool: its slavealloc pool, for filtering and the per-pool reboot cap.
    """

    name: str
    verdict: str
    evidence: tuple[Evidence, ...]
    since: float | None
    checked_at: float | None
    pool: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "evidence": [item.to_json() for item in self.evidence],
            "since": self.since,
            "checked_at": self.checked_at,
            "pool": self.pool,
        }


def never_checked(name: str, pool: str | None = None) -> HealthRecord:
    """The record of a machine no sweep has checked yet: C{unknown}, no evidence, no times."""
    return HealthRecord(name=name, verdict=UNKNOWN, evidence=(), since=None, checked_at=None, pool=pool)


def verdict_of(evidence: Iterable[Evidence]) -> str:
    """The verdict the evidence adds up to (the rules are in the module docstring)."""
    items = list(evidence)
    if not items:
        return UNKNOWN
    if any(item.outcome == BAD and item.check in _DOWN_WHEN_BAD for item in items):
        return DOWN
    if any(item.outcome == UNCHECKED and item.check in _UNKNOWN_WHEN_UNCHECKED for item in items):
        return UNKNOWN
    if any(item.outcome == BAD for item in items):
        return DEGRADED
    return OK


def next_record(
    previous: HealthRecord | None,
    name: str,
    pool: str | None,
    evidence: Iterable[Evidence],
    now: float,
    continued: bool = True,
) -> HealthRecord:
    """
    The record after a check at C{now}.

    @param continued: whether C{previous} comes from the sweep just before,
        with no gap between them. C{since} is kept while the verdict stays
        the same, unless there was a gap: nobody knows what the machine did
        meanwhile.
    """
    found = tuple(evidence)
    verdict = verdict_of(found)
    since = now
    if continued and previous is not None and previous.verdict == verdict and previous.since is not None:
        since = previous.since
    return HealthRecord(name=name, verdict=verdict, evidence=found, since=since, checked_at=now, pool=pool)


def not_checked(previous: HealthRecord, evidence: Iterable[Evidence], now: float) -> HealthRecord:
    """
    C{previous} turned C{unknown} by a sweep that could not check its
    machine, C{evidence} saying why: C{checked_at} stays when it was last
    really checked.
    """
    since = previous.since if previous.verdict == UNKNOWN and previous.since is not None else now
    return dataclasses.replace(previous, verdict=UNKNOWN, evidence=tuple(evidence), since=since)
