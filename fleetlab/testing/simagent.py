"""A simulated agent: a real machine record, real watches and state publishing through the real
registry code, but an in-memory "systemd". For engine tests and the scale benchmark."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fleetd.constraints import RequirementsCache, global_units_for
from fleetd.errors import RegistryError
from fleetd.lease_timing import keepalive_interval
from fleetd.model import DesiredState, Machine, Unit, UnitState
from fleetd.registry import Registry

KEEPALIVE_RETRY = 0.5  # seconds until another try after a failed keep-alive


@dataclass
class SimulatedAgent:
    registry: Registry
    machine: Machine
    ttl: float = 5.0
    running: dict[str, UnitState] = field(default_factory=dict)  # the in-memory "systemd"
    lease_id: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    synced: asyncio.Event = field(default_factory=asyncio.Event)  # set after the first sync
    progress: asyncio.Event | None = None  # set after each pass that changed something (shared)
    # the first keep-alive after this fraction of the interval (1.0: a full one, as a machine that
    # has just registered); many agents started together get phases spread over (0, 1], as
    # machines that joined at different times, instead of all keeping alive in the same instant
    keepalive_phase: float = 1.0
    passes: int = 0  # sync passes so far
    tally: list[int] | None = None  # [units active, passes] summed over the agents sharing it
    active: int = 0  # units reported active after the last pass
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _requirements: RequirementsCache = field(default_factory=RequirementsCache)

    async def start(self) -> None:
        self.lease_id = await self.registry.grant_lease(self.ttl)
        await self.registry.register_machine(self.machine, self.lease_id)
        self._tasks = [asyncio.create_task(self._keepalive()), asyncio.create_task(self._loop())]

    async def crash(self) -> None:
        """Stop without a trace of goodbye: the lease runs out on its own."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def stop(self) -> None:
        await self.crash()
        if self.lease_id is not None:
            await self.registry.revoke_lease(self.lease_id)

    async def _keepalive(self) -> None:
        interval = keepalive_interval(self.ttl) * self.keepalive_phase
        while True:
            await asyncio.sleep(interval)  # as often as a real agent
            try:
                await self.registry.keepalive(self.lease_id)
                interval = keepalive_interval(self.ttl)
            except RegistryError:
                # a round that failed or came too late (e.g. on a CPU-starved machine): try
                # again soon, as the real agent does, instead of letting the lease run out
                interval = min(KEEPALIVE_RETRY, keepalive_interval(self.ttl))

    async def sync(self, prefetch: list[str] | tuple = ()) -> int:
        """One level-triggered pass, like the real agent's: read this machine's share of the
        registry at one revision (with the bodies named by the watch events that woke it, in
        the same transaction), compute what should run, publish what changed."""
        reg = self.registry
        view = await reg.machine_view(self.machine.id, prefetch=prefetch)
        placements, globals_ = view.placements, view.globals
        bodies = await reg.bodies([p.hash for p in placements.values()] + [h for h, _ in globals_.values()])
        units = [Unit(n, bodies[p.hash], p.desired_state) for n, p in placements.items()]
        wanted = {u.name: u for u in units if u.desired_state is not DesiredState.INACTIVE}
        if globals_:
            glob = {n: Unit(n, bodies[h], s) for n, (h, s) in globals_.items()}
            machine = view.machine or self.machine  # with dynamic metadata
            for name in global_units_for(machine, units + list(glob.values()), placements, cache=self._requirements):
                wanted[name] = glob[name]
        new_states = {}
        for name, unit in wanted.items():
            active = unit.desired_state is DesiredState.LAUNCHED
            new_states[name] = UnitState(name, self.machine.id, unit.hash, "loaded",
                                         "active" if active else "inactive", "running" if active else "dead",
                                         unit.desired_state.value)
        publish = [s for n, s in new_states.items() if self.running.get(n) != s]
        gone = [n for n in self.running if n not in new_states]
        if publish:
            await reg.publish_states(publish, self.lease_id)
        if gone:
            await reg.delete_states(gone, self.machine.id)
        self.running = new_states
        active = sum(1 for state in new_states.values() if state.active_state == "active")
        if self.tally is not None:
            self.tally[0] += active - self.active
            self.tally[1] += 1
        self.active = active
        self.passes += 1
        if publish or gone:
            self.changed.set()
            if self.progress is not None:
                self.progress.set()
        return view.revision

    async def _loop(self) -> None:
        reg = self.registry
        prefixes = [reg.keys.machine_schedule(self.machine.id), reg.keys.globals,
                    reg.keys.machine_metadata(self.machine.id)]
        dirty = asyncio.Event()
        events: list = []
        revision = await self.sync()
        self.synced.set()
        start = revision + 1

        async def watch() -> None:
            async for event in reg.watch(prefixes, start):
                events.append(event)
                dirty.set()

        watcher = asyncio.create_task(watch())
        try:
            while True:
                await dirty.wait()
                dirty.clear()
                # events at or below the revision the last pass read are in that read already
                # (they were written while it was in flight): no news, no pass
                fresh = [e for e in events if e.revision > revision]
                events.clear()
                if fresh:
                    revision = await self.sync(reg.target_hashes(fresh))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
