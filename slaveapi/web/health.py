"""
C{GET /health} (the fleet's verdicts, counted) and C{GET /slaves/<slave>/health} (one machine's).

Both answer from the health store (L{slaveapi.health}): what the last sweeps
found, never a check made for the request. A machine no sweep has checked
yet is C{unknown}; so is a disabled one (sweeps mark the verdicts of
machines they no longer check). When the health database could not be
opened both answer 503 rather than a fleet of C{unknown}s.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from slaveapi.context import Context
from slaveapi.health import DOWN, VERDICTS, IHealthStore, never_checked
from slaveapi.machines import canonical_name
from slaveapi.web.errors import HTTPProblem, json_body
from slaveapi.web.known import machine_name
from slaveapi.web.slaves import filtered_slaves


def _open(store: IHealthStore) -> IHealthStore:
    """C{store}, or a 503 saying why it cannot answer."""
    why = store.unavailable()
    if why is not None:
        raise HTTPProblem(503, "unavailable", f"health: {why}")
    return store


async def fleet_health(store: IHealthStore, ctx: Context, request: IRequest) -> bytes:
    """
    C{{"checked_at", "machines", "verdicts", "down"}} over slavealloc's
    machines filtered as C{GET /slaves} filters them (C{purpose},
    C{environment}, C{pool} repeatable, C{enabled}); C{enabled} is C{yes}
    unless given, since only enabled machines are checked.
    """
    _open(store)
    chosen = await filtered_slaves(ctx, request, enabled=True)
    counts = {verdict: 0 for verdict in VERDICTS}
    down: list[str] = []
    for slave in chosen:
        name = canonical_name(ctx.config, slave.name)
        record = store.get(name) or never_checked(name, slave.pool)
        counts[record.verdict] = counts.get(record.verdict, 0) + 1
        if record.verdict == DOWN:
            down.append(name)
    body = {"checked_at": store.last_sweep(), "machines": len(chosen), "verdicts": counts, "down": sorted(down)}
    return json_body(request, body)


async def machine_health(store: IHealthStore, ctx: Context, request: IRequest, name: str) -> bytes:
    """
    The machine's verdict record; 404 for a machine SlaveAPI does not know,
    502 when slavealloc could not be asked whether it does.
    """
    _open(store)
    known = await machine_name(ctx, name)
    record = store.get(known) or never_checked(known)
    return json_body(request, record.to_json())
