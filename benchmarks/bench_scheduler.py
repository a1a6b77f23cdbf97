"""Benchmark of the engine's reconcile(): 1,000 machines x 10,000 units placed in one pass.

Run: .venv/bin/python benchmarks/bench_scheduler.py [--machines N] [--units N] [--repeat N]

The unit mix: plain services, metadata-constrained ones (equality ORs, ANDed keys, numeric
operators), template instances that conflict with each other, MachineOf sidekicks, units
with cpu/memory reservations, and a few global units (which count in every machine's load).
"cold" builds requirements and hashes from the unit files inside the timed call; "warm"
reuses a RequirementsCache, as the engine does between passes. Rates use process CPU time
(the wall time is printed too: it is noisy on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import time

from fleetd.engine.scheduler import RequirementsCache, reconcile
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Resources, Unit
from fleetd.unit.file import UnitFile

REGIONS = ("us", "eu", "ap")


def build_machines(count: int) -> dict[str, Machine]:
    machines = {}
    for i in range(count):
        machine_id = f"{i * 2654435761 % 2**32:08x}{i:024x}"
        metadata = {"region": REGIONS[i % 3], "disk": "ssd" if i % 4 == 0 else "hdd", "cores": str(4 + 4 * (i % 4))}
        machines[machine_id] = Machine(machine_id, metadata=metadata, capacity=Resources(cpu=16.0, memory=64 << 30))
    return machines


def unit(name: str, xfleet: str = "") -> Unit:
    text = f"[Unit]\nDescription={name}\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n"
    if xfleet:
        text += f"\n[X-Fleet]\n{xfleet}\n"
    return Unit(name, UnitFile.parse(text, source=name), DesiredState.LAUNCHED)


def build_units(count: int, machines: int, web: int | None = None) -> dict[str, Unit]:
    units: list[Unit] = []
    web = min(count // 10, machines - 10) if web is None else web
    units += [unit(f"web@{i}.service", "Conflicts=web@*.service") for i in range(web)]
    sidekicks = count // 20
    for i in range(sidekicks):
        units.append(unit(f"db-{i}.service"))
        units.append(unit(f"db-{i}-announce.service", f"MachineOf=db-{i}.service"))
    units += [unit(f"region-{i}.service", f"MachineMetadata=region={REGIONS[i % 3]}") for i in range(count // 10)]
    units += [unit(f"ssd-{i}.service", "MachineMetadata=region=us region=eu\nMachineMetadata=disk=ssd")
              for i in range(count // 20)]
    units += [unit(f"big-{i}.service", "MachineMetadata=cores>=12") for i in range(count // 20)]
    units += [unit(f"reserved-{i}.service", "ReserveCPU=0.5\nReserveMemory=512M") for i in range(count // 20)]
    units += [unit(f"global-{i}.service", "Global=true") for i in range(3)]
    units += [unit("global-us.service", "Global=true\nMachineMetadata=region=us")]
    plain = count - len(units)
    units += [unit(f"app-{i}.service") for i in range(plain)]
    return {u.name: u for u in units}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--web", type=int, default=None,
                        help="instances of the one-per-machine template (default: fewer than machines); "
                             "more than --machines leaves the rest unschedulable")
    args = parser.parse_args()

    machines = build_machines(args.machines)
    units = build_units(args.units, args.machines, args.web)
    snapshot = ClusterSnapshot(1, units, machines, {})
    scheduled = sum(1 for u in units.values() if not u.is_global)
    print(f"{len(machines)} machines, {len(units)} units ({scheduled} to schedule, {len(units) - scheduled} global)")

    for label, make_cache in (("cold", None), ("warm", RequirementsCache)):
        cache = make_cache() if make_cache else None
        if cache is not None:
            reconcile(snapshot, cache=cache)  # prime
        best = best_wall = None
        for _ in range(args.repeat):
            started, started_wall = time.process_time(), time.perf_counter()
            decisions = reconcile(snapshot, cache=cache if cache is not None else RequirementsCache())
            elapsed, wall = time.process_time() - started, time.perf_counter() - started_wall
            best = elapsed if best is None else min(best, elapsed)
            best_wall = wall if best_wall is None else min(best_wall, wall)
        placed = len(decisions.places)
        print(f"{label}: {placed} placements, {len(decisions.unschedulable)} unschedulable, "
              f"best of {args.repeat}: {best:.3f} s CPU ({best_wall:.3f} s wall) = "
              f"{placed / best:,.0f} placements/s")

    # Steady state: the same snapshot with everything placed must yield no decisions.
    settled = ClusterSnapshot(2, units, machines, decisions.apply({}))
    cache = RequirementsCache()
    reconcile(settled, cache=cache)
    started = time.perf_counter()
    again = reconcile(settled, cache=cache)
    elapsed = time.perf_counter() - started
    print(f"steady state: {len(again.places) + len(again.unplaces)} decisions in {elapsed:.3f} s")


if __name__ == "__main__":
    main()
