"""
The web layer's known-machine check: a POST acts only on a machine SlaveAPI knows.

Before a result is recorded the slave name in the URL is identified
(L{slaveapi.machines.identify}): a name nobody knows, or one asked for in a
domain that is not the machine's configured one, is a 404 and nothing is
contacted for it. The action is then queued under the machine's canonical
identity. Reads of results need no lookup: they go by L{read_name}.
"""

from __future__ import annotations

from slaveapi.actions import LOANERS, MACHINES
from slaveapi.context import Context
from slaveapi.machines import IdentificationFailed, UnknownMachine, canonical_name, identify, identify_loaner
from slaveapi.web.errors import HTTPProblem, not_found

#: The slave name with which aws_create_instance makes the loaner's name itself.
DEFAULT_LOANER = "default"


async def machine_name(ctx: Context, name: str, names: str = MACHINES) -> str:
    """
    The canonical identity C{name} stands for.

    @raise HTTPProblem: 404 for an unknown machine; 502 when slavealloc or
        devices.json could not be asked.
    """
    if names == LOANERS:
        return _loaner_name(ctx, name)
    try:
        return (await identify(ctx, name)).name
    except UnknownMachine as unknown:
        raise not_found(f"slave: {unknown}") from None
    except IdentificationFailed as error:
        raise HTTPProblem(502, "bad_gateway", f"slave: {error}") from None


def _loaner_name(ctx: Context, name: str) -> str:
    if name.lower() == DEFAULT_LOANER:
        return DEFAULT_LOANER
    try:
        return identify_loaner(ctx.config, name).name
    except UnknownMachine:
        aws = ctx.config.aws
        patterns = ", ".join((*aws.build_loaner_names, *aws.test_loaner_names)) or "none configured"
        raise not_found(
            f"slave: {name} is not a loaner name; expected '{DEFAULT_LOANER}' or a name matching the "
            f"loaner patterns ({patterns}) in its loaner domain"
        ) from None


def read_name(ctx: Context, name: str) -> str:
    """The name results of C{name} are filed under (lower case, configured domain taken off)."""
    return canonical_name(ctx.config, name)
