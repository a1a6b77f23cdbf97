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

fleetd's daemon freezes start-up but keeps Python's young threshold (`settle_fleetd`): with
20,000, the cyclic garbage of a burst of work (a 100-unit start) was still there at idle, waiting
for 20,000 more allocations that an idle fleetd does not make: +1.0 MB of idle RSS in
`fleet-lab bench footprint` (docs/performance.md, "fleetd idle RSS, session 10"). The
benchmark's processes that stand for a fleetd's parts at scale (fleetlab/bench/child.py) keep
both settings (`settle_after_startup`), for their CPU.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # net container allocations between two young-generation collections


def settle_fleetd() -> None:
    """fleetd's daemon, once started: collect what start-up left behind and freeze the rest;
    the thresholds are kept (so that a burst's cyclic garbage does not outlive it at idle)."""
    gc.collect()
    gc.freeze()


def settle_after_startup(young: int = YOUNG_THRESHOLD) -> None:
    """The benchmark's stand-ins: `settle_fleetd`, and the young generation's threshold raised
    (the older generations' thresholds are kept)."""
    settle_fleetd()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
