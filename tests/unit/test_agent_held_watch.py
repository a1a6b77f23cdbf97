"""A unit being started is held in the agent's watch (fleetd/agent/systemd.py UnitWatch.hold and
release, fleetd/agent/executor.py's START batch): none of its states is delivered while its job
runs (never `activating`), its state is delivered as soon as its own job ended, and a unit whose
load state is not known to be "loaded" is read at its release instead of guessed. systemd is a
stand-in here (its reads); tests/lab/test_systemd_adapter.py runs the same against real systemd."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetd.agent.executor import execute
from fleetd.agent.plan import DesiredUnit, plan
from fleetd.agent.systemd import UnitSystemdState, UnitWatch
from fleetd.model import DesiredState
from fleetd.unit.file import UnitFile


def st(name: str, load: str = "loaded", active: str = "inactive", sub: str = "dead") -> UnitSystemdState:
    return UnitSystemdState(name, load, active, sub)


class Systemd:
    """What UnitWatch asks of its manager: reads of states (counted), the units directory."""

    def __init__(self, states: dict[str, UnitSystemdState]) -> None:
        self.now = states
        self.reads: list[tuple[str, ...]] = []
        self.units_dir = Path("/nonexistent")
        self._watches: set = set()

    async def states(self, names):
        self.reads.append(tuple(names))
        return {n: self.now.get(n, st(n, "not-found")) for n in names}

    async def track_units(self, added=(), gone=()):
        pass  # the bus's match rules (tests/lab/test_systemd_adapter.py)


async def pending(watch: UnitWatch) -> list[UnitSystemdState]:
    await asyncio.sleep(0)  # spawned reads
    await asyncio.sleep(0)
    out = []
    while True:
        try:
            out.append(await watch.next(timeout=0))
        except asyncio.TimeoutError:
            return out


async def test_a_held_unit_is_delivered_at_its_release_only_with_its_last_signalled_state():
    sd = Systemd({})
    watch = UnitWatch(sd)
    watch.hold(["a.service", "b.service"], {"a.service": st("a.service"), "b.service": st("b.service")})
    assert watch.units == {"a.service", "b.service"}
    for sub in ("start-pre", "start"):
        watch._properties_changed("a.service", {"ActiveState": "activating", "SubState": sub})
    assert await pending(watch) == []  # never `activating`
    watch._properties_changed("a.service", {"ActiveState": "active", "SubState": "running"})
    assert await pending(watch) == []  # still held: its job has not ended
    watch.release("a.service")
    assert await pending(watch) == [st("a.service", "loaded", "active", "running")]
    assert sd.reads == []  # from the signals and the states of the load, no read
    # b's job ends without a signal (it failed to start at once, say): its known state
    watch.release("b.service")
    assert await pending(watch) == [st("b.service")]
    # released: a later change is delivered as it comes
    watch._properties_changed("a.service", {"ActiveState": "deactivating", "SubState": "stop"})
    assert await pending(watch) == [st("a.service", "loaded", "deactivating", "stop")]


async def test_a_held_unit_without_a_loaded_state_is_read_at_its_release():
    sd = Systemd({"a.service": st("a.service", "loaded", "activating", "start")})
    watch = UnitWatch(sd)
    watch.hold(["a.service"], {"a.service": st("a.service", "not-found")})
    # signals of a unit whose load state is unknown: no read while held, no guess
    watch._properties_changed("a.service", {"ActiveState": "activating", "SubState": "start"})
    assert await pending(watch) == [] and sd.reads == []
    sd.now["a.service"] = st("a.service", "loaded", "active", "running")
    watch.release("a.service")
    assert await pending(watch) == [st("a.service", "loaded", "active", "running")]
    assert sd.reads == [("a.service",)]
    watch.release("a.service")  # twice: nothing more
    assert await pending(watch) == []


async def test_a_unit_watched_already_keeps_its_state_and_is_held_too():
    sd = Systemd({"a.service": st("a.service", "loaded", "failed", "failed")})
    watch = UnitWatch(sd)
    await watch.set_units(["a.service"])
    watch.hold(["a.service"], {"a.service": st("a.service", "not-found")})  # the watch's own state wins
    assert await pending(watch) == []  # its undelivered `failed` waits for the release too
    watch._properties_changed("a.service", {"ActiveState": "activating", "SubState": "start"})
    watch._properties_changed("a.service", {"ActiveState": "active", "SubState": "running"})
    watch.release("a.service")
    assert await pending(watch) == [st("a.service", "loaded", "active", "running")]
    assert sd.reads == [("a.service",)]  # set_units' first read only


class StartingManager:
    """The executor's manager: its START batch gets the watch, the states to hold the units
    with, and the callback; the LOAD batch answers the states it read after linking."""

    def __init__(self, after_load):
        self.after_load = after_load
        self.started = None

    async def unload(self, names):
        return None

    async def stop(self, names):
        return None

    async def load(self, units, known=None):
        return self.after_load

    async def start(self, names, **held):
        self.started = (tuple(names), held)


def _unit(name: str) -> DesiredUnit:
    text = "[Service]\nExecStart=/bin/true\n"
    return DesiredUnit(name, UnitFile.parse(text).hash, text, DesiredState.LAUNCHED)


async def test_the_start_batch_holds_units_with_the_states_read_after_loading():
    desired = {n: _unit(n) for n in ("new.service", "old.service")}
    old = desired["old.service"]
    the_plan = plan(desired, {"old.service": _observed(old)}, {})
    before = {"new.service": st("new.service", "not-found"), "old.service": st("old.service", "loaded", "failed", "failed")}
    mgr = StartingManager({"new.service": st("new.service")})
    watch, done = object(), []
    result = await execute(the_plan, mgr, known=before, watch=watch, on_started=lambda n, r: done.append(n))
    assert result.ok
    names, held = mgr.started
    assert names == ("new.service", "old.service")
    assert held["watch"] is watch and held["on_done"] is not None
    assert held["known"] == {"new.service": st("new.service"), "old.service": before["old.service"]}
    # a load that needed a reload reads nothing: the loaded unit is held without a state
    mgr = StartingManager(None)
    assert (await execute(the_plan, mgr, known=before, watch=watch)).ok
    assert mgr.started[1]["known"] == {"old.service": before["old.service"]}
    # without a watch the start batch is the plain one
    mgr = StartingManager(None)
    assert (await execute(the_plan, mgr, known=before)).ok and mgr.started[1] == {}


def _observed(unit: DesiredUnit):
    from fleetd.agent.plan import ObservedUnit

    return ObservedUnit(unit.name, unit.hash, "failed", "failed", "loaded")
