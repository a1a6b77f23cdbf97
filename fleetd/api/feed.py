"""One registry watch per API server for the change feed's long polls (fleetd/api/watch.py).

A long poll used to open an etcd watch of its own from `since + 1`. When the change it waits for
was committed just before that watch reached etcd (a node's states published while the poll
was on its way: the common case at the end of a `fleetctl start`), etcd counts the watch as
"unsynced" and sends it the past events from a background loop that runs every 100 ms
(`watchResyncInterval`), so the answer came 0-100 ms after the change (measured: 30-100 ms at
the end of 30-unit starts, docs/performance.md).

`FeedHub` keeps one watch of the feed's ranges open from the revision it started at, and a log
of (revision, unit) of every change since; a poll with `since` at or after that revision is
answered from the log at once, or on the first matching event the open (synced) watch delivers.
A poll that asks to wake on state reports (`wake=states`: a wait for units to be launched or
loaded, which only an agent's report completes) is not answered by a placement or a job write
as long as a state report of the units follows within STATE_GRACE: the report answers instead
(a 30-unit start's long poll woke on the placements, and fleetd read and sent the 30 units
while its agent was starting its own share). A poll it cannot answer (since before the hub's start, or the log trimmed past it, or the hub's
watch broken: compaction, etcd gone) is told so and the caller watches by itself as before. The
hub's watch ends once no poll used it for IDLE seconds and an event arrives.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import Any, Callable, Collection

log = logging.getLogger(__name__)

IDLE = 120.0  # seconds without a poll after which the hub's watch ends (on its next event)
LOG_MAX = 20_000  # changes kept; older ones are dropped and the hub's start moves past them
STATE_GRACE = 0.5  # seconds a wake=states poll waits after a change that is no state report


class FeedHub:
    def __init__(self, registry: Any, prefix: str, unit_of: Callable[[str], tuple[str, bool] | None]) -> None:
        """`prefix`: the watched range; `unit_of(key)`: the unit a key is about and whether the
        key is a state report, None for a key of the range that is no change of the feed."""
        self._reg = registry
        self._prefix = prefix
        self._unit_of = unit_of
        self.start: int | None = None  # every change after this revision is in the log; None: not running
        self._revisions: list[int] = []
        self._units: list[str] = []
        self._reports: list[bool] = []
        self._changes: list[tuple[str, bytes | None]] = []  # each logged change's key and value (None: deleted)
        self.position: int | None = None  # the revision of the last event the watch delivered (start before one)
        self.seeds: dict[str, Any] = {}  # unit name -> what fleetd/api/feed_records.py folds the log onto
        self._news = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._used = time.monotonic()
        self._waiting = 0

    async def ensure(self) -> None:
        """Running: a watch from the current revision on (the revision a client reads after
        this can be waited on here)."""
        self._used = time.monotonic()
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            start = await self._reg.current_revision()
            self._revisions, self._units, self._reports, self._changes = [], [], [], []
            self.seeds.clear()
            self.start = self.position = start
            self._task = asyncio.get_running_loop().create_task(self._run(start))

    @property
    def registry_keys(self) -> Any:
        return self._reg.keys

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def first_change(self, since: int, names: Collection[str], *, states: bool = False) -> int | None:
        """The revision of the first change after `since` (of a unit in `names`; any without),
        waiting for it; None when the hub cannot tell (the caller watches by itself). `states`:
        a change that is no state report answers only if no state report follows within
        STATE_GRACE (the report's revision answers then)."""
        self._used = time.monotonic()
        held: int | None = None  # the first change, no state report: answers after the grace
        deadline = 0.0
        while True:
            if self.start is None or since < self.start:
                return held
            i = bisect.bisect_right(self._revisions, since)
            for revision, unit, report in zip(self._revisions[i:], self._units[i:], self._reports[i:]):
                if names and unit not in names:
                    continue
                if report or not states:
                    return revision
                if held is None:
                    held, deadline = revision, time.monotonic() + STATE_GRACE
            news = self._news
            self._waiting += 1
            try:
                if held is None:
                    await news.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return held
                    try:
                        async with asyncio.timeout(remaining):
                            await news.wait()
                    except TimeoutError:
                        return held
            finally:
                self._waiting -= 1

    def changes_after(self, revision: int, names: Collection[str]) -> list[tuple[str, str, bytes | None]] | None:
        """The logged changes of the named units after `revision` up to `position`, in order, as
        (revision, unit, key, value); None when the log does not hold every one (revision before the hub's
        start, or the hub not running). Called without an await in between from the answer's
        check to its use: the hub's watch hands on each etcd response's events in one go (no
        suspension within one, fleetd/registry/core.py), and etcd sends a revision's events in
        one response, so `position` is always a whole revision here."""
        if self.start is None or revision < self.start:
            return None
        i = bisect.bisect_right(self._revisions, revision)
        return [(revision, unit, *change) for revision, unit, change
                in zip(self._revisions[i:], self._units[i:], self._changes[i:]) if unit in names]

    async def _run(self, start: int) -> None:
        try:
            events = self._reg.watch([self._prefix], start + 1)
            try:
                async for event in events:
                    self.position = event.revision
                    found = self._unit_of(event.key)
                    if found is None:
                        continue
                    self._revisions.append(event.revision)
                    self._units.append(found[0])
                    self._reports.append(found[1])
                    self._changes.append((event.key, event.value))
                    if len(self._revisions) > LOG_MAX:
                        cut = len(self._revisions) - LOG_MAX // 2
                        self.start = self._revisions[cut - 1]  # every change after it is kept
                        del self._revisions[:cut], self._units[:cut], self._reports[:cut], self._changes[:cut]
                    self._wake()
                    if not self._waiting and time.monotonic() - self._used > IDLE:
                        return
            finally:
                await events.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - compaction, etcd gone: the polls watch by themselves
            log.debug("change feed hub stopped: %s", exc)
        finally:
            self.start = self.position = None
            self.seeds.clear()
            self._wake()

    def _wake(self) -> None:
        self._news.set()
        self._news = asyncio.Event()
