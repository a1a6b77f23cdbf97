"""Units in etcd: one job record per unit (name, hash, desired state) and content-addressed
bodies. Creation is conditional on the job key being absent; changes are compare-and-swap."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from fleetd.errors import RegistryError, UnitConflict, UnitError, UnitFileError, UnitNotFound
from fleetd.model import DesiredState, Unit
from fleetd.registry import codec
from fleetd.registry.connection import enc, prefix_end
from fleetd.registry.core import MAX_TXN_OPS, RegistryCore, chunks, pipelined
from fleetd.unit.file import UnitFile
from fleetd.unit.name import is_template_name, parse_unit_name

log = logging.getLogger(__name__)


class BodyCache:
    """Unit bodies by hash: immutable, so cached for the life of the registry."""

    def __init__(self, core: RegistryCore):
        self.core = core
        self.known: dict[str, UnitFile] = {}
        self.offered: dict[str, bytes] = {}  # raw bodies from watch events, parsed when fetched

    def remember(self, unit: UnitFile) -> None:
        self.known[unit.hash] = unit

    def offer(self, unit_hash: str, raw: bytes | None) -> None:
        """A body key's value seen in a watch event (the engine leader watches bodies): kept raw
        and parsed only if fetched, which then needs no round trip to etcd. None (the key was
        deleted) withdraws an offer."""
        if raw is None:
            self.offered.pop(unit_hash, None)
        elif unit_hash not in self.known:
            self.offered[unit_hash] = raw

    def _learn(self, unit_hash: str, raw: bytes) -> None:
        try:
            self.known[unit_hash] = UnitFile.parse_stored(raw, unit_hash, source=f"unit body {unit_hash}")
        except UnitFileError as exc:  # e.g. a NUL written around the API: never served
            log.warning("%s; units using it are ignored", exc)

    async def fetch(self, hashes: Iterable[str]) -> dict[str, UnitFile]:
        hashes = list(hashes)
        missing = sorted({h for h in hashes if h not in self.known})
        if self.offered:
            for unit_hash in [h for h in missing if h in self.offered]:
                self._learn(unit_hash, self.offered.pop(unit_hash))
            missing = [h for h in missing if h not in self.known]
        core, tx = self.core, self.core.tx

        async def fetch(chunk: Sequence[str]) -> None:
            ok, responses = await core.txn([], [tx.get(enc(core.keys.body(h))) for h in chunk])
            for unit_hash, response in zip(chunk, responses):
                if response:
                    self._learn(unit_hash, response[0].value)

        await pipelined([fetch(chunk) for chunk in chunks(missing)])
        return {h: self.known[h] for h in hashes if h in self.known}


def units_from_jobs(kvs: Iterable[Any], bodies: dict[str, UnitFile]) -> dict[str, Unit]:
    units: dict[str, Unit] = {}
    for kv in kvs:
        name, unit_hash, desired = codec.decode_job(kv.value)
        body = bodies.get(unit_hash)
        if body is None:
            log.warning("unit %s refers to missing body %s; ignored", name, unit_hash)
            continue
        units[name] = Unit(name, body, desired)
    return units


class EtcdUnitStore:
    """fleetd.registry.stores.UnitStore in etcd."""

    def __init__(self, core: RegistryCore, bodies: BodyCache):
        self.core = core
        self.body_cache = bodies

    async def bodies(self, hashes: Iterable[str]) -> dict[str, UnitFile]:
        """Unit bodies by hash (immutable, so cached for the life of this registry)."""
        return await self.body_cache.fetch(hashes)

    def offer_body(self, unit_hash: str, raw: bytes | None) -> None:
        """A body key's value from a watch event; `bodies()` then needs no read for it."""
        self.body_cache.offer(unit_hash, raw)

    async def jobs_written_after(self, revision: int) -> bool:
        """Whether a job record was created or changed after `revision` (asked of etcd: one
        compare over the job/ range, no data sent back), e.g. by a submission whose watch
        events have not arrived yet."""
        raw = enc(self.core.keys.jobs)
        unchanged, _ = await self.core.txn([self.core.tx.mod(raw, prefix_end(raw)) < revision + 1], [])
        return not unchanged

    async def get_unit(self, name: str) -> Unit | None:
        kv = await self.core.get(self.core.keys.job(name))
        if kv is None:
            return None
        _, unit_hash, desired = codec.decode_job(kv.value)
        bodies = await self.body_cache.fetch([unit_hash])
        if unit_hash not in bodies:
            raise RegistryError(f"unit {name}: body {unit_hash} missing from the registry")
        return Unit(name, bodies[unit_hash], desired)

    async def list_units(self) -> list[Unit]:
        jobs = await self.core.range(self.core.keys.jobs)
        hashes = [codec.decode_job(kv.value)[1] for kv in jobs]
        bodies = await self.body_cache.fetch(hashes)
        units = units_from_jobs(jobs, bodies)
        return [units[name] for name in sorted(units)]

    async def create_unit(self, unit: Unit) -> bool:
        """Create the unit if absent. Returns False if it already exists (idempotent, unchanged)."""
        created = await self.create_units([unit])
        return bool(created)

    async def create_units(self, units: Sequence[Unit], *, all_or_none: bool = False) -> list[str]:
        """Create the units that do not exist yet, in batched transactions; returns the created names.

        `all_or_none`: one transaction (at most MAX_TXN_OPS // 2 units) that creates them all if
        none exists, else nothing (`POST /units` with `createAll`, docs/api.md).

        Each creation is conditional on the job key being absent, so a concurrent creator
        never has its unit overwritten. Names are checked first (a name with '/' would break
        the key layout, and one systemd refuses would block the agent it lands on).
        """
        for u in units:
            parse_unit_name(u.name)
        core, keys, tx = self.core, self.core.keys, self.core.tx
        if all_or_none and len(units) > MAX_TXN_OPS // 2:
            raise ValueError(f"at most {MAX_TXN_OPS // 2} units in one all-or-none creation")

        async def create(chunk: Sequence[Unit]) -> list[str]:
            compare = [tx.create(enc(keys.job(u.name))) == 0 for u in chunk]
            bodies = {u.hash: u.file for u in chunk}  # etcd refuses a key twice in one txn
            put = core.put_op
            success = [put(enc(keys.body(h)), enc(f.serialize())) for h, f in bodies.items()]
            success += [put(enc(keys.job(u.name)), codec.encode_job(u.name, u.hash, u.desired_state)) for u in chunk]
            ok, _ = await core.txn(compare, success)
            if ok:
                for u in chunk:
                    self.body_cache.remember(u.file)
                return [u.name for u in chunk]
            if all_or_none:
                return []
            created = []
            for u in chunk:  # slow path: someone else created some of them
                ok, _ = await core.txn(
                    [tx.create(enc(keys.job(u.name))) == 0],
                    [
                        tx.put(enc(keys.body(u.hash)), enc(u.file.serialize())),
                        tx.put(enc(keys.job(u.name)), codec.encode_job(u.name, u.hash, u.desired_state)),
                    ],
                )
                if ok:
                    created.append(u.name)
                    self.body_cache.remember(u.file)
            return created

        # Batches are independent (each unit is created only if absent): pipelined.
        batches = await pipelined([create(chunk) for chunk in chunks(list(units), MAX_TXN_OPS // 2)])
        created = [name for batch in batches for name in batch]
        if created and len(units) >= MAX_TXN_OPS // 2:
            # a submission of a full transaction or more: its end marked (after every batch's
            # answer, so at a revision after all of them) for the engine's burst wait
            await core.put(keys.submitted, str(len(created)).encode())
        return created

    async def replace_unit(self, unit: Unit, *, expected_hash: str | None = None) -> None:
        """Store a new body (and desired state) for a unit, whether or not it existed."""
        parse_unit_name(unit.name)
        keys, tx = self.core.keys, self.core.tx

        def update(key: str, current: Any) -> list:
            if expected_hash is not None:
                if current is None or codec.decode_job(current.value)[1] != expected_hash:
                    raise UnitConflict(f"unit {unit.name} changed concurrently; try again")
            return [tx.put(enc(keys.body(unit.hash)), enc(unit.file.serialize())),
                    tx.put(enc(key), codec.encode_job(unit.name, unit.hash, unit.desired_state))]

        await self.core.cas_update([keys.job(unit.name)], update,
                                   conflict=lambda _: f"unit {unit.name}: too many concurrent updates")
        self.body_cache.remember(unit.file)

    async def set_desired_state(self, names: Sequence[str], state: DesiredState) -> None:
        """Set the desired state of existing units (compare-and-swap per unit, batched)."""
        keys, tx = self.core.keys, self.core.tx
        by_key = {keys.job(n): n for n in dict.fromkeys(names)}
        changed: set[str] = set()

        def update(key: str, current: Any) -> list | None:
            name = by_key[key]
            if current is None:
                raise UnitNotFound(f"unit {name} not found")
            job_name, unit_hash, old = codec.decode_job(current.value)
            if old is state:
                return None
            if unit_hash and state is not DesiredState.INACTIVE and is_template_name(name):
                raise UnitError(f"unit {name}: cannot activate a template")
            changed.add(key)
            return [tx.put(enc(key), codec.encode_job(job_name, unit_hash, state))]

        await self.core.cas_update(
            list(by_key), update,
            conflict=lambda left: f"units {', '.join(by_key[k] for k in left)}: too many concurrent updates")
        if changed and len(by_key) >= MAX_TXN_OPS // 2:  # the submission's end, as create_units marks it
            await self.core.put(keys.submitted, str(len(changed)).encode())

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        """Delete units; returns the names that existed. Bodies are kept (content-addressed)."""
        core, tx = self.core, self.core.tx
        destroyed: list[str] = []
        for chunk in chunks(list(dict.fromkeys(names))):
            _, responses = await core.txn([], [tx.delete(enc(core.keys.job(n))) for n in chunk])
            for name, response in zip(chunk, responses):
                if response.response_delete_range.deleted:
                    destroyed.append(name)
        return destroyed
