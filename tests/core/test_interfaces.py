"""
The client interfaces: every concrete client and every shipped fake
provides the interface of its kind, and each interface says what its spec says.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

from slaveapi import interfaces
from slaveapi.clients.aws import AWSClient
from slaveapi.clients.bugzilla import BugzillaClient
from slaveapi.clients.buildapi import BuildapiClient
from slaveapi.clients.devices import DevicesClient
from slaveapi.clients.dns import DNSClient
from slaveapi.clients.inventory import InventoryClient
from slaveapi.clients.ipmi import IPMIClient
from slaveapi.clients.master import MasterClient
from slaveapi.clients.mozpool import MozpoolClient
from slaveapi.clients.pdu import PDUClient
from slaveapi.clients.probe import Prober
from slaveapi.clients.redfish import RedfishClient
from slaveapi.clients.slavealloc import SlaveallocClient
from slaveapi.clients.ssh import SSHClient, SSHSession
from slaveapi.context import Clients
from slaveapi.testing import FakeSSH, FakeSSHSession, make_fakes

_CONCRETE: list[tuple[InterfaceClass, type]] = [
    (interfaces.ISSHClient, SSHClient),
    (interfaces.ISSHSession, SSHSession),
    (interfaces.ISlavealloc, SlaveallocClient),
    (interfaces.IInventory, InventoryClient),
    (interfaces.IBugzilla, BugzillaClient),
    (interfaces.IBuildapi, BuildapiClient),
    (interfaces.IDevices, DevicesClient),
    (interfaces.IMaster, MasterClient),
    (interfaces.IIPMI, IPMIClient),
    (interfaces.IRedfish, RedfishClient),
    (interfaces.IPDU, PDUClient),
    (interfaces.IMozpool, MozpoolClient),
    (interfaces.IAWS, AWSClient),
    (interfaces.IDNS, DNSClient),
    (interfaces.IProber, Prober),
]


@pytest.mark.parametrize(("interface", "client"), _CONCRETE, ids=lambda item: getattr(item, "__name__", ""))
def test_each_client_declares_and_implements_its_interface(interface: InterfaceClass, client: type) -> None:
    assert interface.implementedBy(client)
    assert verifyClass(interface, client)


def test_every_kind_has_a_client_and_a_context_field() -> None:
    assert {interface for interface, _ in _CONCRETE} == set(interfaces.SPECS.values())
    fields = {name: kind for name, kind in Clients.__annotations__.items()}
    assert sorted(fields.values()) == sorted(
        spec.__name__ for spec in interfaces.SPECS if spec is not interfaces.SSHSessionSpec
    )


_FIELDS = [name for name in Clients.__annotations__]


@pytest.mark.parametrize("name", _FIELDS)
def test_each_fake_provides_the_interface_of_its_field(name: str) -> None:
    clients = make_fakes().clients()
    spec = getattr(interfaces, Clients.__annotations__[name])
    fake = getattr(clients, name)
    assert verifyObject(interfaces.SPECS[spec], fake)


def test_the_fake_ssh_session_provides_the_session_interface() -> None:
    session = FakeSSHSession(FakeSSH(), "bld-1")
    assert verifyObject(interfaces.ISSHSession, session)


def test_an_interface_lists_its_specs_methods_with_their_signatures() -> None:
    assert sorted(interfaces.IBugzilla.names()) == ["add_comment", "create_bug", "get_bug", "search", "update_bug"]
    assert interfaces.IProber["wait_for_reboot"].getSignatureString() == "(host, progress=None)"
    assert "claimed_ips" in interfaces.IAWS.names()
    assert set(interfaces.ISSHSession.names(all=True)) >= {"host", "run", "close", "__aenter__", "__aexit__"}


def test_an_object_missing_a_method_fails_verification() -> None:
    class Incomplete:
        async def alive(self, host: str) -> bool:
            return True

    with pytest.raises(Exception, match="wait_for"):
        verifyObject(interfaces.IProber, Incomplete())


def test_a_method_with_an_incompatible_signature_fails_verification() -> None:
    fakes = make_fakes(clock=Clock())

    class NoCount:
        async def recent_jobs(self, name: str) -> list[Any]:
            return []

    assert verifyObject(interfaces.IBuildapi, fakes.buildapi)
    with pytest.raises(Exception, match="recent_jobs"):
        verifyObject(interfaces.IBuildapi, NoCount())
