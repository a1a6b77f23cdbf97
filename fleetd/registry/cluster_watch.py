"""A live copy of the cluster's units, placements, unit states, machines and engine leader.

`read_cluster(registry)` reads `job/`, `schedule/`, `states/`, `machines/` and the leader key in
one transaction (one revision); `follow_cluster(registry, view, on_change)` then watches those
prefixes from the next revision, applies each event to the view in place and reports what
changed (`Change`), coalescing the events that arrive together. A compacted revision or a lost
etcd makes it read a fresh view (reported as `Change(reset=True)`) and watch again.

Used by the dashboard (fleetd/api/dashboard.py): one watch per fleetd, however many browsers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, NamedTuple

from fleetd.errors import RegistryError
from fleetd.model import DesiredState, Machine, Placement, Unit, UnitState
from fleetd.registry import codec
from fleetd.registry.connection import enc, prefix_end
from fleetd.registry.machines import machines_from
from fleetd.registry.registry import Registry

log = logging.getLogger(__name__)


class _KV(NamedTuple):  # what machines_from reads of a key-value
    key: bytes
    value: bytes


@dataclass
class ClusterView:
    """The cluster at `revision`; mutated only by follow_cluster."""

    revision: int = 0
    units: dict[str, Unit] = field(default_factory=dict)
    placements: dict[str, Placement] = field(default_factory=dict)  # by unit name
    states: dict[str, dict[str, UnitState]] = field(default_factory=dict)  # name -> machine -> state
    machines: dict[str, Machine] = field(default_factory=dict)
    leader: str = ""
    machine_keys: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # raw keys per machine


@dataclass(frozen=True)
class Change:
    units: frozenset[str] = frozenset()
    machines: frozenset[str] = frozenset()
    leader: bool = False
    reset: bool = False  # everything may have changed (a fresh read)

    def __bool__(self) -> bool:
        return bool(self.units or self.machines or self.leader or self.reset)


async def read_cluster(registry: Registry) -> ClusterView:
    keys = registry.keys
    tx = registry.core.tx
    prefixes = [keys.jobs, keys.schedule, keys.states, keys.machines]
    ranges = [tx.get(enc(p), prefix_end(enc(p))) for p in prefixes] + [tx.get(enc(keys.engine_leader))]
    _, (jobs, schedule, states, machines, leader), revision = await registry.core.txn_at([], ranges)
    view = ClusterView(revision=revision)
    decoded = [codec.decode_job(kv.value) for kv in jobs]
    bodies = await registry.bodies(h for _, h, _ in decoded)
    for name, unit_hash, desired in decoded:
        if unit_hash in bodies:
            view.units[name] = Unit(name, bodies[unit_hash], desired)
    base = len(enc(keys.schedule))
    for kv in schedule:
        machine_id, _, name = kv.key[base:].decode().partition("/")
        view.placements[name] = codec.decode_placement(name, machine_id, kv.value)
    for kv in states:
        state = codec.decode_state(kv.value)
        view.states.setdefault(state.name, {})[state.machine_id] = state
    mbase = len(enc(keys.machines))
    for kv in machines:
        machine_id = kv.key[mbase:].partition(b"/")[0].decode()
        view.machine_keys.setdefault(machine_id, {})[kv.key] = kv.value
    for machine_id in view.machine_keys:
        _refresh_machine(registry, view, machine_id)
    view.leader = leader[0].value.decode() if leader else ""
    return view


def _refresh_machine(registry: Registry, view: ClusterView, machine_id: str) -> None:
    kvs = [_KV(k, v) for k, v in view.machine_keys.get(machine_id, {}).items()]
    machine = machines_from(registry.keys, kvs).get(machine_id) if kvs else None
    if machine is None:
        view.machines.pop(machine_id, None)
    else:
        view.machines[machine_id] = machine


class _Applier:
    """Applies watch events to a view and collects what changed until `take()`."""

    def __init__(self, registry: Registry, view: ClusterView):
        self.registry = registry
        self.view = view
        k = registry.keys
        self.k = k
        self.units: set[str] = set()
        self.machines: set[str] = set()
        self.leader = False
        self.pending_jobs: dict[str, tuple[str, DesiredState]] = {}

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        k, view = self.k, self.view
        view.revision = max(view.revision, revision)
        if key.startswith(k.jobs):
            name = key[len(k.jobs):]
            if value is None:
                view.units.pop(name, None)
                self.pending_jobs.pop(name, None)
            else:
                _, unit_hash, desired = codec.decode_job(value)
                self.pending_jobs[name] = (unit_hash, desired)
            self.units.add(name)
        elif key.startswith(k.schedule):
            machine_id, _, name = key[len(k.schedule):].partition("/")
            if value is None:
                current = view.placements.get(name)
                if current is not None and current.machine_id == machine_id:
                    del view.placements[name]
            else:
                view.placements[name] = codec.decode_placement(name, machine_id, value)
            self.units.add(name)
        elif key.startswith(k.states):
            name, _, machine_id = key[len(k.states):].rpartition("/")
            if value is None:
                per = view.states.get(name, {})
                per.pop(machine_id, None)
                if not per:
                    view.states.pop(name, None)
            else:
                state = codec.decode_state(value)
                view.states.setdefault(state.name, {})[state.machine_id] = state
            self.units.add(name)
        elif key.startswith(k.machines):
            machine_id = key[len(k.machines):].partition("/")[0]
            raw = enc(key)
            keys = view.machine_keys.setdefault(machine_id, {})
            if value is None:
                keys.pop(raw, None)
                if not keys:
                    view.machine_keys.pop(machine_id, None)
            else:
                keys[raw] = value
            _refresh_machine(self.registry, view, machine_id)
            self.machines.add(machine_id)
        elif key == k.engine_leader:
            view.leader = value.decode() if value is not None else ""
            self.leader = True

    async def resolve_bodies(self) -> None:
        if not self.pending_jobs:
            return
        pending, self.pending_jobs = self.pending_jobs, {}
        bodies = await self.registry.bodies(h for h, _ in pending.values())
        for name, (unit_hash, desired) in pending.items():
            if unit_hash in bodies:
                self.view.units[name] = Unit(name, bodies[unit_hash], desired)
            else:
                log.warning("unit %s refers to missing body %s; ignored", name, unit_hash)

    def take(self) -> Change:
        change = Change(frozenset(self.units), frozenset(self.machines), self.leader)
        self.units, self.machines, self.leader = set(), set(), False
        return change


OnChange = Callable[[ClusterView, Change], Awaitable[None] | None]


async def follow_cluster(registry: Registry, view: ClusterView, on_change: OnChange, *,
                         coalesce: float = 0.01, retry: float = 1.0) -> None:
    """Keep `view` current until cancelled; call on_change(view, change) after each batch."""
    keys = registry.keys
    prefixes = [keys.jobs, keys.schedule, keys.states, keys.machines, keys.engine_leader]
    while True:
        applier = _Applier(registry, view)
        wake = asyncio.Event()
        failed: list[BaseException] = []

        async def consume() -> None:
            try:
                async for event in registry.watch(prefixes, view.revision + 1):
                    applier.apply(event.key, event.value, event.revision)
                    wake.set()
            except Exception as exc:  # noqa: BLE001 - any end of the watch means: read again
                failed.append(exc)
                wake.set()

        consumer = asyncio.create_task(consume())
        try:
            while not failed:
                await wake.wait()
                await asyncio.sleep(coalesce)  # let the rest of a transaction's events arrive
                wake.clear()
                while applier.pending_jobs:  # events may land meanwhile; none is taken half-done
                    await applier.resolve_bodies()
                change = applier.take()
                if change:
                    result = on_change(view, change)
                    if asyncio.iscoroutine(result):
                        await result
        except RegistryError as exc:  # resolving bodies failed
            failed.append(exc)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        log.info("dashboard cluster watch: %s; reading the cluster again", failed[0] if failed else "stopped")
        while True:
            try:
                fresh = await read_cluster(registry)
                break
            except RegistryError as exc:
                log.debug("dashboard cluster read failed: %s", exc)
                await asyncio.sleep(retry)
        view.__dict__.update(fresh.__dict__)
        result = on_change(view, Change(reset=True))
        if asyncio.iscoroutine(result):
            await result
