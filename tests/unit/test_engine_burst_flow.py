"""How long the engine waits for a burst of submissions (fleetd/engine/leader.py BURST_QUIET,
BURST_MAX, BURST_FLOW, BURST_LIMIT): only job news keeps it waiting, a trickle of small
submissions at most burst_max, a large submission in full flow up to burst_limit, and the end
of a large submission is a longer quiet spell."""

from __future__ import annotations

import asyncio
import time

from _burst import full_news, settle_while
from fleetd.engine.leader import BURST_FLOW, BURST_FLOW_QUIET, Engine
from fleetd.registry import WatchEvent
from fleetd.registry.memory import MemoryCluster, MemoryRegistry

# the upper bounds below leave room for a loaded machine (a stalled event loop): MAX is 20 quiet
# spells, LIMIT more than three MAXes
QUIET, MAX, LIMIT = 0.03, 0.6, 2.0


def engine() -> Engine:
    return Engine(MemoryRegistry(MemoryCluster()), "m" * 32, 2.0, burst_quiet=QUIET, burst_max=MAX, burst_limit=LIMIT)


def flowing(news, seconds: float | None = None):
    """Rounds of `news(revision)` (revisions 2, 3, ...), for at most `seconds` from the first, if given."""
    revision, began = 1, time.monotonic()
    while seconds is None or time.monotonic() - began < seconds:
        revision += 1
        yield news(revision)


async def test_the_engines_own_schedule_news_does_not_keep_it_waiting():
    eng = engine()
    schedule = eng.registry.keys.schedule
    took = await settle_while(eng, flowing(lambda r: [WatchEvent(f"{schedule}m/u{r}.service", b"{}", r)]))
    assert took < MAX  # ended by the quiet spell of job news, though schedule news never paused


async def test_a_trickle_of_small_submissions_waits_at_most_burst_max():
    eng = engine()
    jobs = eng.registry.keys.jobs
    took = await settle_while(eng, flowing(lambda r: [WatchEvent(f"{jobs}u{r}.service", b"{}", r)]))
    assert MAX * 0.9 <= took < LIMIT * 0.8


async def test_a_large_submission_in_full_flow_is_waited_for_up_to_burst_limit():
    eng = engine()
    took = await settle_while(eng, flowing(lambda r: full_news(eng, r)))
    assert LIMIT * 0.9 <= took < LIMIT + 1.0


async def test_the_end_of_a_large_submission_is_a_longer_quiet_spell():
    eng = engine()
    flow = 0.1  # seconds of full flow, then nothing
    fed: list[float] = []
    took = await settle_while(eng, flowing(lambda r: full_news(eng, r), seconds=flow), fed=fed)
    # counted from the last news actually fed (a stalled loop can end the feeder's flow early)
    assert fed[-1] + QUIET * BURST_FLOW_QUIET * 0.9 <= took < MAX


def test_one_full_transaction_of_a_large_submission_is_a_burst():
    eng = engine()
    jobs = eng.registry.keys.jobs
    eng._events = [WatchEvent(f"{jobs}u{i}.service", b"{}", 7) for i in range(BURST_FLOW - 1)]
    assert not eng._in_burst()  # a `fleetctl start` of up to BURST_FLOW - 1 units: planned at once
    eng._events.append(WatchEvent(f"{jobs}u-last.service", b"{}", 7))
    assert eng._in_burst()


async def test_a_watch_lagging_behind_etcd_keeps_the_engine_waiting():
    """News of a large submission pauses in the watch while etcd already holds more of its jobs
    (etcd sends a slow watcher's events in catch-up rounds): the wait goes on, to burst_limit
    here, where the news never comes."""
    eng = engine()
    eng.registry.cluster.revision = 1000  # after every revision the fed events carry
    await eng.registry.create_units([unit_named("late.service")])
    flow = 0.1
    took = await settle_while(eng, flowing(lambda r: full_news(eng, r), seconds=flow))
    assert took >= LIMIT * 0.9
    assert eng.stats.lagging_watch > 0


def unit_named(name: str):
    from fleetd.model import DesiredState, Unit
    from fleetd.unit.file import UnitFile

    return Unit(name, UnitFile.parse("[Service]\nExecStart=/bin/true\n"), DesiredState.LAUNCHED)


async def test_etcd_that_does_not_answer_in_time_ends_the_wait(monkeypatch):
    import fleetd.engine.leader as leader

    eng = engine()

    async def hangs(revision: int) -> bool:
        await asyncio.sleep(3600)
        return True

    monkeypatch.setattr(leader, "BURST_ASK", 0.05)
    monkeypatch.setattr(eng.registry, "jobs_written_after", hangs)
    flow = 0.1
    took = await settle_while(eng, flowing(lambda r: full_news(eng, r), seconds=flow))
    assert took < MAX  # planned as it is, not after the registry's request timeout
