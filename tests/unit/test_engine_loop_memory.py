"""The engine loop's tests of tests/etcd/test_engine_loop.py, run again over the registry's stores in
memory (fleetd/registry/memory.py: one MemoryCluster shared by every participant, watches
included): no etcd. A speed-up, not the proof: tests/etcd/test_engine_loop.py runs them on etcd."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from fleetd.engine.leader import Engine
from fleetd.model import Machine
from fleetd.registry.memory import MemoryCluster, MemoryRegistry
from fleetlab.testing.simagent import SimulatedAgent

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "etcd"))  # where test_engine_loop.py lives

# the tests themselves, collected here with this module's `cluster` fixture
from test_engine_loop import (  # noqa: F401
    AGENT_TTL,
    mid,
    test_desired_state_changes_flow_to_the_schedule,
    test_global_units_are_mirrored_for_agents,
    test_leader_failover_without_duplicates,
    test_resign_after_cancel_hands_over_at_once,
    test_six_units_spread_and_fail_over,
)


@pytest.fixture
async def cluster():
    shared = MemoryCluster()
    agents, tasks = [], []

    async def add_agent(i: int, metadata=None, ttl: float = AGENT_TTL) -> SimulatedAgent:
        agent = SimulatedAgent(MemoryRegistry(shared), Machine(mid(i), f"10.0.0.{i}", metadata or {}), ttl=ttl)
        await agent.start()
        agents.append(agent)
        return agent

    async def add_engine(machine_id: str, interval: float = 0.5) -> tuple[Engine, asyncio.Task]:
        engine = Engine(MemoryRegistry(shared), machine_id, interval, lease_ttl=2.0, machine_ttl=AGENT_TTL)
        task = asyncio.create_task(engine.run())
        tasks.append(task)
        return engine, task

    try:
        yield MemoryRegistry(shared), add_agent, add_engine
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for agent in agents:
            await agent.crash()
