"""
The actions SlaveAPI carries out, one module each.

Each module defines an C{async def} doing the work and an L{Action} named
C{ACTION} describing it: its limits, the form fields it takes and the routes
that serve it. L{slaveapi.actions.registry.ACTIONS} maps action names to them.
"""

from slaveapi.actions._base import (
    LOANERS,
    MACHINES,
    Action,
    ActionFailure,
    ActionLog,
    ActionRun,
    ArgumentError,
    Arguments,
    FormField,
    MissingArguments,
    StatusLines,
    StepFailed,
    no_arguments,
    yes_no,
)

__all__ = [
    "LOANERS",
    "MACHINES",
    "Action",
    "ActionFailure",
    "ActionLog",
    "ActionRun",
    "ArgumentError",
    "Arguments",
    "FormField",
    "MissingArguments",
    "StatusLines",
    "StepFailed",
    "no_arguments",
    "yes_no",
]
