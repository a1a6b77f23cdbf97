"""The schedule in etcd: placements keyed per machine and the global-unit mirror, written
only by the engine leader (every write fenced on the leader key)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from fleetd.model import DesiredState, Placement
from fleetd.registry import codec
from fleetd.registry.connection import enc
from fleetd.registry.core import MAX_TXN_OPS, RegistryCore, chunks, pipelined
from fleetd.registry.keys import KeyLayout
from fleetd.registry.stores import NotLeader


def placements_from(keys: KeyLayout, kvs: Iterable[Any]) -> dict[str, Placement]:
    placements: dict[str, Placement] = {}
    base = keys.schedule
    for kv in kvs:
        machine_id, _, name = kv.key.decode()[len(base):].partition("/")
        placements[name] = codec.decode_placement(name, machine_id, kv.value)
    return placements


def globals_from(keys: KeyLayout, kvs: Iterable[Any]) -> dict[str, tuple[str, DesiredState]]:
    result = {}
    for kv in kvs:
        data = codec.loads(kv.value)
        result[kv.key.decode()[len(keys.globals):]] = (data["hash"], DesiredState(data["desiredState"]))
    return result


def grouped_chunks(groups: Iterable[Sequence], size: int = MAX_TXN_OPS) -> list[list]:
    """The groups' items in batches of at most `size`, a group that fits in one batch never
    split over two (a larger one fills batches as they come): e.g. one machine's new
    placements in one transaction, so that its agent gets them in one watch response and
    makes one pass."""
    batches: list[list] = []
    batch: list = []
    for group in groups:
        if len(group) <= size and len(batch) + len(group) > size:
            batches.append(batch)
            batch = []
        for item in group:
            if len(batch) == size:
                batches.append(batch)
                batch = []
            batch.append(item)
    if batch:
        batches.append(batch)
    return batches


class EtcdScheduleStore:
    """fleetd.registry.stores.ScheduleStore in etcd."""

    def __init__(self, core: RegistryCore):
        self.core = core

    async def placements(self) -> dict[str, Placement]:
        return placements_from(self.core.keys, await self.core.range(self.core.keys.schedule))

    async def placements_on(self, candidates: dict[str, Sequence[str]]) -> dict[str, Placement]:
        """Placements of units on the given machines (point reads; at most one per unit)."""
        pairs = [(name, mid) for name, mids in candidates.items() for mid in dict.fromkeys(mids)]
        if not pairs:
            return {}
        core, tx = self.core, self.core.tx
        found: dict[str, Placement] = {}

        async def fetch(chunk: Sequence[tuple[str, str]]) -> None:
            _, responses = await core.txn([], [tx.get(enc(core.keys.placement(mid, n))) for n, mid in chunk])
            for (name, mid), response in zip(chunk, responses):
                if response:
                    found[name] = codec.decode_placement(name, mid, response[0].value)

        await pipelined([fetch(chunk) for chunk in chunks(pairs)])
        return found

    async def global_targets(self) -> dict[str, tuple[str, DesiredState]]:
        """The global/ mirror: global units that agents run, with hash and desired state."""
        return globals_from(self.core.keys, await self.core.range(self.core.keys.globals))

    async def apply_schedule(
        self,
        *,
        fence_machine_id: str,
        place: Sequence[Placement] = (),
        unplace: Sequence[tuple[str, str]] = (),
        publish_globals: Sequence[tuple[str, str, DesiredState]] = (),
        retract_globals: Sequence[str] = (),
    ) -> int:
        """Write engine decisions, fenced on this machine still holding the leader key.

        Returns the number of transactions used. Raises NotLeader if the fence fails.
        """
        core, keys, tx = self.core, self.core.keys, self.core.tx
        removals = [tx.delete(enc(keys.placement(mid, name))) for name, mid in unplace]
        removals += [tx.delete(enc(keys.global_unit(name))) for name in retract_globals]
        # Placements grouped by machine (stable within one), a machine's never split over two
        # transactions unless they alone are more than one holds: an agent then gets its new
        # units in one transaction, i.e. one watch response and one pass, instead of one per batch.
        # Each transaction's operations are made when it is sent (a burst of 10,000 placements
        # starts going out after the first 120 are encoded, not after all of them).
        by_machine: dict[str, list] = {}
        for p in sorted(place, key=lambda p: p.machine_id):
            by_machine.setdefault(p.machine_id, []).append(p)
        groups: list[list] = list(by_machine.values())
        groups += [[(n, h, s)] for n, h, s in publish_globals]
        fence = tx.value(enc(keys.engine_leader)) == enc(fence_machine_id)

        put = core.put_op

        def operation(item: Any) -> Any:
            if isinstance(item, Placement):
                return put(enc(keys.placement(item.machine_id, item.name)),
                           codec.encode_target(item.hash, item.desired_state))
            if isinstance(item, tuple):  # a global unit: (name, hash, desired state)
                name, unit_hash, state = item
                return put(enc(keys.global_unit(name)), codec.encode_target(unit_hash, state))
            return item  # an operation already (the removals)

        async def write(chunk: Sequence) -> None:
            ok, _ = await core.txn([fence], [operation(item) for item in chunk])
            if not ok:
                raise NotLeader(f"machine {fence_machine_id} is no longer the engine leader")

        # Every removal lands before any addition (a moved unit never has two placements);
        # within each phase the transactions touch distinct keys and are pipelined.
        count = 0
        for batches in (list(chunks(removals)), grouped_chunks(groups)):
            await pipelined([write(chunk) for chunk in batches])
            count += len(batches)
        return count
