"""
Power and reboots over time: what makes a simulated reboot really take a machine away.

L{PowerControl} applies the state changes of L{slaveapi.lab.fleet.LabMachine}
(power off, power on, reboot, boot) at the right moments on the reactor and
tells its observers (the SSH server, later the BMCs and PDUs) when a machine
goes down or comes up. A machine that is rebooted or powered on boots after
C{boot_time} seconds, unless it is one that never comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from slaveapi.lab.machines import LabMachine


class PowerObserver(Protocol):
    """Something that follows machines going down and coming up."""

    def machine_down(self, machine: LabMachine) -> None:
        """The machine's OS stopped (its listeners must close)."""

    def machine_up(self, machine: LabMachine) -> None:
        """The machine's OS is running again (its listeners must open)."""


class PowerControl:
    """
    Schedules boots and tells observers about machines going down and up.

    @param reactor: provides C{callLater}; boots are delayed calls on it.
    @param clock: the wall clock (Unix seconds) boot times are taken from.
    @param boot_time: seconds from power-on or reboot until the OS is up.
    """

    _log = Logger()

    def __init__(self, reactor: Any, clock: Callable[[], float], boot_time: float) -> None:
        self._reactor = reactor
        self._clock = clock
        self.boot_time = boot_time
        self._observers: list[PowerObserver] = []
        self._boots: dict[str, IDelayedCall] = {}

    def add_observer(self, observer: PowerObserver) -> None:
        """Tell C{observer} about every machine that goes down or comes up from now on."""
        self._observers.append(observer)

    def booting(self, machine: LabMachine) -> bool:
        """Whether the machine is on its way up."""
        return machine.name in self._boots

    def power_off(self, machine: LabMachine) -> None:
        """Cut the machine's power: it goes down now and stays down."""
        self._cancel_boot(machine)
        was_up = machine.up
        machine.power_off()
        self._log.info("lab: {machine} powered off", machine=machine.name)
        if was_up:
            self._tell_down(machine)

    def power_on(self, machine: LabMachine) -> None:
        """Power the machine on; it boots after C{boot_time} unless already on."""
        if machine.powered:
            return
        self._log.info("lab: {machine} powered on", machine=machine.name)
        if machine.power_on():
            self._schedule_boot(machine)

    def hang(self, machine: LabMachine) -> None:
        """
        Hang the machine's OS: it stops answering (its listeners close) while
        its power stays on, until the next reboot or power cycle boots it.
        """
        self._cancel_boot(machine)
        was_up = machine.up
        machine.up = False
        self._log.info("lab: {machine} hung", machine=machine.name)
        if was_up:
            self._tell_down(machine)

    def reboot(self, machine: LabMachine, graceful: bool = False) -> None:
        """
        Reboot the machine: down now, up after C{boot_time}.

        @param graceful: a reboot from the OS (its buildbot logs SIGTERM);
            otherwise a reset or power cycle.
        """
        self._cancel_boot(machine)
        was_up = machine.up
        will_boot = machine.reboot(self._clock(), graceful)
        self._log.info("lab: {machine} rebooting (graceful={graceful})", machine=machine.name, graceful=graceful)
        if was_up:
            self._tell_down(machine)
        if will_boot:
            self._schedule_boot(machine)

    def stop(self) -> None:
        """Cancel every pending boot."""
        for call in self._boots.values():
            if call.active():
                call.cancel()
        self._boots.clear()

    def _schedule_boot(self, machine: LabMachine) -> None:
        self._boots[machine.name] = self._reactor.callLater(self.boot_time, self._boot, machine)

    def _cancel_boot(self, machine: LabMachine) -> None:
        call = self._boots.pop(machine.name, None)
        if call is not None and call.active():
            call.cancel()

    def _boot(self, machine: LabMachine) -> None:
        self._boots.pop(machine.name, None)
        if not machine.powered or machine.up:
            return
        machine.boot(self._clock())
        self._log.info("lab: {machine} booted", machine=machine.name)
        for observer in self._observers:
            observer.machine_up(machine)

    def _tell_down(self, machine: LabMachine) -> None:
        for observer in self._observers:
            observer.machine_down(machine)
