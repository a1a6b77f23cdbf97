"""The registry's own watch streams (fleetd/registry/connection.py `Connection.watch`, read by
`RegistryCore.watch`): one gRPC stream per watch, a response's events handed on in a loop.
Against a real etcd: what a watcher sees (order, deletions, several prefixes, many watches on
one connection), and that closing or cancelling a watch removes its watchers from etcd."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetd.errors import RegistryUnavailable
from fleetd.registry import Registry
from fleetlab.bench.scale import etcd_watchers

pytestmark = pytest.mark.etcd


async def _watchers(endpoint: str) -> int:
    return (await asyncio.to_thread(etcd_watchers, endpoint))[0]


async def _wait_watchers(endpoint: str, expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := await _watchers(endpoint)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return count


async def test_one_transaction_of_many_keys_arrives_whole_and_in_order(registry: Registry):
    keys = registry.keys
    a, b = keys.machine_schedule("m1"), keys.globals
    revision = await registry.current_revision()
    tx = registry.core.tx
    puts = [tx.put(f"{a}u{i:03d}".encode(), f"v{i}".encode()) for i in range(110)]
    puts += [tx.put(f"{b}g{i:03d}".encode(), b"g") for i in range(5)]
    await registry.core.txn([], puts)
    await registry.core.txn([], [tx.delete(f"{a}u000".encode()), tx.put(f"{keys.jobs}elsewhere".encode(), b"x")])
    stream = registry.watch([a, b], revision + 1)
    events = []
    async for event in stream:
        events.append(event)
        if len(events) == 116:
            break
    await stream.aclose()
    # in revision order per prefix (etcd sends each watch's events on its own)
    under_a = [e for e in events if e.key.startswith(a)]
    under_b = [e for e in events if e.key.startswith(b)]
    assert [e.key for e in under_a[:110]] == [f"{a}u{i:03d}" for i in range(110)]
    assert [e.key for e in under_b] == [f"{b}g{i:03d}" for i in range(5)]
    assert [e.value for e in under_a[:3]] == [b"v0", b"v1", b"v2"]
    assert len({e.revision for e in under_a[:110] + under_b}) == 1  # one transaction, one revision
    assert under_a[110].key == f"{a}u000" and under_a[110].value is None  # a deletion
    assert under_a[110].revision == under_a[0].revision + 1  # the job/ key is not watched


async def test_many_watches_on_one_connection_each_see_their_own(registry: Registry):
    keys = registry.keys
    revision = await registry.current_revision()
    machines = [f"m{i:02d}" for i in range(40)]
    streams = {m: registry.watch([keys.machine_schedule(m), keys.globals], revision + 1) for m in machines}
    nexts = {m: asyncio.ensure_future(s.__anext__()) for m, s in streams.items()}
    tx = registry.core.tx
    await registry.core.txn([], [tx.put(f"{keys.machine_schedule(m)}x.service".encode(), m.encode()) for m in machines])
    try:
        for m, pending in nexts.items():
            event = await asyncio.wait_for(pending, 10)
            assert event.key == f"{keys.machine_schedule(m)}x.service" and event.value == m.encode()
    finally:
        for stream in streams.values():
            await stream.aclose()


async def test_closing_or_cancelling_a_watch_removes_it_from_etcd(registry: Registry, etcd_server):
    keys = registry.keys
    before = await _watchers(etcd_server.endpoint)
    revision = await registry.current_revision()
    prefixes = [keys.machine_schedule("m1"), keys.globals, keys.machine_dir("m1")]

    stream = registry.watch(prefixes, revision + 1)
    pending = asyncio.ensure_future(stream.__anext__())
    assert await _wait_watchers(etcd_server.endpoint, before + 3) == before + 3
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await stream.aclose()
    assert await _wait_watchers(etcd_server.endpoint, before) == before

    async def consume():
        async for _ in registry.watch(prefixes, revision + 1):
            pass

    task = asyncio.create_task(consume())
    assert await _wait_watchers(etcd_server.endpoint, before + 3) == before + 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_watchers(etcd_server.endpoint, before) == before
    assert registry.connection._watches == set()


async def test_a_closed_connection_ends_its_watches_as_unavailable(etcd_settings):
    reg = await Registry.connect(etcd_settings)
    stream = reg.watch([reg.keys.jobs], await reg.current_revision() + 1)
    pending = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.3)
    await reg.connection.client.close()
    with pytest.raises(RegistryUnavailable):
        await asyncio.wait_for(pending, 10)
    await stream.aclose()
    await reg.close()
