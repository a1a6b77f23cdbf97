"""Reads across the stores at one etcd revision: the engine's snapshot, one agent's view, and
named units with their placements and states."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Unit, UnitState
from fleetd.registry import codec
from fleetd.registry.connection import enc, prefix_end
from fleetd.registry.core import MAX_TXN_OPS, RegistryCore, WatchEvent, chunks, pipelined
from fleetd.registry.machines import machines_from
from fleetd.registry.schedule import EtcdScheduleStore, globals_from, placements_from
from fleetd.registry.stores import MachineView, UnitRecord
from fleetd.registry.units import BodyCache

log = logging.getLogger(__name__)


@dataclass
class DecodedCache:
    """What snapshot() decoded last time, by key, with the mod revision it was decoded at."""

    units: dict[bytes, tuple[int, Unit]] = field(default_factory=dict)
    placements: dict[bytes, tuple[int, Placement]] = field(default_factory=dict)
    machines: dict[str, tuple[tuple, Machine | None]] = field(default_factory=dict)


class EtcdClusterViews:
    """fleetd.registry.stores.ClusterViews in etcd."""

    def __init__(self, core: RegistryCore, bodies: BodyCache, schedule: EtcdScheduleStore):
        self.core = core
        self.body_cache = bodies
        self.schedule = schedule
        self.decoded = DecodedCache()

    async def unit_records(self, names: Sequence[str], *, find_unreported: bool = True) -> dict[str, UnitRecord]:
        """Named units with their states and placements, read per name (a few transactions,
        whatever the size of the cluster); unknown names are left out.

        A unit placed on a machine that has not reported it yet is looked up in the whole
        schedule only with `find_unreported`; without, it comes back without a placement
        (its current state is "inactive" either way, only its target machine is unknown):
        what a wait for a unit's state needs, on every change, at any scale."""
        names = list(dict.fromkeys(names))
        core, tx = self.core, self.core.tx
        jobs: dict[str, Any] = {}
        states: dict[str, list[UnitState]] = {}

        async def fetch(chunk: Sequence[str]) -> None:
            ops = []
            for name in chunk:
                prefix = enc(core.keys.unit_states(name))
                ops += [tx.get(enc(core.keys.job(name))), tx.get(prefix, prefix_end(prefix))]
            _, responses = await core.txn([], ops)
            for i, name in enumerate(chunk):
                job, reported = responses[2 * i], responses[2 * i + 1]
                if job:
                    jobs[name] = job[0]
                    states[name] = sorted((codec.decode_state(kv.value) for kv in reported),
                                          key=lambda s: s.machine_id)

        await pipelined([fetch(chunk) for chunk in chunks(names, MAX_TXN_OPS // 2)])
        decoded = {n: codec.decode_job(jobs[n].value) for n in names if n in jobs}
        bodies = await self.body_cache.fetch(h for _, h, _ in decoded.values())
        placements = await self.schedule.placements_on({n: [s.machine_id for s in states[n]] for n in decoded})
        if find_unreported and any(n not in placements for n in decoded):
            everywhere = await self.schedule.placements()
            placements.update({n: everywhere[n] for n in decoded if n not in placements and n in everywhere})
        records: dict[str, UnitRecord] = {}
        for name, (_, unit_hash, desired) in decoded.items():
            if unit_hash not in bodies:  # missing or unreadable: ignored, as list_units does
                log.warning("unit %s refers to missing or unreadable body %s; ignored", name, unit_hash)
                continue
            records[name] = UnitRecord(Unit(name, bodies[unit_hash], desired), placements.get(name),
                                       tuple(states[name]))
        return records

    async def machine_view(self, machine_id: str, *, prefetch: Iterable[str] = ()) -> MachineView:
        """Everything one agent reads, in one transaction: its placements, the global units
        and its own machine record (with dynamic metadata). `prefetch`: hashes of bodies the
        caller expects to need (e.g. named by the watch events that woke it, see
        `target_hashes`): those not cached yet are read in the same transaction and handed to
        the body cache, so that `bodies()` then needs no round trip for them."""
        keys, tx = self.core.keys, self.core.tx
        ranges = [keys.machine_schedule(machine_id), keys.globals, keys.machine_dir(machine_id)]
        wanted = sorted({h for h in prefetch if h not in self.body_cache.known})[:MAX_TXN_OPS - len(ranges)]
        ok, responses, revision = await self.core.txn_at(
            [], [self.core.range_op(r) for r in ranges] + [tx.get(enc(keys.body(h))) for h in wanted]
        )
        sched_kvs, glob_kvs, machine_kvs = responses[:3]
        for unit_hash, response in zip(wanted, responses[3:]):
            if response:
                self.body_cache.offer(unit_hash, response[0].value)
        return MachineView(
            placements=placements_from(keys, sched_kvs),
            globals=globals_from(keys, glob_kvs),
            machine=machines_from(keys, machine_kvs).get(machine_id),
            revision=revision,
        )

    def target_hashes(self, events: Iterable[WatchEvent]) -> list[str]:
        """Unit hashes named by schedule/ and global/ watch events (what an agent's pass will
        read bodies of: pass them to `machine_view(prefetch=...)`); other events are ignored."""
        keys = self.core.keys
        hashes = []
        for event in events:
            if event.value is not None and event.key.startswith((keys.schedule, keys.globals)):
                try:
                    hashes.append(codec.loads(event.value)["hash"])
                except (ValueError, KeyError, TypeError):
                    continue  # the pass's own read will say what is wrong with it
        return hashes

    # ------------------------------------------------------------------ snapshot

    async def snapshot(self) -> ClusterSnapshot:
        """Units, machines and placements read in one transaction, i.e. at one revision.

        Decoded values are cached by key and mod revision between calls, so a snapshot of a
        large, mostly unchanged cluster decodes only what changed since the previous one.
        """
        keys = self.core.keys
        ok, (jobs, machines, schedule), revision = await self.core.txn_at(
            [], [self.core.range_op(p) for p in (keys.jobs, keys.machines, keys.schedule)]
        )
        return ClusterSnapshot(
            revision=revision,
            units=await self._snapshot_units(jobs),
            machines=self._snapshot_machines(machines),
            placements=self._snapshot_placements(schedule),
        )

    async def _snapshot_units(self, kvs) -> dict[str, Unit]:
        cache = self.decoded.units
        fresh: dict[bytes, tuple[int, Unit]] = {}
        decoded: dict[bytes, tuple[str, str, DesiredState]] = {}
        for kv in kvs:
            hit = cache.get(kv.key)
            if hit is not None and hit[0] == kv.mod_revision:
                fresh[kv.key] = hit
            else:
                decoded[kv.key] = codec.decode_job(kv.value)
        if decoded:
            bodies = await self.body_cache.fetch(h for _, h, _ in decoded.values())
        units: dict[str, Unit] = {}
        for kv in kvs:
            entry = fresh.get(kv.key)
            if entry is None:
                name, unit_hash, desired = decoded[kv.key]
                body = bodies.get(unit_hash)
                if body is None:
                    log.warning("unit %s refers to missing body %s; ignored", name, unit_hash)
                    continue
                entry = fresh[kv.key] = (kv.mod_revision, Unit(name, body, desired))
            units[entry[1].name] = entry[1]
        self.decoded.units = fresh
        return units

    def _snapshot_placements(self, kvs) -> dict[str, Placement]:
        cache = self.decoded.placements
        fresh: dict[bytes, tuple[int, Placement]] = {}
        placements: dict[str, Placement] = {}
        base = len(enc(self.core.keys.schedule))
        for kv in kvs:
            entry = cache.get(kv.key)
            if entry is None or entry[0] != kv.mod_revision:
                machine_id, _, name = kv.key[base:].decode().partition("/")
                entry = (kv.mod_revision, codec.decode_placement(name, machine_id, kv.value))
            fresh[kv.key] = entry
            placements[entry[1].name] = entry[1]
        self.decoded.placements = fresh
        return placements

    def _snapshot_machines(self, kvs) -> dict[str, Machine]:
        """Machines, each re-decoded only when one of its keys changed."""
        cache = self.decoded.machines
        fresh: dict[str, tuple[tuple, Machine | None]] = {}
        base = len(enc(self.core.keys.machines))
        groups: dict[str, list] = {}
        for kv in kvs:
            machine_id = kv.key[base:].partition(b"/")[0].decode()
            groups.setdefault(machine_id, []).append(kv)
        machines: dict[str, Machine] = {}
        for machine_id in sorted(groups):
            group = groups[machine_id]
            signature = tuple((kv.key, kv.mod_revision) for kv in group)
            entry = cache.get(machine_id)
            if entry is None or entry[0] != signature:
                entry = (signature, machines_from(self.core.keys, group).get(machine_id))
            fresh[machine_id] = entry
            if entry[1] is not None:
                machines[machine_id] = entry[1]
        self.decoded.machines = fresh
        return machines
