"""The agent's watch wakes a pass only for news: an event at or below the revision the last
pass read (written while that pass was reading) is in that read already. The news's unit
hashes are kept for the next pass's read (its bodies in the same transaction)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fleetd.agent.loop import Agent
from fleetd.registry.core import WatchEvent
from fleetd.registry.keys import KeyLayout

MID = "m" * 32


class Watching:
    """A registry whose watch yields the given events, then ends."""

    def __init__(self, events) -> None:
        self.keys = KeyLayout("/fleet/")
        self.events = events

    async def watch(self, prefixes, revision):
        for event in self.events:
            yield event

    def target_hashes(self, events):
        return [event.value.decode() for event in events]


class CountingEvent(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


async def woken_by(agent: Agent, events) -> bool:
    agent.registry.events = events
    agent._dirty = CountingEvent()
    await asyncio.wait_for(agent._watch_keys(11), 5)
    return agent._dirty.sets > 1  # the last set is the watch's end (a pass re-establishes it)


async def test_only_events_newer_than_the_last_read_wake_a_pass():
    keys = KeyLayout("/fleet/")
    agent = Agent(Watching([]), SimpleNamespace(), SimpleNamespace(machine=SimpleNamespace(id=MID)))
    agent._read_revision = 20
    placement = keys.placement(MID, "a.service")
    assert not await woken_by(agent, [WatchEvent(placement, b"h15", 15), WatchEvent(placement, b"h20", 20)])
    assert agent._prefetch == []
    assert await woken_by(agent, [WatchEvent(placement, b"h20", 20), WatchEvent(placement, b"h21", 21)])
    assert agent._prefetch == ["h21"]
    agent._read_revision = 0  # no pass yet: everything is news
    assert await woken_by(agent, [WatchEvent(placement, b"h5", 5)])
    assert agent._prefetch == ["h21", "h5"]
