"""Every action SlaveAPI knows, by the name its results are stored under."""

from types import MappingProxyType

from slaveapi.actions import (
    aws,
    buildslave_last_activity,
    buildslave_uptime,
    disable,
    power,
    quarantine,
    reboot,
    shutdown_buildslave,
)

ACTIONS = MappingProxyType(
    {
        action.name: action
        for action in (buildslave_uptime.ACTION, buildslave_last_activity.ACTION, reboot.ACTION,
                       shutdown_buildslave.ACTION, disable.ACTION, *aws.ACTIONS, *quarantine.ACTIONS,
                       *power.ACTIONS)
    }
)
