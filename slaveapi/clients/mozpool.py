"""
Mozpool: power-cycling a device through the imaging server that manages it.

Inventory names a device's imaging server (C{system.imaging_server.0}).
The server's name is resolved through SlaveAPI's own DNS client (so lab
names work as production names do) and the device is power-cycled with
C{POST /api/device/<device>/power-cycle/}.
"""

from __future__ import annotations

from zope.interface import implementer

from slaveapi.clients._errors import ClientError
from slaveapi.clients.dns import DNSClient
from slaveapi.clients.http import JSONClient, RemoteError
from slaveapi.config import MozpoolConfig
from slaveapi.hostnames import is_valid_hostname
from slaveapi.interfaces import IMozpool


class MozpoolError(ClientError):
    """The power-cycle request did not succeed; one line saying why."""


@implementer(IMozpool)
class MozpoolClient:
    """Asks Mozpool imaging servers to power-cycle devices."""

    def __init__(self, config: MozpoolConfig, json_client: JSONClient, dns: DNSClient) -> None:
        self._config = config
        self._json = json_client
        self._dns = dns

    async def power_cycle(self, server: str, device: str) -> None:
        """
        Power-cycle C{device} through the imaging server C{server}.

        @raise MozpoolError: the server cannot be found or refused.
        """
        if not is_valid_hostname(server):
            raise MozpoolError(f"mozpool: imaging server {server[:80]!r} from inventory is not a hostname")
        host = await self._dns.lookup_host(server)
        if host is None:
            raise MozpoolError(f"mozpool: imaging server {server} is not in DNS")
        port = f":{self._config.port}" if self._config.port else ""
        # Over TLS the name must stay in the URL for the certificate check.
        address = server if self._config.scheme == "https" else host.ip
        url = f"{self._config.scheme}://{address}{port}/api/device/{device}/power-cycle/"
        try:
            await self._json.post_json(url, json_body={}, headers={"Host": f"{server}{port}"})
        except RemoteError as error:
            raise MozpoolError(str(error)) from None
