"""Benchmark roles run in processes of their own, so that their CPU, memory and event-loop
latency are their own: the engine (one fleetd's engine) and the client (fleetctl).

Protocol (JSON lines): the parent passes one JSON argument {"role": ..., ...}. The child
prints {"event": "ready", ...} when set up, then:
- engine: answers "probe" with {"event": "probe", ...} (figures so far) and, after "stop",
  prints {"event": "done", ...} with its EngineStats and the size of its state;
- client: after "go" on stdin, creates the units and prints {"event": "done", ...}; then
  each "start N" creates unit N alone and prints {"event": "started", ...};
- agents: a share of the simulated machines (fleetlab.testing.simagent), each with its own
  lease and watches; after every pass that changed something it prints {"event": "progress",
  "active": units active here, "passes": ...} (at most every PROGRESS_EVERY seconds); "begin"
  and "end" report figures (and start/stop the profiler), "stop" stops the agents.
Every report carries the role's etcd traffic (RequestCounter.as_dict()), CPU and RSS.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
from typing import Any

from fleetd.config import EtcdSettings
from fleetd.engine.leader import Engine
from fleetd.engine.scheduler import RequirementsCache, reconcile
from fleetd.gc_tuning import settle_after_startup
from fleetd.registry import Registry, RequestCounter


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes, from /proc/self/status."""
    current = peak = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return current, peak


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(event: str, counter: RequestCounter, **fields: Any) -> None:
    rss, peak = rss_bytes()
    report = {"event": event, "rss": rss, "peak_rss": peak, "cpu": cpu_seconds(),
              "monotonic": time.monotonic(), "counter": counter.as_dict()}
    report.update(fields)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


