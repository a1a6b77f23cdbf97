"""The registry: the cluster's state in etcd v3. The only module that issues etcd requests.

Layout: see fleetd/registry/keys.py and docs/registry.md. Writes that can race go through
transactions with compare-and-swap; batches are split to stay under etcd's 128 ops per txn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

import aetcd.exceptions

from fleetd.config import EtcdSettings
from fleetd.errors import (
    DuplicateMachine,
    RegistryError,
    UnitConflict,
    UnitError,
    UnitNotFound,
)
from fleetd.lease_timing import lease_ttl_seconds
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Unit, UnitState
from fleetd.registry import codec
from fleetd.registry.connection import Connection, RequestCounter, enc, prefix_end, translate
from fleetd.registry.keys import KeyLayout
from fleetd.unit.file import UnitFile
from fleetd.unit.name import is_template_name, parse_unit_name

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TXN_OPS = 120  # etcd's default --max-txn-ops is 128; keep room for compares


class WatchCompacted(RegistryError):
    """The requested start revision was compacted: the watcher must resync from a snapshot."""

    def __init__(self, compact_revision: int):
        super().__init__(f"etcd revision compacted (oldest available {compact_revision}); resync needed")
        self.compact_revision = compact_revision


class NotLeader(RegistryError):
    """A schedule write was fenced off because this engine no longer holds the leader lease."""


@dataclass(frozen=True)
class WatchEvent:
    key: str
    value: bytes | None  # None for a deletion
    revision: int


@dataclass(frozen=True)
class UnitRecord:
    """A unit, its placement (None: not placed, or see `Registry.unit_records`) and its states."""

    unit: Unit
    placement: Placement | None
    states: tuple[UnitState, ...]


@dataclass(frozen=True)
class MachineView:
    """One machine's share of the registry, read at one revision (see Registry.machine_view)."""

    placements: dict[str, Placement]
    globals: dict[str, tuple[str, DesiredState]]
    machine: Machine | None  # None when its record is gone (lease expired)
    revision: int


def _chunks(items: Sequence, size: int = MAX_TXN_OPS) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _DecodedCache:
    """What snapshot() decoded last time, by key, with the mod revision it was decoded at."""

    units: dict[bytes, tuple[int, Unit]] = field(default_factory=dict)
    placements: dict[bytes, tuple[int, Placement]] = field(default_factory=dict)
    machines: dict[str, tuple[tuple, Machine | None]] = field(default_factory=dict)


#: Transactions in flight at once when a large read or write is split into many.
PIPELINE_DEPTH = 8


