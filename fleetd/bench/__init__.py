"""Benchmarks: each is a function with keyword arguments that returns a dict of figures.

`python -m fleetd.bench <name> [options]` runs one (later exposed as `fleet-lab bench <name>`).
See docs/performance.md for the figures and how to reproduce them.
"""

from fleetd.bench.lookup import lookup
from fleetd.bench.scale import scale
from fleetd.bench.scheduler import scheduler

BENCHMARKS = {"lookup": lookup, "scale": scale, "scheduler": scheduler}

__all__ = ["BENCHMARKS", "lookup", "scale", "scheduler"]
