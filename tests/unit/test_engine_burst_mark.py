"""The end of a submission, marked by its client (Registry.create_units writes the `submitted`
key after its last batch), ends the engine's burst wait at once instead of after the quiet spell
(fleetd/engine/leader.py, _settle) -- unless the mark is not the latest news, or etcd holds job
news the watch has not brought yet (another submission still on its way)."""

from __future__ import annotations

import asyncio

from _burst import full_news, leading_engine, load, placed, settle_while
from fleetd.engine.leader import BURST_FLOW, BURST_FLOW_QUIET, Engine
from fleetd.model import DesiredState, Unit
from fleetd.registry import WatchEvent
from fleetd.registry.memory import MemoryCluster, MemoryRegistry
from fleetd.unit.file import UnitFile

# a long quiet spell (QUIET * BURST_FLOW_QUIET = 1.5 s), so that a wait it ended and one the
# mark ended are told apart by their counters, not by how fast the machine is
QUIET, MAX, LIMIT = 0.5, 3.0, 6.0


def engine(cluster: MemoryCluster | None = None) -> Engine:
    return Engine(MemoryRegistry(cluster or MemoryCluster()), "m" * 32, 2.0,
                  burst_quiet=QUIET, burst_max=MAX, burst_limit=LIMIT)


def unit(i: int, state: DesiredState = DesiredState.LAUNCHED) -> Unit:
    return Unit(f"mark-{i:04d}.service", UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {i}\n"), state)


def full_flow(eng: Engine, first: int, last: int) -> list[list[WatchEvent]]:
    return [full_news(eng, r) for r in range(first, last)]


def mark(eng: Engine, revision: int) -> WatchEvent:
    return WatchEvent(eng.registry.keys.submitted, b"600", revision)


async def test_a_marked_end_ends_the_wait_without_the_quiet_spell():
    eng = engine()
    took = await settle_while(eng, full_flow(eng, 2, 12) + [[mark(eng, 12)]], timeout=30)
    assert eng.stats.marked_bursts == 1
    assert eng.stats.lagging_watch == 0
    assert took < QUIET * BURST_FLOW_QUIET  # generous: ends right after the mark's round


async def test_a_mark_before_later_job_news_does_not_end_the_wait():
    """Another submission's jobs came after the mark (in the same round of news): the wait
    ends by the quiet spell."""
    eng = engine()
    took = await settle_while(eng, full_flow(eng, 2, 6) + [[mark(eng, 6), *full_flow(eng, 7, 8)[0]]]
                              + full_flow(eng, 8, 12), timeout=30)
    assert eng.stats.marked_bursts == 0
    assert took >= QUIET * BURST_FLOW_QUIET * 0.9


async def test_a_mark_while_etcd_holds_later_jobs_does_not_end_the_wait():
    """A job written after the last job news (etcd has it, the watch has not brought it): the
    mark is one submission's end, not the burst's."""
    eng = engine()
    eng.registry.cluster.revision = 1000  # after every revision the fed events carry
    await eng.registry.create_units([unit(1)])  # one unit: no mark of its own
    took = await settle_while(eng, full_flow(eng, 2, 12) + [[mark(eng, 12)]], timeout=30)
    assert eng.stats.marked_bursts == 0
    assert eng.stats.lagging_watch > 0  # then the lag check kept it waiting, to burst_limit
    assert took >= LIMIT * 0.9


async def test_the_mark_arriving_before_its_own_job_news_waits_for_that_news():
    """Watches of several prefixes need not bring their events in one order: the mark ends the
    wait once the job news before it is in, and not before."""
    cluster = MemoryCluster()
    eng = engine(cluster)
    cluster.revision = 20
    await eng.registry.create_units([unit(1)])  # the submission's last job, at revision 21
    jobs = eng.registry.keys.jobs
    rounds = full_flow(eng, 2, 12) + [[mark(eng, 22)]] + [[WatchEvent(f"{jobs}mark-0001.service", b"{}", 21)]]
    took = await settle_while(eng, rounds, timeout=30)
    assert eng.stats.marked_bursts == 1
    assert eng.stats.lagging_watch == 0
    assert took < QUIET * BURST_FLOW_QUIET


async def test_create_units_marks_the_end_of_a_full_transaction_or_more():
    cluster = MemoryCluster()
    reg = MemoryRegistry(cluster)
    key = reg.keys.submitted
    await reg.create_units([unit(i) for i in range(BURST_FLOW - 1)])
    assert not [e for e in cluster.history if e.key == key]  # a `fleetctl start` of 59: no mark
    await reg.create_units([unit(i) for i in range(100, 100 + BURST_FLOW)])
    marks = [e for e in cluster.history if e.key == key]
    assert [e.value for e in marks] == [str(BURST_FLOW).encode()]
    assert marks[0].revision > max(e.revision for e in cluster.history if e.key.startswith(reg.keys.jobs))


async def test_a_marked_burst_is_placed_once_each_in_one_pass():
    """The whole loop: a submission of 240 units in one call is planned in one writing pass,
    its wait ended by the mark, each unit placed once and spread as reconcile() would."""
    async with leading_engine(burst_quiet=QUIET, burst_max=MAX, burst_limit=LIMIT) as (client, agents, eng):
        await asyncio.sleep(0.1)
        units = [unit(i) for i in range(240)]
        await client.create_units(units)
        placements = await placed(client, agents, len(units), polls=1000)
        assert sorted(placements) == sorted(u.name for u in units)
        assert load(placements, agents) == [60, 60, 60, 60]
        assert eng.stats.placements == len(units)
        assert eng.stats.settled_passes == 1 and eng.stats.marked_bursts == 1
        assert eng.stats.last_settled_at <= eng.stats.last_write_at
        assert len(eng.stats.write_log) == 1