async def _pipelined(coroutines: Sequence[Awaitable[T]], depth: int = PIPELINE_DEPTH) -> list[T]:
    """Await the coroutines with at most `depth` in flight; the first error cancels the rest."""
    if len(coroutines) <= 1:
        return [await c for c in coroutines]
    semaphore = asyncio.Semaphore(depth)

    async def limited(coroutine: Awaitable[T]) -> T:
        async with semaphore:
            return await coroutine

    tasks = [asyncio.ensure_future(limited(c)) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Registry:
    def __init__(self, connection: Connection):
        self._conn = connection
        self.keys = KeyLayout(connection.settings.key_prefix)
        self._bodies: dict[str, UnitFile] = {}
        self._decoded = _DecodedCache()

    @classmethod
    async def connect(cls, settings: EtcdSettings, *, counter: RequestCounter | None = None) -> "Registry":
        """Open a registry; `counter` (optional) counts its etcd requests and bytes."""
        return cls(await Connection(settings, counter).open())

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> "Registry":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def settings(self) -> EtcdSettings:
        return self._conn.settings

    def set_call_observer(self, observer: Callable[[str, float, bool], None] | None) -> None:
        """Report each etcd call as observer(operation, seconds, ok), e.g. for metrics; None stops.

        Optional and cheap: without an observer, calls go straight to the connection."""
        conn = self._conn
        conn.__dict__.pop("call", None)  # back to the connection's own method
        if observer is None:
            return
        inner = conn.call

        async def timed(fn, *args, **kwargs):
            started = time.perf_counter()
            ok = False
            try:
                result = await inner(fn, *args, **kwargs)
                ok = True
                return result
            finally:
                observer(getattr(fn, "__name__", "call"), time.perf_counter() - started, ok)

        conn.call = timed

    # ------------------------------------------------------------------ low level

    async def _get(self, key: str):
        return await self._conn.call(self._conn.client.get, enc(key))

    async def _range(self, prefix: str):
        return await self._conn.call(self._conn.client.get_prefix, enc(prefix))

    async def _txn(self, compare: list, success: list, failure: list | None = None):
        succeeded, responses, _ = await self._conn.call(self._conn.txn, compare, success, failure or [])
        return succeeded, responses

    async def _txn_at(self, compare: list, success: list):
        """Like _txn, also returning the revision the transaction was served at."""
        return await self._conn.call(self._conn.txn, compare, success, [])

    async def current_revision(self) -> int:
        _, _, revision = await self._txn_at([], [])
        return revision

    # ------------------------------------------------------------------ unit bodies

    async def _bodies_for(self, hashes: Iterable[str]) -> dict[str, UnitFile]:
        hashes = list(hashes)
        missing = sorted({h for h in hashes if h not in self._bodies})
        tx = self._conn.tx

        async def fetch(chunk: Sequence[str]) -> None:
            ok, responses = await self._txn([], [tx.get(enc(self.keys.body(h))) for h in chunk])
            for unit_hash, response in zip(chunk, responses):
                if response:
                    self._bodies[unit_hash] = UnitFile.parse(response[0].value, source=f"unit body {unit_hash}")

        await _pipelined([fetch(chunk) for chunk in _chunks(missing)])
        return {h: self._bodies[h] for h in hashes if h in self._bodies}

    async def bodies(self, hashes: Iterable[str]) -> dict[str, UnitFile]:
        """Unit bodies by hash (immutable, so cached for the life of this registry)."""
        return await self._bodies_for(hashes)

    def _remember_body(self, unit: UnitFile) -> None:
        self._bodies[unit.hash] = unit

    def _units_from_jobs(self, kvs, bodies: dict[str, UnitFile]) -> dict[str, Unit]:
        units: dict[str, Unit] = {}
        for kv in kvs:
            name, unit_hash, desired = codec.decode_job(kv.value)
            body = bodies.get(unit_hash)
            if body is None:
                log.warning("unit %s refers to missing body %s; ignored", name, unit_hash)
                continue
            units[name] = Unit(name, body, desired)
        return units

    # ------------------------------------------------------------------ units

    async def get_unit(self, name: str) -> Unit | None:
        kv = await self._get(self.keys.job(name))
        if kv is None:
            return None
        _, unit_hash, desired = codec.decode_job(kv.value)
        bodies = await self._bodies_for([unit_hash])
        if unit_hash not in bodies:
            raise RegistryError(f"unit {name}: body {unit_hash} missing from the registry")
        return Unit(name, bodies[unit_hash], desired)

    async def list_units(self) -> list[Unit]:
        jobs = await self._range(self.keys.jobs)
        hashes = [codec.decode_job(kv.value)[1] for kv in jobs]
        bodies = await self._bodies_for(hashes)
        units = self._units_from_jobs(jobs, bodies)
        return [units[name] for name in sorted(units)]

    async def create_unit(self, unit: Unit) -> bool:
        """Create the unit if absent. Returns False if it already exists (idempotent, unchanged)."""
        created = await self.create_units([unit])
        return bool(created)

    async def create_units(self, units: Sequence[Unit]) -> list[str]:
        """Create the units that do not exist yet, in batched transactions; returns the created names.

        Each creation is conditional on the job key being absent, so a concurrent creator
        never has its unit overwritten. Names are checked first (a name with '/' would break
        the key layout, and one systemd refuses would block the agent it lands on).
        """
        for u in units:
            parse_unit_name(u.name)
        tx = self._conn.tx

        async def create(chunk: Sequence[Unit]) -> list[str]:
            compare = [tx.create(enc(self.keys.job(u.name))) == 0 for u in chunk]
            bodies = {u.hash: u.file for u in chunk}  # etcd refuses a key twice in one txn
            success = [tx.put(enc(self.keys.body(h)), enc(f.serialize())) for h, f in bodies.items()]
            success += [tx.put(enc(self.keys.job(u.name)), codec.encode_job(u.name, u.hash, u.desired_state)) for u in chunk]
            ok, _ = await self._txn(compare, success)
            if ok:
                for u in chunk:
                    self._remember_body(u.file)
                return [u.name for u in chunk]
            created = []
            for u in chunk:  # slow path: someone else created some of them
                ok, _ = await self._txn(
                    [tx.create(enc(self.keys.job(u.name))) == 0],
                    [
                        tx.put(enc(self.keys.body(u.hash)), enc(u.file.serialize())),
                        tx.put(enc(self.keys.job(u.name)), codec.encode_job(u.name, u.hash, u.desired_state)),
                    ],
                )
                if ok:
                    created.append(u.name)
                    self._remember_body(u.file)
            return created

        # Batches are independent (each unit is created only if absent): pipelined.
        batches = await _pipelined([create(chunk) for chunk in _chunks(list(units), MAX_TXN_OPS // 2)])
        return [name for batch in batches for name in batch]

    async def replace_unit(self, unit: Unit, *, expected_hash: str | None = None) -> None:
        """Store a new body (and desired state) for a unit, whether or not it existed."""
        parse_unit_name(unit.name)
        tx = self._conn.tx
        key = enc(self.keys.job(unit.name))
        for _ in range(10):
            current = await self._get(self.keys.job(unit.name))
            if expected_hash is not None:
                if current is None or codec.decode_job(current.value)[1] != expected_hash:
                    raise UnitConflict(f"unit {unit.name} changed concurrently; try again")
            compare = [tx.mod(key) == current.mod_revision] if current else [tx.create(key) == 0]
            ok, _ = await self._txn(
                compare,
                [
                    tx.put(enc(self.keys.body(unit.hash)), enc(unit.file.serialize())),
                    tx.put(key, codec.encode_job(unit.name, unit.hash, unit.desired_state)),
                ],
            )
            if ok:
                self._remember_body(unit.file)
                return
        raise UnitConflict(f"unit {unit.name}: too many concurrent updates")

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        """Set the desired state of existing units (compare-and-swap per unit, batched)."""
        tx = self._conn.tx
        pending = list(dict.fromkeys(names))
        for _ in range(10):
            if not pending:
                return
            ops = [tx.get(enc(self.keys.job(n))) for n in pending]
            current: dict[str, object] = {}
            for chunk_names, chunk_ops in zip(_chunks(pending), _chunks(ops)):
                _, responses = await self._txn([], list(chunk_ops))
                for name, response in zip(chunk_names, responses):
                    if not response:
                        raise UnitNotFound(f"unit {name} not found")
                    current[name] = response[0]
            retry: list[str] = []
            for chunk_names in _chunks(pending, MAX_TXN_OPS // 2):
                compare, success = [], []
                for name in chunk_names:
                    kv = current[name]
                    job_name, unit_hash, old = codec.decode_job(kv.value)
                    if old is state:
                        continue
                    if unit_hash and state is not DesiredState.INACTIVE and is_template_name(name):
                        raise UnitError(f"unit {name}: cannot activate a template")
                    compare.append(tx.mod(enc(self.keys.job(name))) == kv.mod_revision)
                    success.append(tx.put(enc(self.keys.job(name)), codec.encode_job(job_name, unit_hash, state)))
                if not success:
                    continue
                ok, _ = await self._txn(compare, success)
                if not ok:
                    retry.extend(chunk_names)
            pending = retry
        raise UnitConflict(f"units {', '.join(pending)}: too many concurrent updates")

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        """Delete units; returns the names that existed. Bodies are kept (content-addressed)."""
        tx = self._conn.tx
        destroyed: list[str] = []
        for chunk in _chunks(list(dict.fromkeys(names))):
            _, responses = await self._txn([], [tx.delete(enc(self.keys.job(n))) for n in chunk])
            for name, response in zip(chunk, responses):
                if response.response_delete_range.deleted:
                    destroyed.append(name)
        return destroyed

    # ------------------------------------------------------------------ machines

    def _machines_from(self, kvs) -> dict[str, Machine]:
        objects: dict[str, bytes] = {}
        dynamic: dict[str, dict[str, str]] = defaultdict(dict)
        draining: set[str] = set()
        base = self.keys.machines
        for kv in kvs:
            rest = kv.key.decode()[len(base):]
            machine_id, _, tail = rest.partition("/")
            if tail == "object":
                objects[machine_id] = kv.value
            elif tail.startswith("metadata/"):
                dynamic[machine_id][tail[len("metadata/"):]] = kv.value.decode()
            elif tail == "draining":
                draining.add(machine_id)
        return {
            mid: codec.decode_machine(raw, dynamic.get(mid, {}), mid in draining)
            for mid, raw in sorted(objects.items())
        }

    async def list_machines(self) -> list[Machine]:
        machines = self._machines_from(await self._range(self.keys.machines))
        return list(machines.values())

    async def get_machine(self, machine_id: str) -> Machine | None:
        kvs = await self._range(self.keys.machine_dir(machine_id))
        return self._machines_from(kvs).get(machine_id)

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        """Dynamic metadata; None deletes (stored as "" so that it masks a static value)."""
        await self._conn.call(
            self._conn.client.put, enc(self.keys.machine_metadata(machine_id, key)), enc(value or "")
        )

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        key = enc(self.keys.machine_draining(machine_id))
        if draining:
            await self._conn.call(self._conn.client.put, key, b"1")
        else:
            await self._conn.call(self._conn.client.delete, key)

    async def register_machine(self, machine: Machine, lease_id: int, *, adopt_lease: int | None = None) -> int:
        """Publish the machine record under a lease, refusing a machine ID held by another fleetd.

        `adopt_lease` is the lease this fleetd held before a restart: if the record still
        belongs to it and it is alive, it is reused (no duplicate error, no gap in presence).
        Returns the lease ID in use.
        """
        tx = self._conn.tx
        key = enc(self.keys.machine_object(machine.id))
        ok, _ = await self._txn([tx.create(key) == 0], [tx.put(key, codec.encode_machine(machine), lease=lease_id)])
        if ok:
            return lease_id
        existing = await self._get(self.keys.machine_object(machine.id))
        if existing is not None and adopt_lease and existing.lease == adopt_lease:
            if await self.keepalive(adopt_lease) > 0:
                ok, _ = await self._txn(
                    [tx.mod(key) == existing.mod_revision],
                    [tx.put(key, codec.encode_machine(machine), lease=adopt_lease)],
                )
                if ok:
                    return adopt_lease
        if existing is None:  # expired in between: try once more
            return await self.register_machine(machine, lease_id)
        raise DuplicateMachine(
            f"machine ID {machine.id} is already registered by another fleetd "
            f"(lease {existing.lease:x}); refusing to start a second one"
        )

    async def update_machine(self, machine: Machine, lease_id: int) -> None:
        await self._conn.call(
            self._conn.client.put, enc(self.keys.machine_object(machine.id)), codec.encode_machine(machine), lease=lease_id
        )

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl: float) -> int:
        lease = await self._conn.call(self._conn.client.lease, lease_ttl_seconds(ttl))
        return lease.id

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh a lease within `timeout` seconds (default: the request timeout); returns its
        remaining TTL in seconds, 0 if it has expired."""
        reply = await self._conn.call(self._conn.lease_keepalive, lease_id, timeout)
        return int(reply.TTL) if reply is not None else 0

    async def keepalive_direct(self, endpoint: str, lease_id: int, timeout: float) -> int:
        """Like `keepalive`, but to one etcd member over a new connection of its own (see
        Connection.lease_keepalive_direct); a failure does not move the shared connection."""
        reply = await self._conn.lease_keepalive_direct(endpoint, lease_id, timeout)
        return int(reply.TTL) if reply is not None else 0

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._conn.call(self._conn.client.revoke_lease, lease_id)
        except RegistryError as exc:
            if "not found" not in str(exc):
                raise

    # ------------------------------------------------------------------ schedule

    def _placements_from(self, kvs) -> dict[str, Placement]:
        placements: dict[str, Placement] = {}
        base = self.keys.schedule
        for kv in kvs:
            machine_id, _, name = kv.key.decode()[len(base):].partition("/")
            placements[name] = codec.decode_placement(name, machine_id, kv.value)
        return placements

    async def placements(self) -> dict[str, Placement]:
        return self._placements_from(await self._range(self.keys.schedule))

    async def _placements_on(self, candidates: dict[str, Sequence[str]]) -> dict[str, Placement]:
        """Placements of units on the given machines (point reads; at most one per unit)."""
        pairs = [(name, mid) for name, mids in candidates.items() for mid in dict.fromkeys(mids)]
        if not pairs:
            return {}
        tx = self._conn.tx
        found: dict[str, Placement] = {}

        async def fetch(chunk: Sequence[tuple[str, str]]) -> None:
            _, responses = await self._txn([], [tx.get(enc(self.keys.placement(mid, n))) for n, mid in chunk])
            for (name, mid), response in zip(chunk, responses):
                if response:
                    found[name] = codec.decode_placement(name, mid, response[0].value)

        await _pipelined([fetch(chunk) for chunk in _chunks(pairs)])
        return found

    async def unit_records(self, names: Sequence[str], *, find_unreported: bool = True) -> dict[str, "UnitRecord"]:
        """Named units with their states and placements, read per name (a few transactions,
        whatever the size of the cluster); unknown names are left out.

        A unit placed on a machine that has not reported it yet is looked up in the whole
        schedule only with `find_unreported`; without, it comes back without a placement
        (its current state is "inactive" either way, only its target machine is unknown):
        what a wait for a unit's state needs, on every change, at any scale."""
        names = list(dict.fromkeys(names))
        tx = self._conn.tx
        jobs: dict[str, object] = {}
        states: dict[str, list[UnitState]] = {}

        async def fetch(chunk: Sequence[str]) -> None:
            ops = []
            for name in chunk:
                prefix = enc(self.keys.unit_states(name))
                ops += [tx.get(enc(self.keys.job(name))), tx.get(prefix, prefix_end(prefix))]
            _, responses = await self._txn([], ops)
            for i, name in enumerate(chunk):
                job, reported = responses[2 * i], responses[2 * i + 1]
                if job:
                    jobs[name] = job[0]
                    states[name] = sorted((codec.decode_state(kv.value) for kv in reported),
                                          key=lambda s: s.machine_id)

        await _pipelined([fetch(chunk) for chunk in _chunks(names, MAX_TXN_OPS // 2)])
        decoded = {n: codec.decode_job(jobs[n].value) for n in names if n in jobs}
        bodies = await self._bodies_for(h for _, h, _ in decoded.values())
        placements = await self._placements_on({n: [s.machine_id for s in states[n]] for n in decoded})
        if find_unreported and any(n not in placements for n in decoded):
            everywhere = await self.placements()
            placements.update({n: everywhere[n] for n in decoded if n not in placements and n in everywhere})
        records: dict[str, UnitRecord] = {}
        for name, (_, unit_hash, desired) in decoded.items():
            if unit_hash not in bodies:
                raise RegistryError(f"unit {name}: body {unit_hash} missing from the registry")
            records[name] = UnitRecord(Unit(name, bodies[unit_hash], desired), placements.get(name),
                                       tuple(states[name]))
        return records

    async def machine_view(self, machine_id: str) -> "MachineView":
        """Everything one agent reads, in one transaction: its placements, the global units
        and its own machine record (with dynamic metadata)."""
        tx = self._conn.tx
        ranges = [enc(self.keys.machine_schedule(machine_id)), enc(self.keys.globals),
                  enc(self.keys.machine_dir(machine_id))]
        ok, (sched_kvs, glob_kvs, machine_kvs), revision = await self._txn_at(
            [], [tx.get(r, prefix_end(r)) for r in ranges]
        )
        return MachineView(
            placements=self._placements_from(sched_kvs),
            globals=self._globals_from(glob_kvs),
            machine=self._machines_from(machine_kvs).get(machine_id),
            revision=revision,
        )

    def _globals_from(self, kvs) -> dict[str, tuple[str, DesiredState]]:
        result = {}
        for kv in kvs:
            data = codec.loads(kv.value)
            result[kv.key.decode()[len(self.keys.globals):]] = (data["hash"], DesiredState(data["desiredState"]))
        return result

    async def global_targets(self) -> dict[str, tuple[str, DesiredState]]:
        """The global/ mirror: global units that agents run, with hash and desired state."""
        return self._globals_from(await self._range(self.keys.globals))

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
        tx = self._conn.tx
        removals = [tx.delete(enc(self.keys.placement(mid, name))) for name, mid in unplace]
        removals += [tx.delete(enc(self.keys.global_unit(name))) for name in retract_globals]
        # Placements grouped by machine (stable within one): an agent then gets its new units in
        # one transaction, i.e. one watch response and one pass, instead of one per batch.
        by_machine = sorted(place, key=lambda p: p.machine_id)
        additions = [tx.put(enc(self.keys.placement(p.machine_id, p.name)), codec.encode_target(p.hash, p.desired_state))
                     for p in by_machine]
        additions += [tx.put(enc(self.keys.global_unit(n)), codec.encode_target(h, s)) for n, h, s in publish_globals]
        fence = tx.value(enc(self.keys.engine_leader)) == enc(fence_machine_id)

        async def write(chunk: Sequence) -> None:
            ok, _ = await self._txn([fence], list(chunk))
            if not ok:
                raise NotLeader(f"machine {fence_machine_id} is no longer the engine leader")

        # Every removal lands before any addition (a moved unit never has two placements);
        # within each phase the transactions touch distinct keys and are pipelined.
        count = 0
        for ops in (removals, additions):
            chunks = list(_chunks(ops))
            await _pipelined([write(chunk) for chunk in chunks])
            count += len(chunks)
        return count

    # ------------------------------------------------------------------ leadership

    async def campaign(self, machine_id: str, lease_id: int) -> bool:
        tx = self._conn.tx
        key = enc(self.keys.engine_leader)
        ok, _ = await self._txn([tx.create(key) == 0], [tx.put(key, enc(machine_id), lease=lease_id)])
        if ok:
            return True
        current = await self._get(self.keys.engine_leader)
        return current is not None and current.value.decode() == machine_id and current.lease == lease_id

    async def leader(self) -> tuple[str | None, int]:
        kv = await self._get(self.keys.engine_leader)
        if kv is None:
            return None, 0
        return kv.value.decode(), kv.mod_revision

    async def leader_lease(self) -> tuple[str | None, int]:
        """The leader's machine ID and the lease that holds the key (None, 0 if vacant)."""
        kv = await self._get(self.keys.engine_leader)
        return (kv.value.decode(), kv.lease) if kv is not None else (None, 0)

    async def resign(self, machine_id: str) -> None:
        tx = self._conn.tx
        key = enc(self.keys.engine_leader)
        await self._txn([tx.value(key) == enc(machine_id)], [tx.delete(key)])

    # ------------------------------------------------------------------ unit states

    async def publish_states(self, states: Sequence[UnitState], lease_id: int) -> None:
        tx = self._conn.tx
        ops = [tx.put(enc(self.keys.state(s.name, s.machine_id)), codec.encode_state(s), lease=lease_id) for s in states]
        for chunk in _chunks(ops):
            await self._txn([], list(chunk))

    async def delete_states(self, names: Sequence[str], machine_id: str) -> None:
        tx = self._conn.tx
        ops = [tx.delete(enc(self.keys.state(n, machine_id))) for n in names]
        for chunk in _chunks(ops):
            await self._txn([], list(chunk))

    async def unit_states(self, name: str | None = None, machine_id: str | None = None) -> list[UnitState]:
        prefix = self.keys.unit_states(name) if name else self.keys.states
        states = [codec.decode_state(kv.value) for kv in await self._range(prefix)]
        if machine_id:
            states = [s for s in states if s.machine_id == machine_id]
        return sorted(states, key=lambda s: (s.name, s.machine_id))

    # ------------------------------------------------------------------ snapshot

    async def snapshot(self) -> ClusterSnapshot:
        """Units, machines and placements read in one transaction, i.e. at one revision.

        Decoded values are cached by key and mod revision between calls, so a snapshot of a
        large, mostly unchanged cluster decodes only what changed since the previous one.
        """
        tx = self._conn.tx
        prefixes = [enc(self.keys.jobs), enc(self.keys.machines), enc(self.keys.schedule)]
        ok, (jobs, machines, schedule), revision = await self._txn_at(
            [], [tx.get(p, prefix_end(p)) for p in prefixes]
        )
        return ClusterSnapshot(
            revision=revision,
            units=await self._snapshot_units(jobs),
            machines=self._snapshot_machines(machines),
            placements=self._snapshot_placements(schedule),
        )

    async def _snapshot_units(self, kvs) -> dict[str, Unit]:
        cache = self._decoded.units
        fresh: dict[bytes, tuple[int, Unit]] = {}
        decoded: dict[bytes, tuple[str, str, DesiredState]] = {}
        for kv in kvs:
            hit = cache.get(kv.key)
            if hit is not None and hit[0] == kv.mod_revision:
                fresh[kv.key] = hit
            else:
                decoded[kv.key] = codec.decode_job(kv.value)
        if decoded:
            bodies = await self._bodies_for(h for _, h, _ in decoded.values())
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
        self._decoded.units = fresh
        return units

    def _snapshot_placements(self, kvs) -> dict[str, Placement]:
        cache = self._decoded.placements
        fresh: dict[bytes, tuple[int, Placement]] = {}
        placements: dict[str, Placement] = {}
        base = len(enc(self.keys.schedule))
        for kv in kvs:
            entry = cache.get(kv.key)
            if entry is None or entry[0] != kv.mod_revision:
                machine_id, _, name = kv.key[base:].decode().partition("/")
                entry = (kv.mod_revision, codec.decode_placement(name, machine_id, kv.value))
            fresh[kv.key] = entry
            placements[entry[1].name] = entry[1]
        self._decoded.placements = fresh
        return placements

    def _snapshot_machines(self, kvs) -> dict[str, Machine]:
        """Machines, each re-decoded only when one of its keys changed."""
        cache = self._decoded.machines
        fresh: dict[str, tuple[tuple, Machine | None]] = {}
        base = len(enc(self.keys.machines))
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
                entry = (signature, self._machines_from(group).get(machine_id))
            fresh[machine_id] = entry
            if entry[1] is not None:
                machines[machine_id] = entry[1]
        self._decoded.machines = fresh
        return machines

    # ------------------------------------------------------------------ watches

    async def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events below any of the prefixes from start_revision on (inclusive), until cancelled.

        Raises WatchCompacted if start_revision is gone, RegistryUnavailable if etcd is lost.
        """
        queue: asyncio.Queue = asyncio.Queue()
        watches = []
        try:
            for prefix in prefixes:
                raw = enc(prefix)
                try:
                    watch = await self._conn.call(
                        self._conn.client.watch, raw, range_end=prefix_end(raw), start_revision=start_revision
                    )
                except aetcd.exceptions.RevisionCompactedError as exc:
                    raise WatchCompacted(exc.compacted_revision) from None
                watches.append(watch)

            async def pump(watch) -> None:
                try:
                    async for event in watch:
                        await queue.put(event)
                except aetcd.exceptions.RevisionCompactedError as exc:
                    await queue.put(WatchCompacted(exc.compacted_revision))
                except Exception as exc:  # delivered to the consumer below
                    await queue.put(translate(exc, self.settings.endpoints))
                else:
                    await queue.put(translate(TimeoutError("watch stream ended"), self.settings.endpoints))

            pumps = [asyncio.create_task(pump(w)) for w in watches]
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, Exception):
                        raise item
                    value = item.kv.value if item.kind == "PUT" else None
                    yield WatchEvent(item.kv.key.decode(), value, item.kv.mod_revision)
            finally:
                for task in pumps:
                    task.cancel()
        finally:
            for watch in watches:
                try:
                    await watch.cancel()
                except Exception:
                    pass
