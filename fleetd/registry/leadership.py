"""The engine leader key in etcd, held under the leader's machine lease."""

from __future__ import annotations

from fleetd.registry.connection import enc
from fleetd.registry.core import RegistryCore


class EtcdLeadershipStore:
    """fleetd.registry.stores.LeadershipStore in etcd."""

    def __init__(self, core: RegistryCore):
        self.core = core

    async def campaign(self, machine_id: str, lease_id: int) -> bool:
        core, tx = self.core, self.core.tx
        key = enc(core.keys.engine_leader)
        ok, _ = await core.txn([tx.create(key) == 0], [tx.put(key, enc(machine_id), lease=lease_id)])
        if ok:
            return True
        current = await core.get(core.keys.engine_leader)
        return current is not None and current.value.decode() == machine_id and current.lease == lease_id

    async def leader(self) -> tuple[str | None, int]:
        kv = await self.core.get(self.core.keys.engine_leader)
        if kv is None:
            return None, 0
        return kv.value.decode(), kv.mod_revision

    async def leader_lease(self) -> tuple[str | None, int]:
        """The leader's machine ID and the lease that holds the key (None, 0 if vacant)."""
        kv = await self.core.get(self.core.keys.engine_leader)
        return (kv.value.decode(), kv.lease) if kv is not None else (None, 0)

    async def resign(self, machine_id: str) -> None:
        core, tx = self.core, self.core.tx
        key = enc(core.keys.engine_leader)
        await core.txn([tx.value(key) == enc(machine_id)], [tx.delete(key)])
