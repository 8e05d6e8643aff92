"""
C{GET /health} (the fleet's verdicts, counted) and C{GET /slaves/<slave>/health} (one machine's).

Both answer from the health store (L{slaveapi.health}): what the last sweeps
found, never a check made for the request. A machine no sweep has checked
yet is C{unknown}.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from slaveapi.clients.http import RemoteError
from slaveapi.clients.slavealloc import filter_slaves
from slaveapi.context import Context
from slaveapi.health import DOWN, VERDICTS, IHealthStore, never_checked
from slaveapi.machines import canonical_name
from slaveapi.web import params
from slaveapi.web.errors import HTTPProblem, json_body
from slaveapi.web.known import machine_name


async def fleet_health(store: IHealthStore, ctx: Context, request: IRequest) -> bytes:
    """
    C{{"checked_at", "machines", "verdicts", "down"}} over slavealloc's
    machines filtered as C{GET /slaves} filters them (C{purpose},
    C{environment}, C{pool} repeatable, C{enabled}); C{enabled} is C{yes}
    unless given, since only enabled machines are checked.
    """
    enabled = params.boolean(request, "enabled", default=True)
    try:
        slaves = await ctx.clients.slavealloc.list_slaves()
    except RemoteError as error:
        raise HTTPProblem(502, "bad_gateway", str(error)) from None
    chosen = filter_slaves(
        slaves,
        purpose=params.value(request, "purpose"),
        environment=params.value(request, "environment"),
        pools=params.values(request, "pool"),
        enabled=enabled,
    )
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
    known = await machine_name(ctx, name)
    record = store.get(known) or never_checked(known)
    return json_body(request, record.to_json())
