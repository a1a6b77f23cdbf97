"""Python's garbage collector in a long-running fleetd process, set once start-up is done.

Two settings, as many long-running Python servers use them (measured in docs/performance.md,
"Scale, session 9"):

- `gc.freeze()` after start-up: what start-up made and still holds (imported modules, the
  registry's connection, the components) goes to the permanent generation, which no collection
  walks again; without it every full collection walks all of it once more.
- A larger young-generation threshold (Python's default: a collection of the youngest
  generation every 700 net container allocations): an etcd round trip through gRPC aio makes
  a few dozen short-lived objects (the call, its futures, its coroutine frames) that refcounting
  frees at once; collected every 700 allocations, the ones still in flight are walked again and
  again and promoted to the older generations, which are then walked too. Garbage that only a
  collection frees (reference cycles) waits a little longer: at most this many allocations.

Called by fleetd's daemon after start-up, and by the benchmark's processes that stand for a
fleetd's parts (fleetlab/bench/child.py), so that the simulation runs as fleetd does.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # net container allocations between two young-generation collections


def settle_after_startup(young: int = YOUNG_THRESHOLD) -> None:
    """Collect what start-up left behind, freeze the rest, and raise the young generation's
    threshold (the older generations' thresholds are kept)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
