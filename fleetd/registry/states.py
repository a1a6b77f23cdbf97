"""Unit states in etcd: what each agent observed in its systemd, under the agent's lease."""

from __future__ import annotations

from typing import Sequence

from fleetd.model import UnitState
from fleetd.registry import codec
from fleetd.registry.connection import enc
from fleetd.registry.core import RegistryCore, chunks


class EtcdStateStore:
    """fleetd.registry.stores.StateStore in etcd."""

    def __init__(self, core: RegistryCore):
        self.core = core

    async def publish_states(self, states: Sequence[UnitState], lease_id: int) -> None:
        core, tx = self.core, self.core.tx
        ops = [tx.put(enc(core.keys.state(s.name, s.machine_id)), codec.encode_state(s), lease=lease_id) for s in states]
        for chunk in chunks(ops):
            await core.txn([], list(chunk))

    async def delete_states(self, names: Sequence[str], machine_id: str) -> None:
        core, tx = self.core, self.core.tx
        ops = [tx.delete(enc(core.keys.state(n, machine_id))) for n in names]
        for chunk in chunks(ops):
            await core.txn([], list(chunk))

    async def unit_states(self, name: str | None = None, machine_id: str | None = None) -> list[UnitState]:
        keys = self.core.keys
        prefix = keys.unit_states(name) if name else keys.states
        states = [codec.decode_state(kv.value) for kv in await self.core.range(prefix)]
        if machine_id:
            states = [s for s in states if s.machine_id == machine_id]
        return sorted(states, key=lambda s: (s.name, s.machine_id))
