"""Group commit of unit creations: concurrent API requests share etcd transactions.

A `fleetctl start` of 30 new units sends 30 `PUT /units/<name>` requests at once. Each used to
read the unit and then create it in a transaction of its own: 60 etcd round trips, 30 raft
entries, and the engine saw the units arrive one by one over 0.1-0.5 s (and placed them in as
many passes, and each node's agent started them in several passes too).

`CreateBatcher.create(unit)` queues the unit; one flush at a time creates everything queued in
one `Registry.create_units` call (its transactions are conditional on each unit's absence, so
the answer per unit is the same as a lone create's). No timer: the first request is written at
once, and the requests that arrive while that transaction is in flight form the next one (group
commit, as databases do with their log), so a lone request waits for nothing.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence

from fleetd.model import Unit

FIRST_ROUNDS = 2
CreateUnits = Callable[[Sequence[Unit]], Awaitable[list[str]]]


def take_batch(queue: list[tuple[Unit, asyncio.Future]]) -> tuple[list[tuple[Unit, asyncio.Future]],
                                                                   list[tuple[Unit, asyncio.Future]]]:
    """(this flush, what stays queued): the first request of each unit name, in arrival order;
    a second request for a name waits for the next flush (etcd refuses a key twice in one
    transaction, and it must see the first one's result)."""
    batch, rest, names = [], [], set()
    for item in queue:
        if item[0].name in names:
            rest.append(item)
        else:
            names.add(item[0].name)
            batch.append(item)
    return batch, rest


class CreateBatcher:
    def __init__(self, create_units: CreateUnits) -> None:
        self._create_units = create_units
        self._queue: list[tuple[Unit, asyncio.Future]] = []
        self._flushing: asyncio.Task | None = None

    async def create(self, unit: Unit) -> bool:
        """Create the unit if absent: True if this call created it (Registry.create_unit)."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((unit, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # requests already read from their sockets are parsed in the loop's next rounds: they
        # join the first transaction (two rounds cost microseconds, nothing like a timer)
        for _ in range(FIRST_ROUNDS):
            await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = take_batch(self._queue)
            try:
                created = set(await self._create_units([u for u, _ in batch]))
            except BaseException as exc:  # noqa: BLE001 - every waiter gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                if not isinstance(exc, Exception):
                    for _, future in self._queue:
                        if not future.done():
                            future.cancel()
                    self._queue = []
                    raise
                continue
            for unit, future in batch:
                if not future.done():
                    future.set_result(unit.name in created)
