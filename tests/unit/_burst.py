"""What the engine's burst tests share (tests/unit/test_engine_burst*.py): _settle() timed under
rounds of watch news; the whole loop (a leading engine and four simulated agents on one
in-memory cluster) and the wait until a submission is placed and running on the agents."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Iterable

from fleetd.engine.leader import BURST_FLOW, Engine
from fleetd.model import Machine
from fleetd.registry import WatchEvent
from fleetd.registry.memory import MemoryCluster, MemoryRegistry
from fleetlab.testing.simagent import SimulatedAgent


def full_news(eng: Engine, revision: int) -> list[WatchEvent]:
    """One transaction of a large submission in full flow, as the watch brings it: BURST_FLOW
    jobs at `revision`."""
    jobs = eng.registry.keys.jobs
    return [WatchEvent(f"{jobs}u{revision}-{i}.service", b"{}", revision) for i in range(BURST_FLOW)]


async def settle_while(eng: Engine, rounds: Iterable[list[WatchEvent]], fed: list[float] | None = None,
                       timeout: float = 10) -> float:
    """Seconds _settle() took while the rounds of events came 5 ms apart (each round is taken
    from `rounds` when it is fed, so a generator may end them by the clock); `fed` gets the
    seconds (from the same start) at which each round came."""
    dirty = asyncio.Event()
    keeper = asyncio.create_task(asyncio.sleep(3600))

    async def feed() -> None:
        for events in rounds:
            eng._events.extend(events)
            dirty.set()
            if fed is not None:
                fed.append(time.monotonic() - started)
            await asyncio.sleep(0.005)

    feeder = asyncio.create_task(feed())
    started = time.monotonic()
    try:
        await asyncio.wait_for(eng._settle(dirty, keeper), timeout)
        return time.monotonic() - started
    finally:
        feeder.cancel()
        keeper.cancel()
        await asyncio.gather(feeder, keeper, return_exceptions=True)


async def placed(client: MemoryRegistry, agents: list[SimulatedAgent], count: int, polls: int) -> dict:
    """The placements once `count` units are placed and active on the agents (or as they are
    after `polls` looks, 20 ms apart)."""
    for _ in range(polls):
        placements = await client.placements()
        if len(placements) == count and sum(a.active for a in agents) == count:
            break
        await asyncio.sleep(0.02)
    return placements


@asynccontextmanager
async def leading_engine(**burst: float) -> AsyncIterator[tuple[MemoryRegistry, list[SimulatedAgent], Engine]]:
    """A client, four started agents and an engine with the given burst_* settings, all on one
    in-memory cluster, once the engine leads; afterwards the engine is stopped and the agents
    crash."""
    shared = MemoryCluster()
    client = MemoryRegistry(shared)
    agents = [SimulatedAgent(MemoryRegistry(shared), Machine(f"{i:032x}", f"10.0.0.{i}", {}), ttl=30)
              for i in range(1, 5)]
    for agent in agents:
        await agent.start()
    eng = Engine(MemoryRegistry(shared), agents[0].machine.id, 2.0, lease_ttl=5.0, **burst)
    task = asyncio.create_task(eng.run())
    try:
        while not eng.is_leader:
            await asyncio.sleep(0.01)
        yield client, agents, eng
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for agent in agents:
            await agent.crash()


def load(placements: dict, agents: list[SimulatedAgent]) -> list[int]:
    """How many of the placements each agent's machine got, in the agents' order."""
    return [sum(1 for p in placements.values() if p.machine_id == a.machine.id) for a in agents]
