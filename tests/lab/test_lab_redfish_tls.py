"""
The Redfish client checks which BMC a certificate is for, not only who issued it.

A certificate from the trusted CA but for another BMC is what a BMC whose
address was handed to another machine, or a man in the middle holding any
certificate of the site's CA, presents: the client must refuse it before it
sends a password or a reset. Here the lab's CA issues each BMC a certificate
for another address (and name), the lab's BMCs serve it, and the client,
trusting that very CA, must still refuse.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from slaveapi.clients.redfish import RedfishClient, RedfishUnavailable
from slaveapi.config import Secret
from slaveapi.lab._ca import IssuedCertificate, LabCA
from slaveapi.lab._lab import _redfish_bmcs
from slaveapi.lab.fleet import build_fleet
from slaveapi.lab.machines import LabMachine
from slaveapi.lab.power import PowerControl
from slaveapi.lab.redfish import LabRedfish

from .test_lab_redfish import BOOT_TIME, DOMAIN, PASSWORD, _https

#: The address and name every certificate of L{_Misissuing} is for: no lab BMC's.
OTHER_IP = "127.1.9.9"
OTHER_NAME = "bld-linux64-lab-999-mgmt." + DOMAIN


class _Misissuing(LabCA):
    """The lab's CA, issuing every certificate for L{OTHER_IP} (and a name, when asked for one) instead."""

    def __init__(self, *, keep_name: bool) -> None:
        super().__init__()
        self._keep_name = keep_name

    def issue(self, dns_names: list[str], ip_addresses: list[str]) -> IssuedCertificate:
        return super().issue(dns_names if self._keep_name else [OTHER_NAME], [OTHER_IP])


@dataclass
class _Served:
    machine: LabMachine
    service: LabRedfish
    client: RedfishClient


@pytest_twisted.async_yield_fixture(params=["another-name", "right-name"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[_Served]:
    """
    The lab's Redfish BMC of one machine, serving a certificate of the lab's CA
    for L{OTHER_IP}: with another name too, or with the BMC's own C{-mgmt} name
    (the client connects to the address, so the address is what must match).
    """
    from twisted.internet import reactor

    fleet = build_fleet(12, DOMAIN, time.time())
    _redfish_bmcs(fleet, 0.25)
    machines = [m for m in fleet.machines if m.redfish]
    power = PowerControl(Clock(), time.time, BOOT_TIME)
    ca = _Misissuing(keep_name=request.param == "right-name")
    service = LabRedfish.start(reactor, machines, power, "ADMIN", PASSWORD, ca=ca)
    config = _https(service.port, Path(ca.write_certificate(str(tmp_path / "lab-ca.pem"))))
    client = RedfishClient(config, "ADMIN", Secret(PASSWORD), reactor)
    try:
        yield _Served(machines[0], service, client)
    finally:
        power.stop()
        await client.close()
        await service.stop()


@pytest_twisted.ensureDeferred
async def test_a_certificate_of_the_trusted_ca_for_another_address_is_refused(served: _Served) -> None:
    machine, host = served.machine, served.machine.mgmt_ip
    assert host is not None and host != OTHER_IP
    with pytest.raises(RedfishUnavailable) as refused:
        await served.client.reset(host, "ForceOff")
    assert str(refused.value) == (
        f"Redfish {host}: reading the service root failed: TLS handshake failed: the certificate is not for this name"
    )
    assert await served.client.available(host) is False
    # Refused in the handshake: no session was opened, nothing was reset.
    assert machine.powered and machine.up
    assert served.service.resets == []
    assert served.service.bmcs[machine.name].sessions_opened == 0
