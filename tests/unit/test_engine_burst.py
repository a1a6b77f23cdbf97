"""The engine plans a burst of unit submissions in one pass once it pauses (fleetd/engine/leader.py
BURST_QUIET): which news is a burst, that the wait always ends, and that a burst submitted over
many transactions ends placed exactly once, as reconcile() would, with fewer writing passes."""

from __future__ import annotations

import asyncio

import pytest

from _burst import leading_engine, load, placed
from fleetd.engine.leader import Engine
from fleetd.model import DesiredState, Unit
from fleetd.registry import WatchEvent
from fleetd.registry.memory import MemoryCluster, MemoryRegistry
from fleetd.unit.file import UnitFile


def unit(i: int) -> Unit:
    text = f"[Unit]\nDescription=burst {i}\n\n[Service]\nExecStart=/bin/true\n"
    return Unit(f"burst-{i:04d}.service", UnitFile.parse(text), DesiredState.LAUNCHED)


def engine() -> Engine:
    return Engine(MemoryRegistry(MemoryCluster()), "m" * 32, 2.0, burst_quiet=0.02, burst_max=0.2)


def test_job_news_of_two_transactions_is_a_burst():
    eng = engine()
    jobs, schedule = eng.registry.keys.jobs, eng.registry.keys.schedule
    eng._events = [WatchEvent(f"{jobs}a.service", b"{}", 7), WatchEvent(f"{jobs}b.service", b"{}", 7),
                   WatchEvent(f"{schedule}m/a.service", b"{}", 8), WatchEvent(f"{schedule}m/c.service", b"{}", 9)]
    assert not eng._in_burst()  # one submission (one revision) and the engine's own writes
    eng._events.append(WatchEvent(f"{jobs}c.service", None, 10))
    assert eng._in_burst()


async def test_settle_ends_when_news_pauses_or_never_pauses_or_the_lease_is_lost():
    eng = engine()
    dirty = asyncio.Event()
    keeper = asyncio.create_task(asyncio.sleep(3600))

    async def news_forever() -> None:
        while True:
            dirty.set()
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(eng._settle(dirty, keeper), 5)  # no news: ends after the quiet spell
        feeder = asyncio.create_task(news_forever())
        try:
            await asyncio.wait_for(eng._settle(dirty, keeper), 5)  # endless news: ends at burst_max
        finally:
            feeder.cancel()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        dirty.set()
        eng.burst_max = 3600.0
        await asyncio.wait_for(eng._settle(dirty, keeper), 5)  # the lease keeper stopped
        assert eng.stats.settled_passes == 3
    finally:
        keeper.cancel()


@pytest.mark.parametrize("batches", [1, 8])
async def test_a_burst_over_many_transactions_is_placed_once_each(batches):
    async with leading_engine(burst_quiet=0.05, burst_max=1.0) as (client, agents, eng):
        units = [unit(i) for i in range(48)]  # one transaction of 48: below BURST_FLOW
        size = len(units) // batches
        for k in range(batches):  # one transaction each, back to back
            await client.create_units(units[k * size:(k + 1) * size])
        placements = await placed(client, agents, len(units), polls=500)
        assert sorted(placements) == sorted(u.name for u in units)
        assert load(placements, agents) == [12, 12, 12, 12]  # least loaded first, as reconcile() spreads them
        assert eng.stats.placements == len(units)  # each placed once
        # one submission is planned at once; eight back to back wait for the burst to pause
        assert (eng.stats.settled_passes > 0) == (batches > 1)
