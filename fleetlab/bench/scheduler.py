"""Scheduler benchmark: the pure reconcile() on a synthetic snapshot, no etcd.

The workload (machines with metadata and capacity; plain, constrained, conflicting, MachineOf,
reserved and global units) is the one of benchmarks/bench_scheduler.py, loaded from there so
that there is one definition of it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from fleetd.engine.scheduler import RequirementsCache, reconcile
from fleetd.errors import BenchmarkError
from fleetd.model import ClusterSnapshot

WORKLOAD = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scheduler.py"


def _workload() -> ModuleType:
    if not WORKLOAD.is_file():
        raise BenchmarkError(f"{WORKLOAD}: scheduler workload not found (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("fleet_bench_scheduler_workload", WORKLOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _best(fn, repeat: int) -> tuple[float, float, Any]:
    """Best CPU time, best wall time (seconds) over `repeat` runs, and the last result."""
    best_cpu = best_wall = None
    result = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        best_wall = wall if best_wall is None else min(best_wall, wall)
    return best_cpu, best_wall, result


def scheduler(machines: int = 1000, units: int = 10_000, *, repeat: int = 3, quick: bool = False) -> dict[str, Any]:
    """Placements per CPU second of reconcile() placing `units` on `machines` in one pass
    (CPU time: wall time is noisy on a shared machine; the warm wall-clock rate is included)."""
    if quick:
        machines, units = 100, 1000
    work = _workload()
    snapshot = ClusterSnapshot(1, work.build_units(units, machines), work.build_machines(machines), {})
    cold_cpu, _cold_wall, decisions = _best(lambda: reconcile(snapshot, cache=RequirementsCache()), repeat)
    cache = RequirementsCache()
    reconcile(snapshot, cache=cache)
    warm_cpu, warm_wall, decisions = _best(lambda: reconcile(snapshot, cache=cache), repeat)
    placed = len(decisions.places)
    if placed == 0:
        raise BenchmarkError("scheduler benchmark placed nothing")
    settled = ClusterSnapshot(2, snapshot.units, snapshot.machines, decisions.apply({}))
    reconcile(settled, cache=cache)
    steady_cpu, _, again = _best(lambda: reconcile(settled, cache=cache), repeat)
    if not again.empty:
        raise BenchmarkError(f"scheduler benchmark: a settled cluster still got {len(again.places)} placements")
    return {
        "benchmark": "scheduler",
        "machines": machines,
        "units": len(snapshot.units),
        "global_units": sum(1 for unit in snapshot.units.values() if unit.is_global),
        "placements": placed,
        "unschedulable": len(decisions.unschedulable),
        "cold_cpu_seconds": round(cold_cpu, 3),
        "warm_cpu_seconds": round(warm_cpu, 3),
        "placements_per_cpu_second_cold": round(placed / cold_cpu),
        "placements_per_cpu_second_warm": round(placed / warm_cpu),
        "placements_per_second_warm_wall": round(placed / warm_wall),
        "steady_state_cpu_seconds": round(steady_cpu, 3),
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
    }
