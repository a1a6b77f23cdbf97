"""Machines in etcd: each fleetd's record under its lease, dynamic metadata, draining; leases."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Iterable

from fleetd.errors import DuplicateMachine, RegistryError
from fleetd.lease_timing import lease_ttl_seconds
from fleetd.model import Machine
from fleetd.registry import codec
from fleetd.registry.connection import enc
from fleetd.registry.core import RegistryCore
from fleetd.registry.keys import KeyLayout


def machines_from(keys: KeyLayout, kvs: Iterable[Any]) -> dict[str, Machine]:
    """Machines decoded from keys below keys.machines (records, metadata, draining flags)."""
    objects: dict[str, bytes] = {}
    dynamic: dict[str, dict[str, str]] = defaultdict(dict)
    draining: set[str] = set()
    base = keys.machines
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


class EtcdMachineStore:
    """fleetd.registry.stores.MachineStore in etcd."""

    def __init__(self, core: RegistryCore):
        self.core = core

    async def list_machines(self) -> list[Machine]:
        machines = machines_from(self.core.keys, await self.core.range(self.core.keys.machines))
        return list(machines.values())

    async def get_machine(self, machine_id: str) -> Machine | None:
        kvs = await self.core.range(self.core.keys.machine_dir(machine_id))
        return machines_from(self.core.keys, kvs).get(machine_id)

    async def set_machine_metadata(self, machine_id: str, key: str, value: str | None) -> None:
        """Dynamic metadata; None deletes (stored as "" so that it masks a static value)."""
        await self.core.put(self.core.keys.machine_metadata(machine_id, key), enc(value or ""))

    async def set_draining(self, machine_id: str, draining: bool) -> None:
        key = self.core.keys.machine_draining(machine_id)
        if draining:
            await self.core.put(key, b"1")
        else:
            await self.core.delete(key)

    async def register_machine(self, machine: Machine, lease_id: int, *, adopt_lease: int | None = None) -> int:
        """Publish the machine record under a lease, refusing a machine ID held by another fleetd.

        `adopt_lease` is the lease this fleetd held before a restart: if the record still
        belongs to it and it is alive, it is reused (no duplicate error, no gap in presence).
        Returns the lease ID in use.
        """
        core, tx = self.core, self.core.tx
        key = enc(core.keys.machine_object(machine.id))
        ok, _ = await core.txn([tx.create(key) == 0], [tx.put(key, codec.encode_machine(machine), lease=lease_id)])
        if ok:
            return lease_id
        existing = await core.get(core.keys.machine_object(machine.id))
        if existing is not None and adopt_lease and existing.lease == adopt_lease:
            if await self.keepalive(adopt_lease) > 0:
                ok, _ = await core.txn(
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
        await self.core.put(self.core.keys.machine_object(machine.id), codec.encode_machine(machine), lease=lease_id)

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl: float) -> int:
        conn = self.core.connection
        lease = await conn.call(conn.client.lease, lease_ttl_seconds(ttl))
        return lease.id

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh a lease within `timeout` seconds (default: the request timeout); returns its
        remaining TTL in seconds, 0 if it has expired."""
        conn = self.core.connection
        reply = await conn.call(conn.lease_keepalive, lease_id, timeout)
        return int(reply.TTL) if reply is not None else 0

    async def keepalive_direct(self, endpoint: str, lease_id: int, timeout: float) -> int:
        """Like `keepalive`, but to one etcd member over a new connection of its own (see
        Connection.lease_keepalive_direct); a failure does not move the shared connection."""
        reply = await self.core.connection.lease_keepalive_direct(endpoint, lease_id, timeout)
        return int(reply.TTL) if reply is not None else 0

    async def machine_leases(self, machine_ids: Iterable[str], limit: int) -> dict[str, tuple[int, int]] | None:
        """The leases of these registered machines as etcd has them now (LeaseTimeToLive, one
        read per lease, in parallel): machine ID -> (whole seconds left, rounded down by etcd;
        the TTL it was granted with). A machine whose record or lease could not be read is left
        out; None when asked about more than `limit` machines."""
        ids = sorted(set(machine_ids))
        if len(ids) > limit:
            return None
        core, conn = self.core, self.core.connection
        records = await asyncio.gather(*(core.get(core.keys.machine_object(m)) for m in ids), return_exceptions=True)
        leases = {m: kv.lease for m, kv in zip(ids, records)
                  if kv is not None and not isinstance(kv, BaseException) and kv.lease}
        replies = await asyncio.gather(*(conn.call(conn.client.get_lease_info, lease, keys=False)
                                         for lease in leases.values()), return_exceptions=True)
        return {m: (int(r.TTL), int(r.grantedTTL)) for m, r in zip(leases, replies)
                if not isinstance(r, BaseException) and r is not None}

    async def revoke_lease(self, lease_id: int) -> None:
        conn = self.core.connection
        try:
            await conn.call(conn.client.revoke_lease, lease_id)
        except RegistryError as exc:
            if "not found" not in str(exc):
                raise
