"""
The actions SlaveAPI carries out, one module each.

Each module defines an C{async def} doing the work and an L{Action} named
C{ACTION} describing it; L{slaveapi.actions.registry.ACTIONS} maps action
names to them.
"""

from slaveapi.actions._base import Action, ActionFailure, ActionLog, ActionRun

__all__ = ["Action", "ActionFailure", "ActionLog", "ActionRun"]
