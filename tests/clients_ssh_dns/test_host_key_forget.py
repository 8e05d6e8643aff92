"""Forgetting a recorded host key (a terminated instance's address is reused)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key

from slaveapi.clients.ssh import HostKeyStore, SSHHostKeyMismatch
from slaveapi.clients.ssh._hostkeys import HostKeyPolicy as _HostKeys


def _new_key() -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate()).public()


def test_a_forgotten_address_is_trusted_afresh_and_others_stay(tmp_path: Any) -> None:
    path = str(tmp_path / "known_hosts")
    keys = _HostKeys("tofu", path)
    first, other, second = _new_key(), _new_key(), _new_key()
    keys.check("10.1.2.3", 22, first)
    keys.check("10.1.2.4", 2222, other)
    with pytest.raises(SSHHostKeyMismatch):
        keys.check("10.1.2.3", 22, second)

    assert keys.forget("10.1.2.3", 22) is True
    keys.check("10.1.2.3", 22, second)  # the new machine at the old address
    with pytest.raises(SSHHostKeyMismatch):
        keys.check("10.1.2.4", 2222, second)  # the other host's key is still pinned
    assert keys.forget("10.9.9.9", 22) is False

    # The file itself changed: a fresh reader agrees.
    again = _HostKeys("tofu", path)
    again.check("10.1.2.3", 22, second)
    with pytest.raises(SSHHostKeyMismatch):
        again.check("10.1.2.3", 22, first)


def test_strict_keys_are_never_forgotten(tmp_path: Any) -> None:
    path = str(tmp_path / "known_hosts")
    recorded, other = _new_key(), _new_key()
    HostKeyStore(path).verified.add([b"10.1.2.3"], recorded)  # in the file strict reads
    keys = _HostKeys("strict", path)
    assert keys.forget("10.1.2.3", 22) is False
    # The recorded key is still pinned, in memory and in the file.
    keys.check("10.1.2.3", 22, recorded)
    with pytest.raises(SSHHostKeyMismatch):
        keys.check("10.1.2.3", 22, other)
    with pytest.raises(SSHHostKeyMismatch):
        _HostKeys("strict", path).check("10.1.2.3", 22, other)
