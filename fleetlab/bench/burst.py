"""Start many units at once, without blocking, until all are active, on a real lab.

Two ways of submitting, each `runs` times (the units are destroyed, and gone from every
machine, between runs):
- `client`: the client library submits every unit, launched, in one batch (`create_units`);
- `fleetctl`: `fleetctl start --no-block` of every unit file, as a process.
The clock starts before submission and stops when the client library (woken by its etcd
watch) sees every unit's current state as launched. An etcd watch of this process also
stamps when the last placement and the last active state arrived. At the end systemd on
every node is asked: every unit must be active on exactly one node.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetd.errors import BenchmarkError
from fleetd.model import DesiredState, Unit

from ..lab import Lab
from .common import (
    Client,
    EventLog,
    Log,
    bench_lab,
    blocking,
    cleanup,
    conditions,
    first_times,
    load_average,
    new_tag,
    quiet,
    running_copies,
    settings_for,
    unit_file,
)

VIAS = ("client", "fleetctl")


def burst(units: int = 300, *, runs: int = 3, via: tuple[str, ...] = VIAS, nodes: int = 3, agent_ttl: str = "5s",
          keep_lab: str | None = None, timeout: float = 120.0, log: Log = quiet) -> dict[str, Any]:
    """Submit `units` units without blocking until all are active; `runs` times per way in `via`."""
    unknown = set(via) - set(VIAS)
    if unknown or not via:
        raise BenchmarkError(f"burst: --via must be among {', '.join(VIAS)}, got {', '.join(via) or 'nothing'}")
    if units < 1 or runs < 1:
        raise BenchmarkError("burst: --units and --runs must be at least 1")
    result: dict[str, Any] = {"benchmark": "burst", "units": units, "runs": runs, "before": conditions()}
    with bench_lab("burst", nodes=nodes, agent_ttl=agent_ttl, keep_lab=keep_lab, log=log) as lab:
        result["lab"] = {"name": lab.name, "nodes": len(lab.nodes), "agent_ttl": lab.agent_ttl}
        result.update(asyncio.run(_burst(lab, units, runs, via, timeout, log)))
    result["after"] = conditions()
    return result


async def _burst(lab: Lab, count: int, runs: int, via: tuple[str, ...], timeout: float, log: Log) -> dict[str, Any]:
    tag = new_tag("bu")
    out: dict[str, Any] = {}
    async with Client(settings_for(lab)) as client:
        for way in via:
            rows = []
            for run in range(runs):
                names = [f"{tag}-{way[0]}{run}-{i}.service" for i in range(count)]
                async with cleanup(lambda: client.destroy(names, timeout=timeout)):
                    row = await _one(lab, client, way, names, timeout)
                log(f"{way} run {run + 1}/{runs}: {count} units active after {row['submitted_to_all_launched_seconds']:.2f}s "
                    f"(load {row['load_average'][0]})")
                rows.append(row)
            totals = [r["submitted_to_all_launched_seconds"] for r in rows]
            out[way] = {"runs": rows, "range_seconds": [min(totals), max(totals)]}
    return out


async def _one(lab: Lab, client: Client, way: str, names: list[str], timeout: float) -> dict[str, Any]:
    reg = client.reg
    async with EventLog(reg, [reg.keys.schedule, reg.keys.states]) as events:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            paths = []
            if way == "fleetctl":
                for name in names:
                    path = Path(tmp) / name
                    path.write_text(unit_file(name).serialize())
                    paths.append(str(path))
            started = time.monotonic()
            if way == "client":
                await client.fleet.create_units([Unit(n, unit_file(n), DesiredState.LAUNCHED) for n in names])
            else:
                proc = await blocking(lab.fleetctl, "start", "--no-block", *paths, check=False, timeout=timeout)
                if proc.returncode != 0:
                    raise BenchmarkError(f"fleetctl start --no-block: exit {proc.returncode}: {proc.stderr.strip()}")
            submitted = time.monotonic() - started
            launched: dict[str, str] = {}

            async def check() -> bool:
                got = await client.launched(names)
                if got:
                    launched.update(got)
                return bool(got)

            await client.wait(check, timeout, f"{len(names)} units launched")
            total = time.monotonic() - started
        load = load_average()
        await asyncio.sleep(0.1)
        placed, active = first_times(events, started, reg.keys)
        missed = [n for n in names if n not in placed or n not in active]
        if missed:
            raise BenchmarkError(f"{len(missed)} units launched, but the event log missed their events, e.g. {missed[0]}")
        last_placed = max(placed[n] for n in names)
        last_active = max(active[n] for n in names)
    copies = await blocking(running_copies, lab, names)
    wrong = {n: c for n, c in copies.items() if len(c) != 1}
    if wrong:
        raise BenchmarkError(f"{len(wrong)} units not active exactly once in systemd, e.g. "
                             f"{dict(list(wrong.items())[:3])}")
    per_machine: dict[str, int] = {}
    for machine in launched.values():
        per_machine[machine[:8]] = per_machine.get(machine[:8], 0) + 1
    return {
        "submitted_to_all_launched_seconds": round(total, 3),
        "submission_seconds": round(submitted, 3),
        "last_placement_seen_seconds": round(last_placed, 3),
        "last_active_state_seen_seconds": round(last_active, 3),
        "units_per_machine": dict(sorted(per_machine.items())),
        "active_in_systemd_once": len(copies),
        "load_average": load,
    }

