"""Fixtures for the PDU tests: a net-snmp snmpd per test (see L{tests.pdu.peers})."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted

from tests.pdu.peers import Snmpd, start_snmpd


@pytest_twisted.async_yield_fixture
async def snmpd(tmp_path: Path) -> AsyncIterator[Snmpd]:
    """A running snmpd playing a Sentry and an APC PDU; stopped by its PID afterwards."""
    server = await start_snmpd(tmp_path)
    try:
        yield server
    finally:
        await server.stop()
