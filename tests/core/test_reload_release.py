"""Clients replaced by a reload are released once no action uses their context."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from slaveapi.config import load_config
from slaveapi.service import ContextHolder

_INI = """
[secrets]
credentials_file = credentials.json
[slavealloc]
api_url = http://127.0.0.1:1/slavealloc
[inventory]
api_url = http://127.0.0.1:1/inventory
[bugzilla]
api_url = http://127.0.0.1:1/bugzilla
[buildapi]
api_url = http://127.0.0.1:1/buildapi
[slaves]
default_domain = example.test
[dns]
servers = 127.0.0.1:1
[ipmi]
timeout = {ipmi_timeout}
"""


def _write(tmp_path: Any, ipmi_timeout: float) -> str:
    (tmp_path / "credentials.json").write_text(json.dumps({"ssh": {}}))
    ini = tmp_path / "slaveapi.ini"
    ini.write_text(_INI.format(ipmi_timeout=ipmi_timeout))
    return str(ini)


@pytest_twisted.ensureDeferred
async def test_a_reload_releases_changed_clients_only_when_idle(tmp_path: Any) -> None:
    from twisted.internet import reactor

    holder = ContextHolder(load_config(_write(tmp_path, 10)), reactor, str(tmp_path))
    busy: set[int] = set()
    holder.watch(lambda ctx: id(ctx) in busy)
    old = holder.context()
    closed: list[str] = []

    async def closing(name: str) -> None:
        closed.append(name)

    old.clients.ipmi.close = lambda: closing("ipmi")  # type: ignore[method-assign]  # records the release
    old.clients.pdu.close = lambda: closing("pdu")  # type: ignore[method-assign]  # records the release
    old.clients.aws.close = lambda: closing("aws")  # type: ignore[method-assign]  # records the release
    busy.add(id(old))

    _write(tmp_path, 20)
    assert holder.reload() is True
    new = holder.context()
    assert new.clients.ipmi is not old.clients.ipmi
    assert new.clients.pdu is old.clients.pdu and new.clients.aws is old.clients.aws
    try:
        assert holder._release_idle() is None  # an action still uses the old context
        assert closed == []
        busy.clear()
        released = holder._release_idle()
        assert released is not None
        await released
        # Only what the new context does not share is released.
        assert closed == ["ipmi"]
        assert holder._release_idle() is None
    finally:
        await holder.stopService() if holder.running else None
        await new.clients.ipmi.close()
        await new.clients.aws.close()
        await new.clients.pdu.close()
