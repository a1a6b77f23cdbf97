"""The engine leader's in-memory view of the cluster, kept up to date by its watches.

`ClusterView.load()` reads job/, machines/ and schedule/ once (one transaction: the
registry's snapshot); then `apply(events)` folds the watch events in, so that a pass needs no
range read: a job event decodes one key (its body, written in the same transaction, came in a
unit/ event of the same watch and is handed to the registry's body cache; a body is read from
etcd only if its event has not arrived yet), a schedule event one placement; a machines/ event re-reads the machines (few keys, rarely
written). The engine re-loads on start, after a compaction or a broken watch, and at every
periodic resync (the safety net).

Unchanged `Unit`, `Placement` and `Machine` objects are the same objects from pass to pass, so
the requirements cache and the incremental planner compare them by identity. The view also
notes which names changed (`take_changes()`), so that the planner looks only at those.
tests/test_engine_view.py checks that the view equals a full re-read after random event
sequences on a real etcd.
"""

from __future__ import annotations

from fleetd.engine.incremental import Changes
from fleetd.model import ClusterSnapshot, Machine, Placement, Unit
from fleetd.registry import codec
from fleetd.registry.registry import Registry, WatchEvent


class ClusterView:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        keys = registry.keys
        self._jobs, self._schedule, self._machines_prefix = keys.jobs, keys.schedule, keys.machines
        self._bodies = keys.bodies
        self.units: dict[str, Unit] = {}
        self.placements: dict[str, Placement] = {}
        self._extra: dict[str, dict[str, Placement]] = {}   # duplicate schedule keys of a unit
        self.machines: dict[str, Machine] = {}
        self.revision = 0
        self.loaded_revision = 0   # events up to this one are in the loaded ranges already
        self.loaded = False
        self.events = 0
        self._changes: Changes | None = None   # None: loaded (everything new) since the last take

    @property
    def prefixes(self) -> list[str]:
        return [self._jobs, self._bodies, self._machines_prefix, self._schedule]

    async def load(self) -> ClusterSnapshot:
        snap = await self.registry.snapshot()
        self.units, self.machines, self.placements = dict(snap.units), dict(snap.machines), dict(snap.placements)
        self._extra = {}
        self.revision = self.loaded_revision = snap.revision
        self.loaded = True
        self._changes = None
        return snap

    def take_changes(self) -> Changes | None:
        """What changed since the previous call (None: a whole read happened in between, or
        this is the first call); starts noting afresh."""
        changes, self._changes = self._changes, Changes()
        return changes

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(self.revision, self.units, self.machines, self.placements)

    async def apply(self, events: list[WatchEvent]) -> list[Unit]:
        """Fold watch events (in revision order per prefix) into the view; returns the units it
        added or changed."""
        machines_changed = False
        jobs: dict[str, bytes | None] = {}
        for event in events:
            if event.revision <= self.loaded_revision:
                continue
            self.events += 1
            key = event.key
            if event.revision > self.revision:
                self.revision = event.revision
            if key.startswith(self._jobs):
                jobs[key[len(self._jobs):]] = event.value   # the last event per job wins
            elif key.startswith(self._schedule):
                machine_id, _, name = key[len(self._schedule):].partition("/")
                value = event.value
                if value is None:
                    self._set_placement(name, machine_id, None)
                    continue
                current = self.placements.get(name)
                if (current is not None and current.machine_id == machine_id
                        and value == codec.encode_target(current.hash, current.desired_state)):
                    continue   # what the view holds already: the engine's own write coming back
                self._set_placement(name, machine_id, codec.decode_placement(name, machine_id, value))
            elif key.startswith(self._machines_prefix):
                machines_changed = True
            elif key.startswith(self._bodies):
                # a new unit's body comes in the same transaction as its job: handed to the
                # registry's body cache, the job's pass needs no read of it
                self.registry.offer_body(key[len(self._bodies):], event.value)
        changed = await self._apply_jobs(jobs) if jobs else []
        if machines_changed:
            fresh = {m.id: m for m in await self.registry.list_machines()}
            # keep unchanged Machine objects (identity) for the planner
            machines = {mid: (self.machines[mid] if self.machines.get(mid) == m else m)
                        for mid, m in fresh.items()}
            if self._changes is not None and (machines.keys() != self.machines.keys() or any(
                    m is not self.machines[mid] for mid, m in machines.items())):
                self._changes.machines = True
            self.machines = machines
        return changed

    def _set_placement(self, name: str, machine_id: str, placement: Placement | None) -> None:
        """One schedule key. Like the snapshot, a unit under several machines' keys (never
        written so by the engine) shows the one of the last machine ID in key order."""
        if name not in self._extra:
            current = self.placements.get(name)
            if current is None or current.machine_id == machine_id:   # one key at most: no order to keep
                if placement is not None and current is not None and (current is placement or current == placement):
                    return
                if self._changes is not None:
                    self._changes.placements.add(name)
                if placement is None:
                    self.placements.pop(name, None)
                else:
                    self.placements[name] = placement
                return
        extra = self._extra.get(name)
        current = self.placements.get(name)
        keys: dict[str, Placement] = dict(extra) if extra else {}
        if current is not None:
            keys[current.machine_id] = current
        if placement is None:
            keys.pop(machine_id, None)
        elif keys.get(machine_id) != placement:
            keys[machine_id] = placement
        else:
            return
        if self._changes is not None:
            self._changes.placements.add(name)
        if not keys:
            self.placements.pop(name, None)
            self._extra.pop(name, None)
            return
        last = max(keys)
        self.placements[name] = keys.pop(last)
        if keys:
            self._extra[name] = keys
        else:
            self._extra.pop(name, None)

    async def _apply_jobs(self, jobs: dict[str, bytes | None]) -> list[Unit]:
        decoded = {}
        changed: list[Unit] = []
        noted = self._changes.units if self._changes is not None else set()
        for key_name, value in jobs.items():
            if value is None:
                if self.units.pop(key_name, None) is not None:
                    noted.add(key_name)
            else:
                decoded[key_name] = codec.decode_job(value)
        if not decoded:
            return changed
        wanted = [h for _, h, _ in decoded.values()]
        bodies = await self.registry.bodies(wanted)   # cached: bodies are immutable
        for key_name, (name, unit_hash, desired) in decoded.items():
            current = self.units.get(name)
            if current is not None and current.hash == unit_hash and current.desired_state == desired:
                continue
            body = current.file if current is not None and current.hash == unit_hash else bodies.get(unit_hash)
            if body is None:
                if self.units.pop(name, None) is not None:   # as the snapshot does: a job whose body is missing is ignored
                    noted.add(name)
                continue
            unit = self.units[name] = Unit(name, body, desired)
            noted.add(name)
            changed.append(unit)
        return changed

    def note_written(self, decisions) -> None:
        """The engine's own schedule writes, before their watch events arrive (same values)."""
        for unplace in decisions.unplaces:
            self._set_placement(unplace.name, unplace.machine_id, None)
        for place in decisions.places:
            self._set_placement(place.placement.name, place.placement.machine_id, place.placement)
