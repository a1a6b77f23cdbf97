"""The agent's two publishers of unit states (systemd's signals, and the pass that just applied a
desired state) never have transactions in flight together, so the last one computed is the
one etcd keeps. Fakes for etcd and systemd: the order of two concurrent transactions is what
is under test, and a real etcd cannot be made to reorder them on demand.

Found by CI: `fleetctl stop` waited forever when a state computed before the pass finished
(applied "launched") was applied in etcd after the one computed after it (applied "loaded").
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fleetd.agent.loop import Agent
from fleetd.agent.plan import DesiredUnit
from fleetd.agent.systemd import UnitSystemdState
from fleetd.model import DesiredState, UnitState

NAME, MID, HASH = "a.service", "m" * 32, "h" * 40


class GatedRegistry:
    """publish_states holds its first call until `gate` is set; records every call."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.first_in_flight = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.published: list[UnitState] = []

    async def publish_states(self, states, lease_id) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if not self.first_in_flight.is_set():
                self.first_in_flight.set()
                await self.gate.wait()
            self.published.extend(states)
        finally:
            self.in_flight -= 1


class OneSignal:
    """A UnitWatch that delivers one state, then nothing."""

    def __init__(self, state: UnitSystemdState) -> None:
        self.queue = [state]

    async def next(self, timeout=None):
        if self.queue:
            return self.queue.pop(0)
        if timeout is not None and timeout <= 0:
            raise asyncio.TimeoutError
        await asyncio.Event().wait()


class Systemd:
    async def states(self, names):
        return {n: UnitSystemdState(n, "loaded", "inactive", "dead") for n in names}


async def test_a_pass_publishes_after_a_signal_in_flight_never_beside_it():
    registry = GatedRegistry()
    presence = SimpleNamespace(lease_id=7, machine=SimpleNamespace(id=MID))
    agent = Agent(registry, Systemd(), presence)
    desired = {NAME: DesiredUnit(NAME, HASH, "", DesiredState.LOADED)}
    agent._desired = desired
    agent._applied = {NAME: (HASH, "launched")}  # the pass stopping the unit has not finished
    agent._published = {NAME: UnitState(NAME, MID, HASH, "loaded", "active", "running", "launched")}
    agent._watch = OneSignal(UnitSystemdState(NAME, "loaded", "inactive", "dead"))

    signals = asyncio.create_task(agent.publish_states())
    await asyncio.wait_for(registry.first_in_flight.wait(), 5)  # the signal's state is on its way
    agent._applied = {NAME: (HASH, "loaded")}  # the pass finished stopping it
    finished_pass = asyncio.create_task(agent._publish_changed(desired))
    await asyncio.sleep(0.05)
    assert registry.in_flight == 1, "the pass sent its state beside the one in flight"
    registry.gate.set()
    await asyncio.wait_for(finished_pass, 5)
    signals.cancel()
    await asyncio.gather(signals, return_exceptions=True)

    assert registry.max_in_flight == 1
    assert [s.applied for s in registry.published] == ["launched", "loaded"]  # last computed, last sent
    assert agent._published[NAME].applied == "loaded"
