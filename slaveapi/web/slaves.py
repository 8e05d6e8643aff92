"""C{GET /slaves} (slavealloc's list, filtered) and C{GET /slaves/<slave>} (one machine)."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from slaveapi.actions.power import power_channels
from slaveapi.clients.http import RemoteError
from slaveapi.clients.slavealloc import SlaveRecord, filter_slaves
from slaveapi.context import Context
from slaveapi.machines import IdentificationFailed, UnknownMachine, find_slave, load_slave_info
from slaveapi.web import params
from slaveapi.web.errors import HTTPProblem, json_body, not_found


async def filtered_slaves(ctx: Context, request: IRequest, enabled: bool | None = None) -> list[SlaveRecord]:
    """
    Slavealloc's machines filtered by the request's C{purpose},
    C{environment}, C{pool} (repeatable: any of them) and C{enabled}
    (C{enabled} when the request does not say); 502 when slavealloc
    cannot be listed. C{GET /slaves} and C{GET /health} filter alike.
    """
    wanted = params.boolean(request, "enabled", default=enabled)
    try:
        slaves = await ctx.clients.slavealloc.list_slaves()
    except RemoteError as error:
        raise HTTPProblem(502, "bad_gateway", str(error)) from None
    return filter_slaves(
        slaves,
        purpose=params.value(request, "purpose"),
        environment=params.value(request, "environment"),
        pools=params.values(request, "pool"),
        enabled=wanted,
    )


async def list_slaves(ctx: Context, request: IRequest) -> bytes:
    """
    C{{"slaves": [...]}}, each with slavealloc's fields, filtered by
    C{purpose}, C{environment}, C{pool} (repeatable: any of them) and C{enabled}.
    """
    chosen = await filtered_slaves(ctx, request)
    return json_body(request, {"slaves": [slave.to_json() for slave in chosen]})


async def show_slave(ctx: Context, request: IRequest, name: str) -> bytes:
    """
    The machine's dict; 404 for a machine SlaveAPI does not know (nothing
    else is asked about it), 502 when slavealloc could not be asked.
    Its C{power_channels} are the channels the power actions would try, in
    order (the BMC given C{[power] discovery_timeout} to say what it speaks).
    """
    try:
        slave = await find_slave(ctx, name)
    except UnknownMachine as unknown:
        raise not_found(f"slave: {unknown}") from None
    except IdentificationFailed as error:
        raise HTTPProblem(502, "bad_gateway", f"slave: {error}") from None
    await load_slave_info(ctx, slave)
    slave.power_channels = await power_channels(ctx, slave)
    return json_body(request, slave.to_dict())
