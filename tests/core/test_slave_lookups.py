"""
What C{load_slave_info} asks the remote systems: what it is told to (all of
it by default, for C{GET /slaves/<slave>}), and, for C{reboot}, only what the
action declares (never recent jobs or the master, which it does not use).
"""

from __future__ import annotations

from twisted.logger import Logger

from slaveapi.actions import ActionLog, ActionRun
from slaveapi.actions.reboot import ACTION as REBOOT, reboot
from slaveapi.clients.slavealloc import MasterRecord
from slaveapi.machines import Lookup, find_slave, load_slave_info
from slaveapi.testing import FakeHost, Fakes, FakeSlavealloc, make_fakes, run_on_clock, slave_record

MASTER = MasterRecord(masterid=3, nickname="bm03", fqdn="bm03.example.test", http_port=8010, pb_port=9010, enabled=True)
JOBS = [{"buildername": "b", "buildnumber": 1, "starttime": 1, "endtime": 2, "result": 0, "master": "bm03"}]


class _CountingSlavealloc(FakeSlavealloc):
    """Counts master lookups, which the plain fake does not record."""

    def __init__(self) -> None:
        super().__init__([slave_record("bld-1", current_masterid=MASTER.masterid)], [MASTER])
        self.masters_asked: list[int] = []

    async def get_master(self, masterid: int) -> MasterRecord | None:
        self.masters_asked.append(masterid)
        return await super().get_master(masterid)


def _fakes() -> tuple[Fakes, _CountingSlavealloc]:
    fakes = make_fakes([FakeHost("bld-1", "127.0.9.1", bmc_ip="127.0.10.1", outlet="pdu1.example.test:AA1")])
    slavealloc = _CountingSlavealloc()
    fakes.slavealloc = slavealloc
    fakes.buildapi.jobs["bld-1"] = JOBS
    fakes.bugzilla.add_bug("bld-1 problem tracking", alias="bld-1")
    return fakes, slavealloc


def test_by_default_everything_is_looked_up() -> None:
    fakes, slavealloc = _fakes()
    ctx = fakes.context()
    slave = run_on_clock(fakes.clock, find_slave(ctx, "bld-1"))

    run_on_clock(fakes.clock, load_slave_info(ctx, slave))

    assert slave.pdu is not None and slave.pdu.outlet == "AA1"
    assert slave.ipmi == "bld-1-mgmt.example.test"
    assert slave.bug is not None and slave.bug.alias == "bld-1"
    assert slave.recent_jobs == JOBS and slave.master == MASTER
    assert fakes.buildapi.asked == ["bld-1"] and slavealloc.masters_asked == [3]


def test_only_the_lookups_asked_for_are_made() -> None:
    fakes, slavealloc = _fakes()
    ctx = fakes.context()
    slave = run_on_clock(fakes.clock, find_slave(ctx, "bld-1"))

    run_on_clock(fakes.clock, load_slave_info(ctx, slave, {Lookup.INVENTORY}))

    assert slave.pdu is not None
    assert (slave.ipmi, slave.bug, slave.recent_jobs, slave.master) == (None, None, [], None)
    assert fakes.buildapi.asked == [] and slavealloc.masters_asked == []


def test_a_reboot_that_works_asks_neither_bugzilla_nor_recent_jobs_nor_the_master() -> None:
    fakes, slavealloc = _fakes()
    fakes.bugzilla.error = AssertionError("Bugzilla was asked")
    log = ActionLog(Logger(), "bld-1", 1, "reboot")
    run = ActionRun(fakes.context(), "bld-1", 1, "reboot", log, lambda text: None)

    text = run_on_clock(fakes.clock, reboot(run))

    assert text == "Attempting SSH reboot...Success!"
    assert REBOOT.lookups == {Lookup.INVENTORY, Lookup.BMC}
    assert fakes.buildapi.asked == [] and slavealloc.masters_asked == []
