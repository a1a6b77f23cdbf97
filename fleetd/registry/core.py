"""The registry's public core: one etcd connection, the key layout, and the few primitives
every store is written with (reads, transactions, batching, compare-and-swap, watches).

The stores (fleetd/registry/units.py, machines.py, schedule.py, leadership.py, states.py,
images.py) are peers over one `RegistryCore`; `fleetd.registry.Registry` composes them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

from fleetd.config import EtcdSettings
from fleetd.errors import UnitConflict
from fleetd.registry.connection import Connection, WatchCompacted, enc, prefix_end, PutOp
from fleetd.registry.keys import KeyLayout
from fleetd.registry.records import CAS_ATTEMPTS, MAX_TXN_OPS

T = TypeVar("T")

PUT = 0  # etcd's Event.EventType of a put (DELETE is 1)

#: Transactions in flight at once when a large read or write is split into many.
PIPELINE_DEPTH = 8


@dataclass(frozen=True)
class WatchEvent:
    key: str
    value: bytes | None  # None for a deletion
    revision: int


def chunks(items: Sequence, size: int = MAX_TXN_OPS) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def pipelined(coroutines: Sequence[Awaitable[T]], depth: int = PIPELINE_DEPTH) -> list[T]:
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


#: update(key, current key-value or None) -> the operations that replace it, or None (nothing
#: to do for this key). It may raise to stop the whole update (e.g. UnitNotFound).
Update = Callable[[str, Any], "Sequence[Any] | None"]


class RegistryCore:
    """An open etcd connection with the key layout; every store issues its requests here."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.keys = KeyLayout(connection.settings.key_prefix)

    @property
    def settings(self) -> EtcdSettings:
        return self.connection.settings

    @property
    def tx(self) -> Any:
        """aetcd's transaction builder (compares and operations)."""
        return self.connection.tx

    async def close(self) -> None:
        await self.connection.close()

    def set_call_observer(self, observer: Callable[[str, float, bool], None] | None) -> None:
        """Report each etcd call as observer(operation, seconds, ok), e.g. for metrics; None stops.

        Optional and cheap: without an observer, calls go straight to the connection."""
        conn = self.connection
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

    # ------------------------------------------------------------------ requests

    async def get(self, key: str) -> Any:
        return await self.connection.call(self.connection.client.get, enc(key))

    async def range(self, prefix: str) -> Any:
        return await self.connection.call(self.connection.client.get_prefix, enc(prefix))

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        client = self.connection.client
        if lease is None:
            await self.connection.call(client.put, enc(key), value)
        else:
            await self.connection.call(client.put, enc(key), value, lease=lease)

    async def delete(self, key: str) -> None:
        await self.connection.call(self.connection.client.delete, enc(key))

    async def txn(self, compare: list, success: list, failure: list | None = None) -> tuple[bool, list]:
        succeeded, responses, _ = await self.connection.call(self.connection.txn, compare, success, failure or [])
        return succeeded, responses

    async def txn_at(self, compare: list, success: list) -> tuple[bool, list, int]:
        """Like txn, also returning the revision the transaction was served at."""
        return await self.connection.call(self.connection.txn, compare, success, [])

    async def current_revision(self) -> int:
        _, _, revision = await self.txn_at([], [])
        return revision

    @staticmethod
    def put_op(key: bytes, value: bytes) -> Any:
        """A transaction operation writing `value` under `key` without a lease: `tx.put(key,
        value)`, built cheaper (for writes of thousands of keys)."""
        return PutOp(key, value)

    def range_op(self, prefix: str) -> Any:
        """A transaction operation reading every key below `prefix`."""
        raw = enc(prefix)
        return self.tx.get(raw, prefix_end(raw))

    # ------------------------------------------------------------------ compare-and-swap

    async def cas_update(self, keys: Sequence[str], update: Update, *, conflict: Callable[[list[str]], str],
                         attempts: int = CAS_ATTEMPTS, keys_per_txn: int = MAX_TXN_OPS // 2) -> None:
        """Compare-and-swap over `keys`: read each, let `update(key, kv)` give the operations
        that replace it (all keys first: an update that raises stops before any write), and
        write them in batched transactions, each conditional on its keys
        being unchanged since the read (same mod revision, or still absent). The keys of a
        batch that lost a race are read and updated again, up to `attempts` rounds; then
        UnitConflict(conflict(keys left)).
        """
        tx = self.tx
        pending = list(dict.fromkeys(keys))
        for _ in range(attempts):
            if not pending:
                return
            current = await self._read_keys(pending)
            planned = {key: update(key, current[key]) for key in pending}  # raises before any write
            retry: list[str] = []
            for batch in chunks(pending, keys_per_txn):
                compare, success = [], []
                for key in batch:
                    kv, ops = current[key], planned[key]
                    if ops is None:
                        continue
                    raw = enc(key)
                    compare.append(tx.mod(raw) == kv.mod_revision if kv is not None else tx.create(raw) == 0)
                    success.extend(ops)
                if not success:
                    continue
                ok, _ = await self.txn(compare, success)
                if not ok:
                    retry.extend(batch)
            pending = retry
        if pending:
            raise UnitConflict(conflict(pending))

    async def _read_keys(self, keys: Sequence[str]) -> dict[str, Any]:
        if len(keys) == 1:  # one key: a plain read
            return {keys[0]: await self.get(keys[0])}
        current: dict[str, Any] = {}
        for batch in chunks(keys):
            _, responses = await self.txn([], [self.tx.get(enc(k)) for k in batch])
            for key, response in zip(batch, responses):
                current[key] = response[0] if response else None
        return current

    # ------------------------------------------------------------------ watches

    async def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events below any of the prefixes from start_revision on (inclusive), until cancelled.

        Raises WatchCompacted if start_revision is gone, RegistryUnavailable if etcd is lost.
        One gRPC stream per call, read here: each response's events are decoded and handed on
        in a loop, with no task, lock or queue per event (Connection.watch, watch_batches).
        """
        batches = self.watch_batches(prefixes, start_revision)
        try:
            async for batch in batches:
                for event in batch:
                    yield event
        finally:
            await batches.aclose()

    async def watch_batches(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """watch()'s events, errors and end, as one list per etcd response: one step of the
        iterator per response instead of per event (the engine leader takes in some 30,000
        events while 10,000 units are submitted and placed)."""
        ranges = []
        for prefix in prefixes:
            raw = enc(prefix)
            ranges.append((raw, prefix_end(raw)))
        stream = self.connection.watch(ranges, start_revision)
        try:
            async for events in stream:
                yield [WatchEvent(kv.key.decode(), kv.value if event.type == PUT else None, kv.mod_revision)
                       for event in events for kv in (event.kv,)]
        finally:
            await stream.aclose()
