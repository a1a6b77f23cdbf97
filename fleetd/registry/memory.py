"""The registry's stores in memory: the Protocols of fleetd/registry/stores.py without etcd.

A speed-up for tests of the registry's consumers, never the proof: tests/etcd/test_registry.py
runs one behavioural table against this and against a real etcd. One `MemoryCluster` holds the
state (with a revision counter and leases that expire by the clock, TTLs rounded as etcd
rounds them); `MemoryRegistry` composes the stores with `Registry`'s flat method names.
Watches see the keys etcd would change (fleetd/registry/keys.py), one revision per write;
values in watch events are b"" (None for deletions): watchers here only wake up and read.
Not implemented: per-request counting (an etcd concern).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable, Iterable, Sequence

from fleetd.config import EtcdSettings
from fleetd.errors import DuplicateMachine, RegistryError, UnitConflict, UnitError, UnitNotFound
from fleetd.lease_timing import lease_ttl_seconds
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Unit, UnitState
from fleetd.registry import codec
from fleetd.registry.core import MAX_TXN_OPS, WatchEvent
from fleetd.registry.keys import KeyLayout
from fleetd.registry.stores import MachineView, NotLeader, UnitRecord
from fleetd.unit.file import UnitFile
from fleetd.unit.name import is_template_name, parse_unit_name


@dataclass
class _Lease:
    ttl: int
    deadline: float


@dataclass
class MemoryCluster:
    """Everything the stores keep, as plain values (`clock` is replaceable for tests)."""

    clock: Callable[[], float] = time.monotonic
    revision: int = 1
    bodies: dict[str, UnitFile] = field(default_factory=dict)
    jobs: dict[str, tuple[str, DesiredState]] = field(default_factory=dict)  # name -> (hash, desired)
    machines: dict[str, tuple[Machine, int]] = field(default_factory=dict)  # id -> (record, lease)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # dynamic; "" masks a key
    draining: set[str] = field(default_factory=set)
    schedule: dict[str, Placement] = field(default_factory=dict)  # name -> placement
    globals: dict[str, tuple[str, DesiredState]] = field(default_factory=dict)
    leader: tuple[str, int, int] | None = None  # (machine id, lease, mod revision)
    states: dict[tuple[str, str], tuple[UnitState, int]] = field(default_factory=dict)  # (name, mid) -> (state, lease)
    leases: dict[int, _Lease] = field(default_factory=dict)
    next_lease: int = 0x1000
    keys: KeyLayout = field(default_factory=lambda: KeyLayout("/fleet-memory/"))
    history: list[WatchEvent] = field(default_factory=list)
    watchers: set[asyncio.Queue] = field(default_factory=set)

    def bump(self, *changes: tuple[str, bool | bytes]) -> int:
        """A new revision for one write, with its (key, still there) changes for watchers; a
        change may carry the key's value as etcd would hold it (jobs and placements do, for
        the engine's watch-fed view), else the event's value is b"" (or None: deleted)."""
        self.revision += 1
        for key, present in changes:
            value = present if isinstance(present, bytes) else (b"" if present else None)
            event = WatchEvent(key, value, self.revision)
            self.history.append(event)
            for queue in self.watchers:
                queue.put_nowait(event)
        return self.revision

    def job_value(self, name: str) -> bytes:
        unit_hash, desired = self.jobs[name]
        return codec.encode_job(name, unit_hash, desired)

    async def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue = asyncio.Queue()
        self.watchers.add(queue)  # with the replay below: no await in between, nothing missed
        try:
            for event in [e for e in self.history if e.revision >= start_revision]:
                if any(event.key.startswith(p) for p in prefixes):
                    yield event
            while True:
                event = await queue.get()
                if event.revision >= start_revision and any(event.key.startswith(p) for p in prefixes):
                    yield event
        finally:
            self.watchers.discard(queue)

    def expire(self) -> None:
        """Drop leases past their deadline and what they held (etcd does this on its own)."""
        now = self.clock()
        for lease_id in [i for i, lease in self.leases.items() if lease.deadline <= now]:
            self.drop_lease(lease_id)

    def drop_lease(self, lease_id: int) -> None:
        if self.leases.pop(lease_id, None) is None:
            return
        keys = self.keys
        gone = [(keys.machine_object(m), False) for m, v in self.machines.items() if v[1] == lease_id]
        gone += [(keys.state(*k), False) for k, v in self.states.items() if v[1] == lease_id]
        self.machines = {m: v for m, v in self.machines.items() if v[1] != lease_id}
        self.states = {k: v for k, v in self.states.items() if v[1] != lease_id}
        if self.leader is not None and self.leader[1] == lease_id:
            self.leader = None
            gone.append((keys.engine_leader, False))
        self.bump(*gone)

    def alive(self, lease_id: int) -> bool:
        self.expire()
        return lease_id in self.leases

    def machine(self, machine_id: str) -> Machine | None:
        entry = self.machines.get(machine_id)
        if entry is None:
            return None
        record = entry[0]
        metadata = dict(record.metadata)
        for key, value in self.metadata.get(machine_id, {}).items():
            if value == "":
                metadata.pop(key, None)
            else:
                metadata[key] = value
        return replace(record, metadata=metadata, draining=machine_id in self.draining)


class MemoryUnitStore:
    """fleetd.registry.stores.UnitStore in memory."""

    def __init__(self, cluster: MemoryCluster):
        self.cluster = cluster

    async def bodies(self, hashes: Iterable[str]) -> dict[str, UnitFile]:
        return {h: self.cluster.bodies[h] for h in hashes if h in self.cluster.bodies}

    def offer_body(self, unit_hash: str, raw: bytes | None) -> None:
        """Every body is at hand in memory: nothing to keep."""

    async def jobs_written_after(self, revision: int) -> bool:
        latest: dict[str, bool] = {}  # job key -> still there after its last event
        for event in reversed(self.cluster.history):
            if event.revision <= revision:
                break
            if event.key.startswith(self.cluster.keys.jobs):
                latest.setdefault(event.key, event.value is not None)
        return any(latest.values())

    def current(self, name: str) -> Unit | None:
        job = self.cluster.jobs.get(name)
        return None if job is None else Unit(name, self.cluster.bodies[job[0]], job[1])

    async def get_unit(self, name: str) -> Unit | None:
        return self.current(name)

    async def list_units(self) -> list[Unit]:
        return [self.current(name) for name in sorted(self.cluster.jobs)]

    async def create_unit(self, unit: Unit) -> bool:
        return bool(await self.create_units([unit]))

    async def create_units(self, units: Sequence[Unit], *, all_or_none: bool = False) -> list[str]:
        for u in units:
            parse_unit_name(u.name)
        if all_or_none and any(u.name in self.cluster.jobs for u in units):
            return []
        created = []
        for u in units:
            if u.name in self.cluster.jobs:
                continue
            self.cluster.bodies[u.hash] = u.file
            self.cluster.jobs[u.name] = (u.hash, u.desired_state)
            created.append(u.name)
        if created:
            self.cluster.bump(*((self.cluster.keys.job(n), self.cluster.job_value(n)) for n in created))
            if len(units) >= MAX_TXN_OPS // 2:  # the submission's end, as UnitStore.create_units marks it
                self.cluster.bump((self.cluster.keys.submitted, str(len(created)).encode()))
        return created

    async def replace_unit(self, unit: Unit, *, expected_hash: str | None = None) -> None:
        parse_unit_name(unit.name)
        current = self.cluster.jobs.get(unit.name)
        if expected_hash is not None and (current is None or current[0] != expected_hash):
            raise UnitConflict(f"unit {unit.name} changed concurrently; try again")
        self.cluster.bodies[unit.hash] = unit.file
        self.cluster.jobs[unit.name] = (unit.hash, unit.desired_state)
        self.cluster.bump((self.cluster.keys.job(unit.name), self.cluster.job_value(unit.name)))

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        names = list(dict.fromkeys(names))
        for name in names:
            if name not in self.cluster.jobs:
                raise UnitNotFound(f"unit {name} not found")
        changes = {}
        for name in names:
            unit_hash, old = self.cluster.jobs[name]
            if old is state:
                continue
            if unit_hash and state is not DesiredState.INACTIVE and is_template_name(name):
                raise UnitError(f"unit {name}: cannot activate a template")
            changes[name] = (unit_hash, state)
        if changes:
            self.cluster.jobs.update(changes)
            self.cluster.bump(*((self.cluster.keys.job(n), self.cluster.job_value(n)) for n in changes))
            if len(names) >= MAX_TXN_OPS // 2:  # the submission's end, as EtcdUnitStore marks it
                self.cluster.bump((self.cluster.keys.submitted, str(len(changes)).encode()))

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        destroyed = [n for n in dict.fromkeys(names) if self.cluster.jobs.pop(n, None) is not None]
        if destroyed:
            self.cluster.bump(*((self.cluster.keys.job(n), False) for n in destroyed))
        return destroyed


class MemoryMachineStore:
    """fleetd.registry.stores.MachineStore in memory."""

    def __init__(self, cluster: MemoryCluster):
        self.cluster = cluster

    async def list_machines(self) -> list[Machine]:
        self.cluster.expire()
        return [self.cluster.machine(mid) for mid in sorted(self.cluster.machines)]

    async def get_machine(self, machine_id: str) -> Machine | None:
        self.cluster.expire()
        return self.cluster.machine(machine_id)

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        self.cluster.metadata.setdefault(machine_id, {})[key] = value or ""
        self.cluster.bump((self.cluster.keys.machine_metadata(machine_id, key), True))

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        (self.cluster.draining.add if draining else self.cluster.draining.discard)(machine_id)
        self.cluster.bump((self.cluster.keys.machine_draining(machine_id), draining))

    async def register_machine(self, machine: Machine, lease_id: int, *, adopt_lease: int | None = None) -> int:
        self.cluster.expire()
        existing = self.cluster.machines.get(machine.id)
        if existing is None:
            await self.update_machine(machine, lease_id)
            return lease_id
        if adopt_lease and existing[1] == adopt_lease and await self.keepalive(adopt_lease) > 0:
            await self.update_machine(machine, adopt_lease)
            return adopt_lease
        raise DuplicateMachine(
            f"machine ID {machine.id} is already registered by another fleetd "
            f"(lease {existing[1]:x}); refusing to start a second one"
        )

    async def update_machine(self, machine: Machine, lease_id: int) -> None:
        if not self.cluster.alive(lease_id):
            raise RegistryError(f"etcd: requested lease {lease_id:x} not found")
        self.cluster.machines[machine.id] = (machine, lease_id)
        self.cluster.bump((self.cluster.keys.machine_object(machine.id), True))

    async def grant_lease(self, ttl: float) -> int:
        self.cluster.next_lease += 1
        seconds = lease_ttl_seconds(ttl)
        self.cluster.leases[self.cluster.next_lease] = _Lease(seconds, self.cluster.clock() + seconds)
        return self.cluster.next_lease

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        if not self.cluster.alive(lease_id):
            return 0
        lease = self.cluster.leases[lease_id]
        lease.deadline = self.cluster.clock() + lease.ttl
        return lease.ttl

    async def keepalive_direct(self, endpoint: str, lease_id: int, timeout: float) -> int:
        return await self.keepalive(lease_id, timeout)

    async def revoke_lease(self, lease_id: int) -> None:
        self.cluster.drop_lease(lease_id)


class MemoryScheduleStore:
    """fleetd.registry.stores.ScheduleStore in memory."""

    def __init__(self, cluster: MemoryCluster):
        self.cluster = cluster

    async def placements(self) -> dict[str, Placement]:
        return dict(self.cluster.schedule)

    async def placements_on(self, candidates: dict[str, Sequence[str]]) -> dict[str, Placement]:
        schedule = self.cluster.schedule
        return {name: schedule[name] for name, mids in candidates.items()
                if name in schedule and schedule[name].machine_id in mids}

    async def global_targets(self) -> dict[str, tuple[str, DesiredState]]:
        return dict(self.cluster.globals)

    async def apply_schedule(self, *, fence_machine_id: str, place: Sequence[Placement] = (),
                             unplace: Sequence[tuple[str, str]] = (),
                             publish_globals: Sequence[tuple[str, str, DesiredState]] = (),
                             retract_globals: Sequence[str] = ()) -> int:
        self.cluster.expire()
        if self.cluster.leader is None or self.cluster.leader[0] != fence_machine_id:
            if unplace or retract_globals or place or publish_globals:
                raise NotLeader(f"machine {fence_machine_id} is no longer the engine leader")
        schedule, keys = self.cluster.schedule, self.cluster.keys
        changes = []
        for name, mid in unplace:
            if name in schedule and schedule[name].machine_id == mid:
                del schedule[name]
            changes.append((keys.placement(mid, name), False))
        for name in retract_globals:
            self.cluster.globals.pop(name, None)
            changes.append((keys.global_unit(name), False))
        for p in place:
            schedule[p.name] = p
            changes.append((keys.placement(p.machine_id, p.name), codec.encode_target(p.hash, p.desired_state)))
        for name, unit_hash, state in publish_globals:
            self.cluster.globals[name] = (unit_hash, state)
            changes.append((keys.global_unit(name), True))
        if changes:
            self.cluster.bump(*changes)
        removals = len(unplace) + len(retract_globals)
        additions = len(place) + len(publish_globals)
        return math.ceil(removals / MAX_TXN_OPS) + math.ceil(additions / MAX_TXN_OPS)


class MemoryLeadershipStore:
    """fleetd.registry.stores.LeadershipStore in memory."""

    def __init__(self, cluster: MemoryCluster):
        self.cluster = cluster

    async def campaign(self, machine_id: str, lease_id: int) -> bool:
        self.cluster.expire()
        if self.cluster.leader is None and lease_id in self.cluster.leases:
            self.cluster.leader = (machine_id, lease_id, self.cluster.bump((self.cluster.keys.engine_leader, True)))
            return True
        return self.cluster.leader is not None and self.cluster.leader[:2] == (machine_id, lease_id)

    async def leader(self) -> tuple[str | None, int]:
        self.cluster.expire()
        held = self.cluster.leader
        return (held[0], held[2]) if held else (None, 0)

    async def leader_lease(self) -> tuple[str | None, int]:
        self.cluster.expire()
        held = self.cluster.leader
        return (held[0], held[1]) if held else (None, 0)

    async def resign(self, machine_id: str) -> None:
        if self.cluster.leader is not None and self.cluster.leader[0] == machine_id:
            self.cluster.leader = None
            self.cluster.bump((self.cluster.keys.engine_leader, False))


class MemoryStateStore:
    """fleetd.registry.stores.StateStore in memory."""

    def __init__(self, cluster: MemoryCluster):
        self.cluster = cluster

    async def publish_states(self, states: Sequence[UnitState], lease_id: int) -> None:
        for s in states:
            self.cluster.states[(s.name, s.machine_id)] = (s, lease_id)
        if states:
            self.cluster.bump(*((self.cluster.keys.state(s.name, s.machine_id), True) for s in states))

    async def delete_states(self, names: Sequence[str], machine_id: str) -> None:
        for name in names:
            self.cluster.states.pop((name, machine_id), None)
        if names:
            self.cluster.bump(*((self.cluster.keys.state(n, machine_id), False) for n in names))

    async def unit_states(self, name: str | None = None, machine_id: str | None = None) -> list[UnitState]:
        self.cluster.expire()
        states = [s for s, _ in self.cluster.states.values()
                  if (not name or s.name == name) and (not machine_id or s.machine_id == machine_id)]
        return sorted(states, key=lambda s: (s.name, s.machine_id))


class MemoryClusterViews:
    """fleetd.registry.stores.ClusterViews in memory."""

    def __init__(self, cluster: MemoryCluster, units: MemoryUnitStore, schedule: MemoryScheduleStore):
        self.cluster = cluster
        self.units = units
        self.schedule = schedule

    async def snapshot(self) -> ClusterSnapshot:
        self.cluster.expire()
        units = {u.name: u for u in await self.units.list_units()}
        machines = {mid: self.cluster.machine(mid) for mid in sorted(self.cluster.machines)}
        return ClusterSnapshot(self.cluster.revision, units, machines, dict(self.cluster.schedule))

    async def machine_view(self, machine_id: str, *, prefetch: Iterable[str] = ()) -> MachineView:
        self.cluster.expire()
        placements = {n: p for n, p in self.cluster.schedule.items() if p.machine_id == machine_id}
        return MachineView(placements, dict(self.cluster.globals), self.cluster.machine(machine_id),
                           self.cluster.revision)

    def target_hashes(self, events: Iterable[WatchEvent]) -> list[str]:
        """Nothing to prefetch: bodies are at hand in memory."""
        return []

    async def unit_records(self, names: Sequence[str], *, find_unreported: bool = True) -> dict[str, UnitRecord]:
        self.cluster.expire()
        records = {}
        for name in dict.fromkeys(names):
            unit = self.units.current(name)
            if unit is None:
                continue
            states = tuple(sorted((s for (n, _), (s, _) in self.cluster.states.items() if n == name),
                                  key=lambda s: s.machine_id))
            placement = self.cluster.schedule.get(name)
            if placement is not None and not find_unreported and placement.machine_id not in {s.machine_id for s in states}:
                placement = None
            records[name] = UnitRecord(unit, placement, states)
        return records


class MemoryRegistry:
    """The memory stores under `Registry`'s flat method names (see fleetd/registry/registry.py)."""

    def __init__(self, cluster: MemoryCluster | None = None, settings: EtcdSettings | None = None):
        self.cluster = cluster or MemoryCluster()
        self.settings = settings or EtcdSettings()  # what a caller reads (e.g. the request timeout)
        self.units = MemoryUnitStore(self.cluster)
        self.machines = MemoryMachineStore(self.cluster)
        self.schedule = MemoryScheduleStore(self.cluster)
        self.leadership = MemoryLeadershipStore(self.cluster)
        self.states = MemoryStateStore(self.cluster)
        self.views = MemoryClusterViews(self.cluster, self.units, self.schedule)

    async def close(self) -> None:
        return None

    async def current_revision(self) -> int:
        return self.cluster.revision

    @property
    def keys(self) -> KeyLayout:
        return self.cluster.keys

    def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[WatchEvent]:
        return self.cluster.watch(prefixes, start_revision)

    async def watch_batches(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """watch() in lists, as the etcd registry's: here one event a list."""
        async for event in self.cluster.watch(prefixes, start_revision):
            yield [event]

    def set_call_observer(self, observer) -> None:
        """No etcd calls to observe: observers are accepted and never called."""

    def __getattr__(self, name: str):
        for store in (self.units, self.machines, self.schedule, self.leadership, self.states, self.views):
            if not name.startswith("_") and hasattr(store, name):
                return getattr(store, name)
        raise AttributeError(name)
