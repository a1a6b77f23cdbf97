"""The fence a stopping fleetd leaves behind (SystemdManager.arm_fence/disarm_fence), against a
real systemd 252 in one nspawn node (tests/_sdx_node.py, node `hr-fence`): a transient timer
that stops the units when the lease may have expired, removed by a fleetd that comes back in
time (the units then keep running with the same main PID)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from fleetd.agent.systemd import FENCE_UNIT, SystemdManager
from fleetd.unit.file import UnitFile

sys.path.insert(0, str(Path(__file__).parent))
from _sdx_node import manager_fixture, node_fixture  # noqa: E402

pytestmark = pytest.mark.lab

SLEEP = UnitFile.parse("[Service]\nExecStart=/bin/sleep infinity\n").serialize()


node = node_fixture("hr-fence", "the fence lab tests")
mgr = manager_fixture(disarm_fence=True)


async def started(mgr: SystemdManager, *names: str) -> dict[str, int]:
    await mgr.load({n: SLEEP for n in names})
    await mgr.start(names)
    states = await mgr.states(names, main_pid=True)
    assert all(s.active_state == "active" for s in states.values())
    return {n: s.main_pid for n, s in states.items()}


async def test_the_fence_stops_the_units_when_it_fires(mgr):
    await started(mgr, "hr-a.service", "hr-b.service", "hr-keep.service")
    await mgr.arm_fence(["hr-a.service", "hr-b.service"], 1.0)
    states = await mgr.states([f"{FENCE_UNIT}.timer"])
    assert states[f"{FENCE_UNIT}.timer"].active_state == "active"
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        states = await mgr.states(["hr-a.service", "hr-b.service", "hr-keep.service"])
        if states["hr-a.service"].active_state == "inactive" and states["hr-b.service"].active_state == "inactive":
            break
        assert asyncio.get_running_loop().time() < deadline, f"the fence did not stop the units: {states}"
        await asyncio.sleep(0.1)
    assert states["hr-keep.service"].active_state == "active"  # not named: left alone
    assert await mgr.disarm_fence() is False  # fired already: nothing is waiting


async def test_a_fleetd_back_in_time_removes_the_fence(mgr):
    pids = await started(mgr, "hr-c.service")
    await mgr.arm_fence(["hr-c.service"], 2.0)
    await asyncio.sleep(0.3)
    assert await mgr.disarm_fence() is True
    await asyncio.sleep(2.5)  # past the moment it would have fired
    states = await mgr.states(["hr-c.service", f"{FENCE_UNIT}.timer"], main_pid=True)
    assert states["hr-c.service"].active_state == "active"
    assert states["hr-c.service"].main_pid == pids["hr-c.service"]
    assert states[f"{FENCE_UNIT}.timer"].active_state == "inactive"


async def test_arming_again_replaces_the_previous_fence(mgr):
    await started(mgr, "hr-d.service")
    await mgr.arm_fence(["hr-d.service"], 30.0)
    await mgr.arm_fence(["hr-d.service"], 0.5)  # fleetd restarted and stopped again
    deadline = asyncio.get_running_loop().time() + 10
    while (await mgr.states(["hr-d.service"]))["hr-d.service"].active_state != "inactive":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
