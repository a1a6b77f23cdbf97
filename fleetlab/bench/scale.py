"""Scale benchmark: N simulated agents and one engine against one real etcd.

The benchmark starts its own etcd (free loopback ports, temporary data dir), an engine in a
process of its own (so that its CPU and memory are measured apart), and N SimulatedAgents
spread over a few agents processes (as machines are separate; fleetlab.bench.child): each
registers a machine under its lease, watches its own schedule keys and publishes unit states
through the real registry code (an in-memory "systemd"). The agents of a process share that
process's part of `connections` etcd connections (one gRPC channel each); every agent has its
own watches.

Then a client submits `units` launched units (distinct bodies, as `fleetctl start` would, in
batched transactions), and the clock runs until every unit is placed and reported active.
The result is checked against etcd (one placement and one active state per unit, on the same
machine, with the unit's hash) before any figure is returned.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetd.config import EtcdSettings
from fleetd.errors import BenchmarkError
from fleetd.model import DesiredState, Machine, Resources, Unit
from fleetd.registry import Registry, RequestCounter
from fleetlab.testing.etcd import EtcdServer
from fleetd.unit.file import UnitFile

#: (machines, units) of the issue's target and of --quick.
FULL = (1000, 10_000)
QUICK = (100, 1000)
KEY_PREFIX = "/fleet-bench/"
REGIONS = ("us", "eu", "ap")
MB = 1024 * 1024


#: The etcd settings docs/registry.md recommends for large clusters on etcd 3.4 ("etcd for
#: large clusters"), used by default: commit the backend every 500 writes (etcd 3.4.23 copies
#: the uncommitted writes for every read transaction), and collect garbage at 4x the live heap
#: instead of 2x. `scale --etcd-stock` runs etcd with its own defaults.
ETCD_TUNING_FLAGS: tuple[str, ...] = ("--backend-batch-limit=500",)
ETCD_TUNING_ENV: dict[str, str] = {"GOGC": "400"}


def etcd_setup(stock: bool, options: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], dict[str, str] | None]:
    """(etcd flags, environment added to etcd's) for a run: the large-cluster settings, unless
    `stock`, then `options`."""
    if stock:
        return tuple(options), None
    return ETCD_TUNING_FLAGS + tuple(options), dict(ETCD_TUNING_ENV)


def machine_id(i: int) -> str:
    """Distinct 32-hex IDs whose 8-character short IDs are distinct too."""
    return f"{i * 2654435761 % 2**32:08x}{i:024x}"


def bench_machine(i: int) -> Machine:
    return Machine(machine_id(i), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                   {"region": REGIONS[i % len(REGIONS)]}, capacity=Resources(16.0, 64 << 30))


def default_agent_processes(machines: int) -> int:
    """Processes the simulated agents are spread over: one per core (as real machines each
    have their own), at least two, never more than the machines."""
    return max(1, min(machines, max(2, os.cpu_count() or 1)))


def bench_unit(i: int) -> Unit:
    text = f"[Unit]\nDescription=bench unit {i}\n\n[Service]\nExecStart=/bin/sleep infinity\n"
    return Unit(f"bench-{i:05d}.service", UnitFile.parse(text, source=f"bench-{i}"), DesiredState.LAUNCHED)


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


@dataclass
class _Child:
    """A benchmark role in a child process (fleetlab.bench.child)."""

    role: str
    process: asyncio.subprocess.Process
    ready: dict

    @classmethod
    async def start(cls, config: dict, timeout: float) -> "_Child":
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleetlab.bench.child", json.dumps(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        child = cls(config["role"], process, {})
        child.ready = await child.read("ready", timeout)
        return child

    async def send(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def read(self, event: str, timeout: float) -> dict:
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise BenchmarkError(f"{self.role} process: no {event!r} report within {timeout:.0f}s") from None
        if not line:
            raise BenchmarkError(f"{self.role} process exited ({await self.process.wait()}) before {event!r}")
        message = json.loads(line)
        if message.get("event") != event:
            raise BenchmarkError(f"{self.role} process: expected {event!r}, got {message.get('event')!r}")
        return message

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class _AgentsChild(_Child):
    """An agents process: its "progress" lines (units active there) are read as they come."""

    active: int = 0
    passes: int = 0
    _reader: asyncio.Task | None = None
    _queue: asyncio.Queue | None = None

    @classmethod
    async def start(cls, config: dict, timeout: float) -> "_AgentsChild":
        child = await super().start(config, timeout)
        child.active, child.passes = child.ready["active"], child.ready["passes"]
        child._queue = asyncio.Queue()
        child._reader = asyncio.create_task(child._read_lines())
        return child

    async def _read_lines(self) -> None:
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if message.get("event") == "progress":
                self.active, self.passes = message["active"], message["passes"]
            else:
                await self._queue.put(message)
        await self._queue.put(None)

    async def read(self, event: str, timeout: float) -> dict:
        if self._queue is None:
            return await super().read(event, timeout)
        try:
            message = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            raise BenchmarkError(f"{self.role} process: no {event!r} report within {timeout:.0f}s") from None
        if message is None:
            raise BenchmarkError(f"{self.role} process exited ({await self.process.wait()}) before {event!r}")
        if message.get("event") != event:
            raise BenchmarkError(f"{self.role} process: expected {event!r}, got {message.get('event')!r}")
        return message

    async def kill(self) -> None:
        await super().kill()
        if self._reader is not None:
            self._reader.cancel()


async def _all(children: list[_Child], command: str, event: str, timeout: float) -> list[dict]:
    for child in children:
        await child.send(command)
    return [await child.read(event, timeout) for child in children]


def _cpu_between(earlier: list[dict], later: list[dict]) -> float:
    return sum(b["cpu"] - a["cpu"] for a, b in zip(earlier, later))


def _traffic_between(earlier: dict, later: dict) -> RequestCounter:
    """A child's etcd traffic between two of its reports."""
    return RequestCounter.from_dict(later["counter"]) - RequestCounter.from_dict(earlier["counter"])


def _active_count(workers: list[_AgentsChild]) -> int:
    return sum(worker.active for worker in workers)


async def _start_latencies(client: "_Child", workers: list[_AgentsChild], first: int, count: int,
                           timeout: float, engine: "_Child | None" = None,
                           engine_times: list[tuple[float, float]] | None = None) -> list[float]:
    """Seconds from `fleetctl start` of one more unit (on the settled cluster, every earlier
    unit active) until an agent reports it active (one more active unit), for `count` units one
    after the other; with `engine`, the engine's time for the pass that placed each (view
    update, decision and schedule write) into `engine_times`."""
    latencies = []
    for number in range(first, first + count):
        await client.send(f"start {number}")
        started = await client.read("started", timeout)
        name, deadline = started["name"], started["started"] + timeout
        while _active_count(workers) < number + 1:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"scale benchmark: {name} not active {timeout:.0f}s after its start")
            await asyncio.sleep(0.001)
        latencies.append(time.monotonic() - started["started"])
        if engine is not None and engine_times is not None:
            await engine.send("probe")
            probe = (await engine.read("probe", 30))["stats"]
            engine_times.append((probe["last_engine_seconds"], probe["last_decide_seconds"]))
    return latencies


