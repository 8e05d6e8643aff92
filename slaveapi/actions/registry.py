"""Every action SlaveAPI knows, by the name its results are stored under."""

from types import MappingProxyType

from slaveapi.actions import buildslave_last_activity, buildslave_uptime, reboot
from slaveapi.actions import disable, shutdown_buildslave
from slaveapi.actions import aws

ACTIONS = MappingProxyType(
    {
        action.name: action
        for action in (buildslave_uptime.ACTION, buildslave_last_activity.ACTION, reboot.ACTION,
                       shutdown_buildslave.ACTION, disable.ACTION, *aws.ACTIONS)
    }
)
