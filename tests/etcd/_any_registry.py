"""A registry of either kind for tests that hold real etcd and the in-memory registry
(fleetd/registry/memory.py) to the same answers: the `any_registry` fixture (import it into the
test module) and the current revision of either."""

from __future__ import annotations

import pytest

from fleetd.registry import Registry
from fleetd.registry.memory import MemoryCluster, MemoryRegistry


async def revision_of(reg) -> int:
    if isinstance(reg, MemoryRegistry):
        return reg.cluster.revision
    return await reg.current_revision()


@pytest.fixture(params=["etcd", "memory"])
async def any_registry(request, etcd_settings):
    if request.param == "memory":
        yield MemoryRegistry(MemoryCluster())
    else:
        async with await Registry.connect(etcd_settings) as reg:
            yield reg