def etcd_watchers(endpoint: str) -> tuple[int, int]:
    """(watchers, of which unsynced) in etcd now, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    figures = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_slow_watcher_total"):
            figures[name] = int(float(value))
    return figures.get("etcd_debugging_mvcc_watcher_total", 0), figures.get("etcd_debugging_mvcc_slow_watcher_total", 0)


async def _watches_settled(endpoint: str, at_least: int, timeout: float) -> int:
    """Wait until etcd has `at_least` watchers, none of them catching up (an agents process is
    ready after its agents' first pass; their watches are created after it, one at a time per
    stream: without this wait, creating them and etcd's catching up on their history from the
    first pass's revision would land in the measured run)."""
    deadline = time.monotonic() + timeout
    while True:
        watchers, unsynced = await asyncio.to_thread(etcd_watchers, endpoint)
        if watchers >= at_least and unsynced == 0:
            return watchers
        if time.monotonic() > deadline:
            raise BenchmarkError(f"scale benchmark: etcd has {watchers} watchers ({unsynced} unsynced) "
                                 f"{timeout:.0f}s after the agents started, expected {at_least}")
        await asyncio.sleep(0.05)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _verify(client: Registry, units: list[Unit], machines: set[str]) -> dict[str, Any]:
    """Check in etcd that every unit is placed once and reported active where it is placed."""
    placements = await client.placements()
    states = await client.unit_states()
    expected = {u.name: u for u in units}
    problems: list[str] = []
    missing = sorted(set(expected) - set(placements))
    if missing:
        problems.append(f"{len(missing)} units not placed (first: {missing[0]})")
    stray = sorted(set(placements) - set(expected))
    if stray:
        problems.append(f"{len(stray)} unexpected placements (first: {stray[0]})")
    per_unit: dict[str, list] = {}
    for state in states:
        per_unit.setdefault(state.name, []).append(state)
    for name, unit in expected.items():
        placement = placements.get(name)
        reported = per_unit.get(name, [])
        if placement is None:
            continue
        if placement.machine_id not in machines:
            problems.append(f"{name}: placed on unknown machine {placement.machine_id}")
        elif placement.hash != unit.hash:
            problems.append(f"{name}: placement hash {placement.hash} != unit hash {unit.hash}")
        elif len(reported) != 1:
            problems.append(f"{name}: {len(reported)} states reported (expected 1)")
        elif (reported[0].machine_id, reported[0].hash, reported[0].active_state) != (
            placement.machine_id, unit.hash, "active"
        ):
            problems.append(f"{name}: state {reported[0]} does not match placement on {placement.machine_id}")
        if len(problems) > 10:
            break
    if problems:
        raise BenchmarkError("scale benchmark result inconsistent: " + "; ".join(problems))
    load: dict[str, int] = {m: 0 for m in machines}
    for placement in placements.values():
        load[placement.machine_id] += 1
    return {
        "placed": len(placements),
        "active": sum(1 for s in states if s.active_state == "active"),
        "states": len(states),
        "machines_used": sum(1 for n in load.values() if n),
        "min_per_machine": min(load.values()),
        "max_per_machine": max(load.values()),
    }


def _traffic(counter: RequestCounter, units: int) -> dict[str, Any]:
    return {
        "requests": counter.requests,
        "bytes_sent": counter.bytes_sent,
        "bytes_received": counter.bytes_received,
        "requests_per_unit": round(counter.requests / units, 2),
        "bytes_per_unit": round((counter.bytes_sent + counter.bytes_received) / units, 1),
        "by_method": counter.as_dict()["by_method"],
    }


async def _scale(machines: int, units: int, connections: int, timeout: float, agent_ttl: float,
                 engine_interval: float, etcd_binary: str, profile_dir: Path | None,
                 idle_seconds: float, single_starts: int, agent_processes: int, agents_nice: int = 0,
                 etcd_options: tuple[str, ...] = (), etcd_env: dict[str, str] | None = None) -> dict[str, Any]:
    with EtcdServer(binary=etcd_binary, extra_args=tuple(etcd_options), env=etcd_env) as etcd:
        settings = EtcdSettings(endpoints=(etcd.endpoint,), key_prefix=KEY_PREFIX, request_timeout=30.0)
        ids = [machine_id(i) for i in range(machines)]
        common = {"endpoints": [etcd.endpoint], "key_prefix": KEY_PREFIX}
        engine_config = {
            **common, "role": "engine", "machine_id": ids[0],
            "interval": engine_interval, "lease_ttl": max(10.0, 5 * engine_interval),
            "profile": str(profile_dir / "engine.prof") if profile_dir else None,
        }
        children: list[_Child] = []
        workers: list[_AgentsChild] = []
        connections = max(connections, agent_processes)
        try:
            started = time.monotonic()
            engine = await _Child.start(engine_config, timeout=60)
            children.append(engine)
            client = await _Child.start({**common, "role": "client", "units": units}, timeout=60)
            children.append(client)
            # machine i in process i % N (every process gets a share of every region); the
            # processes start their agents at the same time
            configs = [{**common, "role": "agents", "machines": list(range(k, machines, agent_processes)),
                        "total_machines": machines,
                        "connections": connections // agent_processes + (k < connections % agent_processes),
                        "ttl": agent_ttl, "request_timeout": 30.0, "nice": agents_nice,
                        "profile": str(profile_dir / f"agents-{k}.prof") if profile_dir else None}
                       for k in range(agent_processes)]
            results = await asyncio.gather(*(_AgentsChild.start(c, timeout) for c in configs), return_exceptions=True)
            workers = [r for r in results if isinstance(r, _AgentsChild)]
            children.extend(workers)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            # every agent watches schedule/<id>/, global/ and machines/<id>/metadata/
            watchers = await _watches_settled(etcd.endpoint, 3 * machines, timeout)
            setup_seconds = time.monotonic() - started

            await engine.send("probe")
            before = await engine.read("probe", 30)  # the engine with every machine, no unit yet
            agents_before = await _all(workers, "begin", "begin", 30)
            etcd_cpu_before, _ = proc_usage(etcd.process.pid)
            load_before = os.getloadavg()[0]

            await client.send("go")
            created = await client.read("done", timeout)
            t0 = created["started"]
            if created["created"] != units:
                raise BenchmarkError(f"created {created['created']} of {units} units (stale data in etcd?)")
            deadline = t0 + timeout
            while _active_count(workers) < units:
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"scale benchmark: {_active_count(workers)} of {units} units active after {timeout:.0f}s")
                await asyncio.sleep(0.005)
            total_seconds = time.monotonic() - t0

            etcd_cpu, etcd_rss = proc_usage(etcd.process.pid)
            agents_after = await _all(workers, "end", "end", 30)
            agents_cpu = _cpu_between(agents_before, agents_after)
            agent_passes = sum(b["passes"] - a["passes"] for a, b in zip(agents_before, agents_after))
            agent_traffic = RequestCounter()
            for a, b in zip(agents_before, agents_after):
                agent_traffic = agent_traffic + _traffic_between(a, b)
            await engine.send("probe")
            busy = await engine.read("probe", 30)
            if idle_seconds > 0:  # the settled cluster: resyncs only
                await asyncio.sleep(idle_seconds)
            await engine.send("probe")
            idle = await engine.read("probe", 30)
            engine_times: list[tuple[float, float]] = []
            latencies = await _start_latencies(client, workers, units, single_starts, timeout, engine, engine_times)
            await engine.send("stop")
            done = await engine.read("done", 120)  # tracemalloc of the whole state: slow under load
            engine_traffic = _traffic_between(before, busy)
            client_traffic = _traffic_between(client.ready, created)
            async with await Registry.connect(settings) as checker:
                verified = await _verify(checker, [bench_unit(i) for i in range(units + single_starts)], set(ids))
            await _all(workers, "stop", "done", 60)
        finally:
            for child in children:
                await child.kill()

    stats = {key: busy["stats"][key] - before["stats"][key]  # the run itself, without setup or idle phase
             for key in ("passes", "skipped_passes", "placements", "transactions", "reconcile_seconds",
                         "reconcile_cpu_seconds", "snapshot_seconds", "apply_seconds",
                         "planned_passes", "view_passes", "full_reads", "settled_passes", "marked_bursts",
                         "lagging_watch")}
    placed_seconds = busy["stats"]["last_write_at"] - t0
    total_traffic = agent_traffic + client_traffic + engine_traffic
    return {
        "benchmark": "scale",
        "machines": machines,
        "units": units,
        "connections": sum(c["connections"] for c in configs),
        "agent_processes": agent_processes,
        "agents_nice": agents_nice,
        "agents_niceness_observed": sorted({w.ready["niceness"] for w in workers}),
        "etcd_options": list(etcd_options),
        "etcd_env": dict(etcd_env or {}),
        "load_average_before": round(load_before, 2),
        "setup_seconds": round(setup_seconds, 2),
        "etcd_watchers_at_start": watchers,
        "create_seconds": round(created["monotonic"] - t0, 3),
        "placed_seconds": round(placed_seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "placements_per_second_end_to_end": round(units / placed_seconds),
        "start_one_unit_seconds": {
            "count": len(latencies),
            "p50": round(_percentile(latencies, 0.5), 3),
            "p90": round(_percentile(latencies, 0.9), 3),
            "max": round(max(latencies), 3),
        } if latencies else None,
        "engine_seconds_one_more_unit": {
            "count": len(engine_times),
            "p50": round(_percentile([e for e, _ in engine_times], 0.5), 4),
            "p90": round(_percentile([e for e, _ in engine_times], 0.9), 4),
            "max": round(max(e for e, _ in engine_times), 4),
            "decision_only_p50": round(_percentile([d for _, d in engine_times], 0.5), 4),
            "decision_only_max": round(max(d for _, d in engine_times), 4),
        } if engine_times else None,
        # the engine's schedule writes of the run: [start, end] seconds after the submission's
        # start, placements
        "engine_writes": [[round(a - t0, 3), round(b - t0, 3), n] for a, b, n, _ in busy["stats"]["write_log"]
                          if b >= t0],
        # when the engine's last wait for a burst of submissions ended (seconds after the start)
        "engine_burst_wait_end_seconds": round(busy["stats"].get("last_settled_at", 0.0) - t0, 3),
        "engine": {
            "passes": stats["passes"],
            "planned_passes": stats["planned_passes"],
            "settled_passes": stats["settled_passes"],
            "marked_bursts": stats["marked_bursts"],
            "lagging_watch": stats["lagging_watch"],
            "view_passes": stats["view_passes"],
            "full_reads": stats["full_reads"],
            "placements": stats["placements"],
            "transactions": stats["transactions"],
            "reconcile_seconds": round(stats["reconcile_seconds"], 3),
            "reconcile_cpu_seconds": round(stats["reconcile_cpu_seconds"], 3),
            "placements_per_second_reconcile": round(stats["placements"] / stats["reconcile_seconds"])
            if stats["reconcile_seconds"] else None,
            "placements_per_cpu_second_reconcile": round(stats["placements"] / stats["reconcile_cpu_seconds"])
            if stats["reconcile_cpu_seconds"] else None,
            "skipped_passes": stats["skipped_passes"],
            "snapshot_seconds": round(stats["snapshot_seconds"], 3),
            "apply_seconds": round(stats["apply_seconds"], 3),
            "cpu_seconds": round(busy["cpu"] - before["cpu"], 2),
            "rss_mb_before_units": round(before["rss"] / MB, 1),
            "rss_mb_peak": round(done["peak_rss"] / MB, 1),
            "rss_mb_end": round(done["rss"] / MB, 1),
            "rss_mb_growth": round((done["peak_rss"] - before["rss"]) / MB, 1),
            "idle_cpu_percent": round(100 * (idle["cpu"] - busy["cpu"]) / (idle["monotonic"] - busy["monotonic"]), 1)
            if idle_seconds > 0 else None,
            "idle_passes": idle["stats"]["passes"] + idle["stats"]["skipped_passes"]
            - busy["stats"]["passes"] - busy["stats"]["skipped_passes"],
            "state_mb_tracemalloc": round(done["state_bytes"] / MB, 1),
            "pass_peak_mb_tracemalloc": round(done["pass_peak_bytes"] / MB, 1),
        },
        "agents_process_cpu_seconds": round(agents_cpu, 2),  # all agents processes together
        "agents_process_cpu_seconds_each": [round(b["cpu"] - a["cpu"], 2) for a, b in zip(agents_before, agents_after)],
        "client_process_cpu_seconds": round(created["cpu"] - client.ready["cpu"], 2),
        "agent_passes": agent_passes,
        "etcd_server": {
            "cpu_seconds": round(etcd_cpu - etcd_cpu_before, 2),
            "rss_mb": round(etcd_rss / MB, 1),
        },
        "etcd_traffic": {
            "total": _traffic(total_traffic, units),
            "engine": _traffic(engine_traffic, units),
            "agents": _traffic(agent_traffic, units),
            "client": _traffic(client_traffic, units),
        },
        "verified": verified,
    }


def scale(machines: int | None = None, units: int | None = None, *, quick: bool = False,
          connections: int = 50, timeout: float = 300.0, agent_ttl: float = 30.0,
          engine_interval: float = 2.0, idle_seconds: float | None = None, single_starts: int = 20,
          etcd_binary: str = "etcd", profile_dir: str | None = None,
          agent_processes: int | None = None, agents_nice: int = 0,
          etcd_options: tuple[str, ...] | list[str] = (), etcd_stock: bool = False) -> dict[str, Any]:
    """Run the scale benchmark; returns its figures (raises BenchmarkError on failure).

    Defaults to 1,000 machines x 10,000 units; `quick` to 100 x 1,000. Afterwards the settled
    cluster idles for `idle_seconds` (default: 5 engine intervals; 0 with `quick`) to measure
    the engine's idle CPU. Then `single_starts` more units are started one at a time on the
    settled cluster (start-to-active latency at scale). The agents run in `agent_processes`
    processes (default: default_agent_processes()). `profile_dir` writes cProfile data of
    the agents processes (agents-K.prof) and of the engine process there. `agents_nice`: the
    agents processes' niceness (0: they compete for the CPU with etcd, the engine and the
    client as equals; real machines would each have their own). `etcd_options`: extra flags
    for the benchmark's etcd (e.g. "--backend-batch-interval=10ms"), after the settings
    docs/registry.md recommends for large clusters on etcd 3.4 (ETCD_TUNING: flags and
    environment), which `etcd_stock` leaves out.
    """
    if idle_seconds is None:
        idle_seconds = 0.0 if quick else 5 * engine_interval
    default = QUICK if quick else FULL
    machines = default[0] if machines is None else machines
    units = default[1] if units is None else units
    if machines < 1 or units < 1:
        raise BenchmarkError(f"scale benchmark needs at least one machine and one unit, got {machines} x {units}")
    profile = Path(profile_dir) if profile_dir else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    if agent_processes is None:
        agent_processes = default_agent_processes(machines)
    if not 1 <= agent_processes <= machines:
        raise BenchmarkError(f"scale benchmark: agent processes must be 1..{machines}, got {agent_processes}")
    result = asyncio.run(_scale(machines, units, connections, timeout, agent_ttl, engine_interval,
                                etcd_binary, profile, idle_seconds, single_starts, agent_processes,
                                agents_nice, *etcd_setup(etcd_stock, etcd_options)))
    result["date"] = time.strftime("%Y-%m-%d")
    result["cpus"] = os.cpu_count()
    return result
