"""The engine's leader loop against a real etcd, with simulated agents (no systemd)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from fleetd.engine.leader import Engine
from fleetd.model import DesiredState, Machine, Unit
from fleetd.registry import Registry
from fleetlab.testing.simagent import SimulatedAgent
from fleetd.unit.file import UnitFile

SLEEP = "[Service]\nExecStart=/bin/sleep 1000\n"
#: the simulated agents' machine TTL; the engine is told the same (its hold times follow from it:
#: fleetd/engine/hold.py's grace and settle), as fleetd tells it its agent_ttl
AGENT_TTL = 2.0


def mid(i: int) -> str:
    return f"{i:x}" * 32 if i < 16 else f"{i:032x}"


async def until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
async def cluster(etcd_settings):
    regs, agents, engines, tasks = [], [], [], []

    async def add_agent(i: int, metadata=None, ttl: float = AGENT_TTL) -> SimulatedAgent:
        reg = await Registry.connect(etcd_settings)
        regs.append(reg)
        agent = SimulatedAgent(reg, Machine(mid(i), f"10.0.0.{i}", metadata or {}), ttl=ttl)
        await agent.start()
        agents.append(agent)
        return agent

    async def add_engine(machine_id: str, interval: float = 0.5) -> tuple[Engine, asyncio.Task]:
        reg = await Registry.connect(etcd_settings)
        regs.append(reg)
        engine = Engine(reg, machine_id, interval, lease_ttl=2.0, machine_ttl=AGENT_TTL)
        task = asyncio.create_task(engine.run())
        engines.append(engine)
        tasks.append(task)
        return engine, task

    reg = await Registry.connect(etcd_settings)
    regs.append(reg)
    try:
        yield reg, add_agent, add_engine
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for agent in agents:
            await agent.crash()
        for r in regs:
            await r.close()


async def running_by_machine(reg: Registry) -> Counter:
    states = await reg.unit_states()
    return Counter(s.machine_id for s in states if s.active_state == "active")


async def test_six_units_spread_and_fail_over(cluster):
    reg, add_agent, add_engine = cluster
    a1, a2, a3 = [await add_agent(i) for i in (1, 2, 3)]
    engine, _ = await add_engine(mid(1))
    units = [Unit(f"u{i}.service", UnitFile.parse(SLEEP), DesiredState.LAUNCHED) for i in range(6)]
    await reg.create_units(units)

    async def spread():
        counts = await running_by_machine(reg)
        return counts if sum(counts.values()) == 6 else None

    counts = await until(spread)
    assert sorted(counts.values()) == [2, 2, 2]

    started = time.monotonic()
    await a3.crash()  # its lease (2 s) runs out; its units move to the other two

    async def moved():
        placements = await reg.placements()
        on = Counter(p.machine_id for p in placements.values())
        return on if mid(3) not in on and sum(on.values()) == 6 else None

    on = await until(moved, timeout=15)
    print(f"\nfailover after simulated node loss (ttl 2s): {time.monotonic() - started:.2f}s")
    assert sorted(on.values()) == [3, 3]

    # the machine coming back causes no churn: once the engine has decided on a snapshot with it
    placements_before = await reg.placements()
    seen = passed_with(engine, mid(3))
    await add_agent(3)
    await asyncio.wait_for(seen.wait(), 10)
    assert await reg.placements() == placements_before


def passed_with(engine: Engine, machine_id: str) -> asyncio.Event:
    """Set once a pass of `engine` on a snapshot with `machine_id` registered has returned (its
    decisions written): the passes after it decide the same on the same inputs."""
    done = asyncio.Event()
    reconcile = engine.reconcile

    async def recorded(snapshot, changes=None):
        wrote = await reconcile(snapshot, changes)
        if machine_id in snapshot.machines:
            done.set()
        return wrote

    engine.reconcile = recorded
    return done


async def test_leader_failover_without_duplicates(cluster):
    reg, add_agent, add_engine = cluster
    for i in (1, 2):
        await add_agent(i)
    e1, t1 = await add_engine(mid(1))
    await until(lambda: _is(e1))
    e2, t2 = await add_engine(mid(2))
    await reg.create_units([Unit("a.service", UnitFile.parse(SLEEP), DesiredState.LAUNCHED)])
    await until(lambda: _placed(reg, "a.service"))
    t1.cancel()  # leader dies without resigning: its lease (2 s) must run out
    await asyncio.gather(t1, return_exceptions=True)
    started = time.monotonic()
    await until(lambda: _is(e2), timeout=10)
    print(f"\nleader failover: {time.monotonic() - started:.2f}s")
    await reg.create_units([Unit("b.service", UnitFile.parse(SLEEP), DesiredState.LAUNCHED)])
    await until(lambda: _placed(reg, "b.service"))
    placements = await reg.placements()
    assert set(placements) == {"a.service", "b.service"}  # one placement per unit


async def test_resign_after_cancel_hands_over_at_once(cluster):
    """fleetd's shutdown cancels the engine task, then resigns: the leader key goes at once,
    and another engine leads long before the old lease (10 s here) would have run out."""
    reg, add_agent, add_engine = cluster
    await add_agent(1)
    e1, t1 = await add_engine(mid(1))
    e1.lease_ttl = 10.0  # set before its task first runs (no await since it was created)
    await until(lambda: _is(e1))
    e2, _ = await add_engine(mid(2))
    t1.cancel()
    await asyncio.gather(t1, return_exceptions=True)
    started = time.monotonic()
    await e1.resign()
    await until(lambda: _is(e2), timeout=15)
    assert time.monotonic() - started < 3.0


async def test_desired_state_changes_flow_to_the_schedule(cluster):
    reg, add_agent, add_engine = cluster
    await add_agent(1)
    await add_engine(mid(1))
    await reg.create_units([Unit("a.service", UnitFile.parse(SLEEP), DesiredState.LOADED)])
    await until(lambda: _placement_state(reg, "a.service", DesiredState.LOADED))
    await reg.set_desired_state(["a.service"], DesiredState.LAUNCHED)
    await until(lambda: _placement_state(reg, "a.service", DesiredState.LAUNCHED))
    await reg.set_desired_state(["a.service"], DesiredState.INACTIVE)
    await until(lambda: _gone(reg, "a.service"))
    await reg.set_desired_state(["a.service"], DesiredState.LAUNCHED)
    await until(lambda: _placed(reg, "a.service"))
    await reg.destroy_units(["a.service"])
    await until(lambda: _gone(reg, "a.service"))


async def test_global_units_are_mirrored_for_agents(cluster):
    reg, add_agent, add_engine = cluster
    a1 = await add_agent(1, {"role": "web"})
    a2 = await add_agent(2, {"role": "db"})
    await add_engine(mid(1))
    body = "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n"
    await reg.create_units([Unit("g.service", UnitFile.parse(body), DesiredState.LAUNCHED)])

    async def runs():
        return "g.service" in a1.running and "g.service" not in a2.running

    await until(runs)
    assert await reg.placements() == {}  # globals are not in the schedule
    # dynamic metadata makes the second machine match too
    await reg.set_machine_metadata(mid(2), "role", "web")
    await until(lambda: _runs_on(a2, "g.service"))
    await reg.set_desired_state(["g.service"], DesiredState.INACTIVE)
    await until(lambda: _no_globals(reg))


async def _runs_on(agent: SimulatedAgent, name: str) -> bool:
    return name in agent.running


async def _is(engine: Engine) -> bool:
    return engine.is_leader


async def _placed(reg: Registry, name: str) -> bool:
    return name in await reg.placements()


async def _gone(reg: Registry, name: str) -> bool:
    return name not in await reg.placements()


async def _placement_state(reg: Registry, name: str, state: DesiredState) -> bool:
    p = (await reg.placements()).get(name)
    return p is not None and p.desired_state is state


async def _no_globals(reg: Registry) -> bool:
    return await reg.global_targets() == {}
