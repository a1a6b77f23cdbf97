"""The agent under local faults, against a real etcd and a real systemd 252 (one nspawn node,
tests/_sdx_node.py, node `hr-faults`), with the real engine placing the units:

- a read-only units_directory (as full or read-only disks make it): no exception out of the
  pass, the unit is reported (state LOAD error / ACTIVE failed, the error kept in the stats),
  and the next pass after the disk is writable again starts it;
- a unit that fails to start is reported failed, started once (not again by later passes) and
  stays on its machine (the engine does not move units for their state);
- the agent's watch from a revision etcd has compacted meanwhile (a long cut) ends with
  WatchCompacted and marks the agent dirty: the next pass reads a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.agent.loop import Agent
from fleetd.agent.systemd import SystemdManager
from fleetd.engine.leader import Engine
from fleetd.model import DesiredState, Machine, Unit
from fleetd.presence import Presence
from fleetd.registry import WatchCompacted
from fleetd.unit.file import UnitFile

sys.path.insert(0, str(Path(__file__).parent))
from _sdx_node import node_fixture  # noqa: E402

pytestmark = pytest.mark.lab
MID = "4f" * 16


node = node_fixture("hr-faults", "the agent fault lab tests")


@pytest.fixture
async def rig(node, registry, tmp_path):
    presence = Presence(registry, Machine(MID, "10.0.0.9"), 5.0, tmp_path)
    await presence.register()
    systemd = await SystemdManager.connect(node.units_dir, bus_address=node.bus_address)
    agent = Agent(registry, systemd, presence)
    engine = Engine(registry, MID, 0.2, lease_ttl=2.0, machine_ttl=5.0)
    tasks = [asyncio.create_task(engine.run()), asyncio.create_task(presence.run())]
    try:
        yield agent, registry
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        subprocess.run(["umount", str(node.units_dir)], capture_output=True)
        try:
            await systemd.unload(systemd.installed_units())
        finally:
            await systemd.close()
            await registry.revoke_lease(presence.lease_id)


async def placed(registry, name: str) -> None:
    for _ in range(100):
        if name in await registry.placements():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not placed")


async def state_of(registry, name: str):
    states = [s for s in await registry.unit_states(name) if s.machine_id == MID]
    return states[0] if states else None


async def test_a_read_only_units_directory_is_reported_and_recovered(rig, node):
    agent, registry = rig
    d = str(node.units_dir)
    subprocess.run(["mount", "--bind", d, d], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", d], check=True)
    name = "hr-ro.service"
    await registry.create_units([Unit(name, UnitFile.parse("[Service]\nExecStart=/bin/sleep 1000\n"),
                                      DesiredState.LAUNCHED)])
    await placed(registry, name)
    await agent.reconcile_once()  # no exception
    assert "Read-only file system" in agent.stats.last_error
    st = await state_of(registry, name)
    assert st is not None and (st.load_state, st.active_state) == ("error", "failed")
    subprocess.run(["umount", d], check=True)
    await agent.reconcile_once()
    states = await agent.systemd.states([name])
    assert states[name].active_state == "active"
    for _ in range(50):
        st = await state_of(registry, name)
        if st is not None and st.active_state == "active":
            break
        await agent._publish_changed(agent.stats.desired)
        await asyncio.sleep(0.1)
    assert st.load_state == "loaded" and st.active_state == "active"


async def test_a_failing_unit_is_reported_started_once_and_stays(rig, node):
    agent, registry = rig
    runner = asyncio.create_task(agent.run())
    try:
        name = "hr-fail.service"
        await registry.create_units([Unit(name, UnitFile.parse("[Service]\nExecStart=/bin/false\n"),
                                          DesiredState.LAUNCHED)])
        await placed(registry, name)
        where = (await registry.placements())[name].machine_id
        st = None
        for _ in range(100):
            st = await state_of(registry, name)
            if st is not None and st.active_state == "failed":
                break
            await asyncio.sleep(0.1)
        assert st is not None and st.active_state == "failed", st
        invocation = node.run("systemctl", "show", "-p", "InvocationID", "--value", name).stdout.strip()
        assert invocation
        passes = agent.stats.passes
        for _ in range(3):  # more passes: it is not started again
            agent._dirty.set()
            while agent.stats.passes == passes:
                await asyncio.sleep(0.05)
            passes = agent.stats.passes
        assert node.run("systemctl", "show", "-p", "InvocationID", "--value", name).stdout.strip() == invocation
        assert (await registry.placements())[name].machine_id == where
        assert (await state_of(registry, name)).active_state == "failed"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_watch_from_a_compacted_revision_resyncs(rig, etcd_server):
    agent, registry = rig
    old = await agent.reconcile_once()
    for i in range(5):
        await registry.create_units([Unit(f"hr-c{i}.service", UnitFile.parse("[Service]\nExecStart=/bin/true\n"))])
    now = await registry.current_revision()
    subprocess.run(["etcdctl", f"--endpoints={etcd_server.endpoint}", "compaction", str(now)],
                   check=True, capture_output=True)
    agent._dirty.clear()
    with pytest.raises(WatchCompacted):
        await asyncio.wait_for(agent._watch_keys(old + 1), 10)
    assert agent._dirty.is_set()
    assert await agent.reconcile_once() >= now
