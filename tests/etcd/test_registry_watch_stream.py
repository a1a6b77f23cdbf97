"""The registry's own watch stream (fleetd/registry/connection.py `_WatchStream`, read by
`Connection.watch` and `RegistryCore.watch`): one gRPC stream per connection shared by its
watches, a response's events handed to its watch as one batch.
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


async def test_watches_of_a_connection_share_one_stream(registry: Registry, etcd_server):
    keys = registry.keys
    revision = await registry.current_revision()
    first = registry.watch([keys.jobs], revision + 1)
    second = registry.watch([keys.schedule, keys.globals], revision + 1)
    pending = [asyncio.ensure_future(first.__anext__()), asyncio.ensure_future(second.__anext__())]
    await registry.core.put(keys.job("a.service"), b"{}")
    await registry.core.put(keys.placement("m1", "a.service"), b"{}")
    try:
        a, b = [await asyncio.wait_for(p, 10) for p in pending]
        assert (a.key, b.key) == (keys.job("a.service"), keys.placement("m1", "a.service"))
        stream = registry.connection._watch_stream
        assert len(stream.watches) == 3 and len(set(map(id, stream.watches.values()))) == 2
    finally:
        await first.aclose()
        await second.aclose()


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
    stream = registry.connection._watch_stream
    assert stream is not None and stream.watches == {} and not stream.pending


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


async def test_a_compacted_watch_ends_alone(registry: Registry):
    from fleetd.registry import WatchCompacted

    keys = registry.keys
    old = await registry.current_revision()
    await registry.core.put(keys.job("a.service"), b"{}")
    await registry.connection.client.compact(await registry.current_revision())
    alive = registry.watch([keys.schedule], await registry.current_revision() + 1)
    pending = asyncio.ensure_future(alive.__anext__())
    with pytest.raises(WatchCompacted):
        async for _ in registry.watch([keys.jobs, keys.globals], old):
            break
    await registry.core.put(keys.placement("m1", "b.service"), b"{}")
    try:
        event = await asyncio.wait_for(pending, 10)
        assert event.key == keys.placement("m1", "b.service")
        assert len(registry.connection._watch_stream.watches) == 1  # the compacted one's other range cancelled
    finally:
        await alive.aclose()
