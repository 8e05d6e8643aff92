"""
SlaveAPI and its lab in the test's own process, listening on a real port.

For end-to-end tests that must look behind the HTTP API at the lab (which
bugs were filed, which machines are up) or change it between requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService

from slaveapi.lab import Lab, LabService
from slaveapi.service import ListenWhenReady, ServiceOptions, make_service


@dataclass
class RunningService:
    """A started service, its lab, and its URL."""

    service: MultiService
    lab: Lab
    url: str

    async def stop(self) -> None:
        await self.service.stopService()


async def start_in_process(
    data_dir: str, slaves: int = 12, boot_time: float = 1.0, health_interval: float = 0.0
) -> RunningService:
    """
    Start SlaveAPI with a lab of C{slaves} machines; wait until its API answers (the whole lab is ready then).

    @param health_interval: the lab's C{[health] interval}; 0 (the default
        here) turns the health loop off, so that its sweeps' SSH logins do
        not mix with what a test counts.
    """
    from twisted.internet import reactor

    options = ServiceOptions(
        lab=slaves,
        data=data_dir,
        listen="tcp:0:interface=127.0.0.1",
        lab_boot_time=boot_time,
        lab_health_interval=health_interval,
    )
    service = make_service(options, reactor)
    service.startService()
    lab = next(child for child in service if isinstance(child, LabService)).lab
    listener = next(child for child in service if isinstance(child, ListenWhenReady))
    port: Any = await listener.listening
    return RunningService(service, lab, f"http://127.0.0.1:{port.getHost().port}")
