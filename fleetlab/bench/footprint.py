"""fleetd's footprint on a real lab: RSS and CPU of the fleetd process of every node, idle,
with `units` units running (default: a 1-node lab, so that one fleetd is both the engine
leader and the agent of all the units).

Read inside each node from /proc/<fleetd MainPID>: VmRSS (the target's figure), RssAnon and
RssFile (file-backed pages are mostly shared libraries: grpc's, libpython, libcrypto), Pss
from smaps_rollup (shared pages divided among the processes that map them), VmHWM, threads;
CPU is utime+stime over `idle_seconds` of idling, after `settle_seconds` of quiet.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fleetd.errors import BenchmarkError

from ..lab import Lab
from ..node import Node
from .common import (
    Client,
    Log,
    bench_lab,
    blocking,
    cleanup,
    conditions,
    fleetd_pid,
    load_average,
    new_tag,
    quiet,
    running_copies,
    settings_for,
)

MB = 1024.0  # /proc reports kB


def footprint(units: int = 100, *, idle_seconds: float = 30.0, settle_seconds: float = 10.0, nodes: int = 1,
              agent_ttl: str = "5s", keep_lab: str | None = None, log: Log = quiet) -> dict[str, Any]:
    """Idle RSS and CPU of every node's fleetd, before and with `units` units running."""
    if units < 0 or idle_seconds <= 0:
        raise BenchmarkError("footprint: --units must be >= 0 and --idle-seconds > 0")
    result: dict[str, Any] = {"benchmark": "footprint", "units": units, "idle_seconds": idle_seconds,
                              "before": conditions()}
    with bench_lab("footprint", nodes=nodes, agent_ttl=agent_ttl, keep_lab=keep_lab, log=log) as lab:
        result["lab"] = {"name": lab.name, "nodes": len(lab.nodes), "agent_ttl": lab.agent_ttl}
        result.update(asyncio.run(_footprint(lab, units, idle_seconds, settle_seconds, log)))
    result["after"] = conditions()
    return result


async def _footprint(lab: Lab, count: int, idle: float, settle: float, log: Log) -> dict[str, Any]:
    tag = new_tag("fp")
    names = [f"{tag}-{i}.service" for i in range(count)]
    async with Client(settings_for(lab)) as client, cleanup(lambda: client.destroy(names, timeout=120)):
        log(f"no units: settling {settle:g}s, then idling {idle:g}s")
        await asyncio.sleep(settle)
        empty = await _measure(lab, idle)
        log(f"starting {count} units")
        placed = await client.start_units(names, timeout=120) if names else {}
        copies = await blocking(running_copies, lab, names)
        wrong = [n for n, c in copies.items() if len(c) != 1]
        if wrong:
            raise BenchmarkError(f"{len(wrong)} units not active exactly once in systemd, e.g. {wrong[0]}")
        log(f"{count} units active; settling {settle:g}s, then idling {idle:g}s")
        await asyncio.sleep(settle)
        loaded = await _measure(lab, idle)
        leader = await client.leader()
    per_node = []
    for node in lab.nodes:
        on_node = sum(1 for m in placed.values() if m == node.machine_id)
        per_node.append({"node": node.name, "engine_leader": node.machine_id == leader, "units_on_node": on_node,
                         "no_units": empty[node.name], "with_units": loaded[node.name]})
    worst = max(per_node, key=lambda r: r["with_units"]["rss_mb"])
    return {
        "fleetd": per_node,
        "max_idle_rss_mb_with_units": worst["with_units"]["rss_mb"],
        "max_idle_cpu_percent_with_units": max(r["with_units"]["cpu_percent"] for r in per_node),
        "units_active_in_systemd": len(copies),
    }


async def _measure(lab: Lab, idle: float) -> dict[str, dict[str, Any]]:
    nodes = lab.nodes
    pids = {n.name: await blocking(fleetd_pid, n) for n in nodes}
    first = {n.name: await blocking(_sample, n, pids[n.name]) for n in nodes}
    await asyncio.sleep(idle)
    last = {n.name: await blocking(_sample, n, pids[n.name]) for n in nodes}
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for node in nodes:
        a, b = first[node.name], last[node.name]
        if await blocking(fleetd_pid, node) != pids[node.name]:
            raise BenchmarkError(f"node {node.name}: fleetd restarted while it was measured")
        cpu = (b["cpu_ticks"] - a["cpu_ticks"]) / ticks
        out[node.name] = {
            "rss_mb": round(b["VmRSS"] / MB, 1),
            "rss_anon_mb": round(b["RssAnon"] / MB, 1),
            "rss_file_mb": round(b["RssFile"] / MB, 1),
            "pss_mb": round(b["Pss"] / MB, 1) if "Pss" in b else None,
            "hwm_mb": round(b["VmHWM"] / MB, 1),
            "threads": b["Threads"],
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(100.0 * cpu / (b["at"] - a["at"]), 2),
            "load_average": load_average(),
        }
    return out


def _sample(node: Node, pid: int) -> dict[str, Any]:
    """utime+stime, /proc/PID/status memory lines and Pss of fleetd, read inside the node."""
    script = f"cat /proc/{pid}/stat; echo ==; cat /proc/{pid}/status; echo ==; cat /proc/{pid}/smaps_rollup"
    at = time.monotonic()
    proc = node.exec(script, check=False)
    parts = proc.stdout.split("==\n")
    if proc.returncode != 0 or len(parts) != 3:
        raise BenchmarkError(f"node {node.name}: cannot read /proc/{pid}: {proc.stderr.strip()}")
    stat, status, rollup = parts
    fields = stat.rpartition(")")[2].split()  # fields from the 3rd (state) on
    out: dict[str, Any] = {"at": at, "cpu_ticks": int(fields[11]) + int(fields[12])}
    for line in status.splitlines() + rollup.splitlines():
        key, _, value = line.partition(":")
        words = value.split()
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads", "Pss") and words:
            out[key] = int(words[0])
    missing = {"VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"} - set(out)
    if missing:
        raise BenchmarkError(f"node {node.name}: /proc/{pid}/status lacks {', '.join(sorted(missing))}")
    return out
