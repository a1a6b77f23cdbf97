"""Units join the agent's watch of systemd's signals before their start jobs are queued, so
each unit's state is published as systemd reports it, not in one batch after the pass's last
start job (issue 14: a node's ten units of a burst were published together at the end).

Memory registry and a recording systemd: what is under test is the order of the agent's calls
(the adapter itself is tested against a real systemd in tests/lab/test_systemd_adapter.py).
"""

from __future__ import annotations

from types import SimpleNamespace

from fleetd.agent.loop import Agent
from fleetd.agent.systemd import UnitSystemdState
from fleetd.errors import SystemdError
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.registry.memory import MemoryRegistry
from fleetd.unit import UnitFile

MID = "a" * 32


class RecordingSystemd:
    """Loads and starts at once; records which units the watch held when each call came."""

    def __init__(self, watch) -> None:
        self.watch = watch
        self.files: dict[str, str] = {}
        self.running: set[str] = set()
        self.calls: list[tuple[str, tuple[str, ...], frozenset[str]]] = []

    def installed_units(self):
        return dict(self.files)

    async def states(self, names):
        return {n: UnitSystemdState(n, "loaded" if n in self.files else "not-found",
                                    "active" if n in self.running else "inactive",
                                    "running" if n in self.running else "dead") for n in names}

    async def load(self, units):
        self.calls.append(("load", tuple(units), self.watch.units))
        self.files.update(units)

    async def start(self, names):
        names = tuple(names)
        self.calls.append(("start", names, self.watch.units))
        self.running.update(names)

    async def stop(self, names):
        self.running.difference_update(names)

    async def unload(self, names):
        for n in names:
            self.files.pop(n, None)
            self.running.discard(n)


class RecordingWatch:
    def __init__(self, fail: bool = False) -> None:
        self.units: frozenset[str] = frozenset()
        self.fail = fail
        self.fetched: list[frozenset[str]] = []  # units added (UnitWatch reads their states)

    async def set_units(self, names):
        if self.fail:
            self.fail = False
            raise SystemdError("systemd ListUnitsByNames: D-Bus call failed")
        names = frozenset(names)
        if names - self.units:
            self.fetched.append(names - self.units)
        self.units = names


async def _agent_with_units(names, watch):
    reg = MemoryRegistry()
    units = [Unit(n, UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {i}\n"), DesiredState.LAUNCHED)
             for i, n in enumerate(names)]
    await reg.create_units(units)
    for u in units:
        reg.cluster.schedule[u.name] = Placement(u.name, MID, u.hash, DesiredState.LAUNCHED)
    systemd = RecordingSystemd(watch)
    presence = SimpleNamespace(lease_id=None, machine=Machine(MID, "10.0.0.1"))
    agent = Agent(reg, systemd, presence)
    agent._watch = watch
    return agent, systemd


async def test_units_are_watched_before_their_start_jobs():
    names = ["a.service", "b.service", "c.service"]
    watch = RecordingWatch()
    agent, systemd = await _agent_with_units(names, watch)
    await agent.reconcile_once()
    assert [(op, set(units), set(seen)) for op, units, seen in systemd.calls] == [
        ("load", set(names), set()),  # not before they are loaded: their first state is "loaded"
        ("start", set(names), set(names)),
    ]
    assert watch.fetched == [frozenset(names)]  # read once, before the start

    # a later pass: one unit more to start, one unit gone
    d = Unit("d.service", UnitFile.parse("[Service]\nExecStart=/bin/sleep 9\n"), DesiredState.LAUNCHED)
    await agent.registry.create_units([d])
    agent.registry.cluster.schedule[d.name] = Placement(d.name, MID, d.hash, DesiredState.LAUNCHED)
    agent.registry.cluster.schedule.pop("c.service")
    await agent.reconcile_once()
    assert systemd.calls[-1] == ("start", ("d.service",), frozenset(names) | {"d.service"})
    assert watch.fetched[1:] == [{"d.service"}]
    assert watch.units == {"a.service", "b.service", "d.service"}  # c left it at the end of the pass


async def test_a_failed_watch_before_the_start_does_not_stop_the_start():
    names = ["a.service"]
    watch = RecordingWatch(fail=True)
    agent, systemd = await _agent_with_units(names, watch)
    await agent.reconcile_once()
    assert systemd.running == {"a.service"}
    assert agent.stats.failures == 0
    assert watch.units == {"a.service"}  # added at the end of the pass instead
