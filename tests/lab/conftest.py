"""Fixtures for the lab tests: a started lab on a fixed clock, and its cleanup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest_twisted

if TYPE_CHECKING:
    from slaveapi.lab import Lab

#: 2026-11-27 23:23:05 UTC: every lab in these tests lives at this instant.
NOW = 1795821785.0
BOOT_TIME = 0.3


@pytest_twisted.async_yield_fixture
async def lab(tmp_path) -> AsyncIterator[Lab]:
    """A 12-machine lab whose clock stands still at L{NOW}; reboots take 0.3 s."""
    # Imported here: conftests load before pytest-twisted installs the asyncio
    # reactor, and conch and klein import twisted.internet.reactor.
    from twisted.internet import reactor

    from slaveapi.lab import Lab

    started = Lab.start(
        reactor, slaves=12, workdir=str(tmp_path / "lab"), boot_time=BOOT_TIME, clock=lambda: NOW, shutdown_delay=0.05
    )
    yield started
    await started.stop()
