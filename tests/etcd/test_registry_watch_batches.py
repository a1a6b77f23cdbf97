"""`RegistryCore.watch_batches` (fleetd/registry/core.py; the engine leader's watch): the
events of `watch()`, one list per etcd response, on a real etcd; and the in-memory registry's
(one event a list)."""

from __future__ import annotations

import pytest

from fleetd.model import DesiredState, Placement
from fleetd.registry import Registry
from fleetd.registry.memory import MemoryRegistry

pytestmark = pytest.mark.etcd


async def _collect(iterator, count: int) -> list:
    found = []
    async for item in iterator:
        found.append(item)
        if sum(len(x) if isinstance(x, list) else 1 for x in found) >= count:
            break
    await iterator.aclose()
    return found


async def test_the_events_of_watch_one_list_per_response(registry: Registry):
    keys = registry.keys
    a, b = keys.machine_schedule("m1"), keys.globals
    revision = await registry.current_revision()
    tx = registry.core.tx
    await registry.core.txn([], [tx.put(f"{a}u{i:03d}".encode(), f"v{i}".encode()) for i in range(110)])
    await registry.core.txn([], [tx.delete(f"{a}u000".encode()), tx.put(f"{b}g".encode(), b"g"),
                                 tx.put(f"{keys.jobs}elsewhere".encode(), b"x")])
    batches = await _collect(registry.watch_batches([a, b], revision + 1), 112)
    events = await _collect(registry.watch([a, b], revision + 1), 112)
    flat = [e for batch in batches for e in batch]
    for prefix in (a, b):   # in order per prefix (each is a watch of its own on etcd's stream)
        assert [e for e in flat if e.key.startswith(prefix)] == [e for e in events if e.key.startswith(prefix)]
    assert len(flat) == len(events) == 112
    # a past revision: etcd catches up in large responses (one may hold both transactions)
    first_under_a = next(batch for batch in batches if batch[0].key.startswith(a))
    assert [e.key for e in first_under_a[:110]] == [f"{a}u{i:03d}" for i in range(110)]
    assert len(batches) < len(events)
    under_a = [e for batch in batches for e in batch if e.key.startswith(a)]
    assert under_a[-1].key == f"{a}u000" and under_a[-1].value is None   # a deletion


async def test_the_memory_registry_gives_the_events_of_watch():
    registry = MemoryRegistry()
    keys = registry.keys
    revision = await registry.current_revision()
    assert await registry.campaign("m1", await registry.grant_lease(10))
    await registry.apply_schedule(fence_machine_id="m1", place=[
        Placement(f"u{i}.service", "m1", "h", DesiredState.LAUNCHED) for i in range(3)])
    batches = await _collect(registry.watch_batches([keys.schedule], revision + 1), 3)
    events = await _collect(registry.watch([keys.schedule], revision + 1), 3)
    assert [e for batch in batches for e in batch] == events and len(events) == 3