async def next_line() -> str:
    """The next line on stdin, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
    return sys.stdin.readline().strip()


async def engine(config: dict, registry: Registry, counter: RequestCounter) -> None:
    eng = Engine(registry, config["machine_id"], config.get("interval", 2.0), lease_ttl=config.get("lease_ttl"))
    task = asyncio.create_task(eng.run())
    while not eng.is_leader:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    settle_after_startup()  # fleetd's daemon freezes too; the raised young threshold is the stand-ins' own
    emit("ready", counter)
    profiler = cProfile.Profile() if config.get("profile") else None
    if profiler:
        profiler.enable()
    while await next_line() == "probe":
        emit("probe", counter, stats=dataclasses.asdict(eng.stats))
    if profiler:
        profiler.disable()
        profiler.dump_stats(config["profile"])
    traffic, stats, rss, cpu = counter.copy(), dataclasses.asdict(eng.stats), rss_bytes(), cpu_seconds()
    now = time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eng.resign()
    state_bytes, pass_peak = await state_memory(registry)
    emit("done", traffic, stats=stats, rss=rss[0], peak_rss=rss[1], cpu=cpu, monotonic=now,
         state_bytes=state_bytes, pass_peak_bytes=pass_peak)


async def state_memory(registry: Registry) -> tuple[int, int]:
    """Python heap held by the engine's view of the cluster (a fresh registry's snapshot, its
    decode caches and a reconcile cache), and the peak during that snapshot and pass."""
    gc.collect()
    tracemalloc.start()
    try:
        fresh = Registry(registry.connection)
        cache = RequirementsCache()
        snapshot = await fresh.snapshot()
        reconcile(snapshot, cache=cache)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        del snapshot, cache, fresh
        return held, peak
    finally:
        tracemalloc.stop()


async def client(config: dict, registry: Registry, counter: RequestCounter) -> None:
    from fleetlab.bench.scale import bench_unit

    units = [bench_unit(i) for i in range(config["units"])]
    for unit in units:  # what fleetctl does before talking to etcd
        unit.file.serialize()
        _ = unit.hash
    emit("ready", counter)
    await next_line()
    started = time.monotonic()
    created = await registry.create_units(units)
    emit("done", counter, started=started, created=len(created))
    while (line := await next_line()).startswith("start "):  # one more unit, as `fleetctl start`
        unit = bench_unit(int(line.split()[1]))
        started = time.monotonic()
        created = await registry.create_units([unit])
        emit("started", counter, started=started, name=unit.name, created=len(created))


PROGRESS_EVERY = 0.002  # seconds between two progress lines of an agents process


async def agents(config: dict, registry: Registry, counter: RequestCounter) -> None:
    from fleetlab.bench.scale import bench_machine
    from fleetlab.testing.simagent import SimulatedAgent

    settings = registry.settings
    registries = [registry]
    for _ in range(max(1, min(config["connections"], len(config["machines"]))) - 1):
        registries.append(await Registry.connect(settings, counter=counter))
    progress = asyncio.Event()
    # keep-alive phases spread over one interval by machine number (all machines of the
    # benchmark register within a second or two; a cluster's machines joined over time): the
    # run meets its share of the keep-alives, not all 1,000 at once 10 s after the start
    total = config.get("total_machines") or len(config["machines"])
    tally = [0, 0]  # units active, passes: kept by the agents (no sum over them per report)
    sims = [SimulatedAgent(registries[i % len(registries)], bench_machine(n), ttl=config["ttl"], progress=progress,
                           keepalive_phase=(n + 1) / total, tally=tally)
            for i, n in enumerate(config["machines"])]
    semaphore = asyncio.Semaphore(100)

    async def start(agent: SimulatedAgent) -> None:
        async with semaphore:
            await agent.start()

    try:
        await asyncio.gather(*(start(a) for a in sims))
        await asyncio.gather(*(a.synced.wait() for a in sims))
        settle_after_startup()  # fleetd's daemon freezes too; the raised young threshold is the stand-ins' own
        # an agent's watches are requested by a task of its own after its first read: the run
        # must not begin before every one went out (etcd's watcher count, which the parent
        # waits for, includes the engine's watches and so can be reached a few agents early)
        watches = 3 * len(sims)  # schedule/<id>/, global/, machines/<id>/metadata/ each
        deadline = time.monotonic() + 60
        while counter.sent.get("Watch/Watch", 0) < watches:
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents: {counter.sent.get('Watch/Watch', 0)} of {watches} watches requested in 60 s")
            await asyncio.sleep(0.01)

        def figures() -> dict:
            return {"active": tally[0], "passes": tally[1]}

        async def report() -> None:
            last = None
            while True:
                await progress.wait()
                progress.clear()
                now = figures()
                if now != last:
                    last = now
                    sys.stdout.write(json.dumps({"event": "progress", **now}) + "\n")
                    sys.stdout.flush()
                await asyncio.sleep(PROGRESS_EVERY)

        emit("ready", counter, niceness=os.nice(0), **figures())
        reporter = asyncio.create_task(report())
        profiler = cProfile.Profile() if config.get("profile") else None
        while (line := await next_line()) in ("begin", "end"):
            if profiler and line == "begin":
                profiler.enable()
            elif profiler:
                profiler.disable()
                profiler.dump_stats(config["profile"])
            emit(line, counter, **figures())
        reporter.cancel()
    finally:
        for agent in sims:
            await agent.crash()
        for extra in registries[1:]:
            await extra.close()
    emit("done", counter, **figures())


ROLES = {"engine": engine, "client": client, "agents": agents}


async def main(config: dict) -> None:
    if config.get("nice"):  # before any thread starts (gRPC's): Linux nice is per thread, inherited
        os.nice(config["nice"])
    settings = EtcdSettings(endpoints=tuple(config["endpoints"]), key_prefix=config["key_prefix"],
                            request_timeout=config.get("request_timeout", 30.0))
    counter = RequestCounter()
    registry = await Registry.connect(settings, counter=counter)
    try:
        await ROLES[config["role"]](config, registry, counter)
    finally:
        await registry.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
    sys.stdout.flush()
    os._exit(0)  # skip gRPC's slow interpreter-exit cleanup
