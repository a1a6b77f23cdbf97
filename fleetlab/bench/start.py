"""Start one unit until it is active, measured three ways on a real lab:

(a) `fleetctl start UNIT` as a process: wall time, Python start-up of the CLI included; with the
    etcd driver, and (a') with the API driver (the default) against node 1's TCP API;
(b) in-process, the client library (etcd driver, as fleetctl uses it): create the unit, then
    set its desired state to launched, until its current state is seen as launched; waiting is
    woken by the client's etcd watch. The time from set-desired-state is the figure to compare
    with the issue's target; an etcd watch of this process also stamps when the engine's
    placement and the agent's active state arrived;
(c) the same through fleetd's HTTP API (fleetctl's API driver) on node 1; its wait sleeps in the
    API's change feed (GET /fleet/v1/_watch/units, docs/api.md) between checks (`api_poll`: the
    poll interval only against an API without the feed).
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
    LAUNCHED,
    Client,
    EventLog,
    Log,
    bench_lab,
    blocking,
    cleanup,
    conditions,
    is_active_state,
    is_placement,
    new_tag,
    quiet,
    running_copies,
    settings_for,
    summary,
    unit_file,
)


def start(runs: int = 20, *, nodes: int = 3, agent_ttl: str = "5s", keep_lab: str | None = None,
          api: bool = True, warmup: int = 1, api_poll: float = 0.02, log: Log = quiet) -> dict[str, Any]:
    """Start one unit until active, `runs` times per method (after `warmup` uncounted runs)."""
    if runs < 1:
        raise BenchmarkError("start: --runs must be at least 1")
    result: dict[str, Any] = {"benchmark": "start", "runs": runs, "warmup": warmup, "before": conditions()}
    with bench_lab("start", nodes=nodes, agent_ttl=agent_ttl, keep_lab=keep_lab, log=log) as lab:
        result["lab"] = {"name": lab.name, "nodes": len(lab.nodes), "agent_ttl": lab.agent_ttl}
        result.update(asyncio.run(_start(lab, runs, warmup, api, api_poll, log)))
    result["after"] = conditions()
    return result


async def _start(lab: Lab, runs: int, warmup: int, api: bool, api_poll: float, log: Log) -> dict[str, Any]:
    tag = new_tag("st")
    names: list[str] = []
    out: dict[str, Any] = {}
    async with Client(settings_for(lab)) as client, cleanup(lambda: client.destroy(names)):
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            log(f"(a) fleetctl start as a process (etcd driver), {runs} runs")
            out["fleetctl_process"] = await _fleetctl_runs(lab, client, Path(tmp), f"{tag}-cli", runs, warmup, names)
            if api:
                log(f"(a') fleetctl start as a process, API driver (the default) on {lab.nodes[0].name}, {runs} runs")
                api_args = tuple(lab.fleetctl_api_args(lab.nodes[0].name))  # with the lab's certificate
                out["fleetctl_process_api"] = await _fleetctl_runs(lab, client, Path(tmp), f"{tag}-cla", runs, warmup,
                                                                   names, api_args)
        log(f"(b) client library (etcd driver), {runs} runs")
        out["client_library"] = await _library_runs(client, f"{tag}-lib", runs, warmup, names)
        if api:
            log(f"(c) HTTP API driver on {lab.nodes[0].name}, {runs} runs")
            out["api_driver"] = await _api_runs(lab, client, f"{tag}-api", runs, warmup, api_poll, names)
        out["verified"] = await _verify(lab, client, names)
    return out


async def _fleetctl_runs(lab: Lab, client: Client, tmp: Path, prefix: str, runs: int, warmup: int,
                         names: list[str], global_args: tuple[str, ...] = ()) -> dict[str, Any]:
    times = []
    for i in range(warmup + runs):
        name = f"{prefix}-{i}.service"
        path = tmp / name
        path.write_text(unit_file(name).serialize())
        names.append(name)
        started = time.monotonic()
        proc = await blocking(lab.fleetctl, *global_args, "start", str(path), check=False)
        took = time.monotonic() - started
        if proc.returncode != 0 or f"Unit {name} launched" not in proc.stdout:
            raise BenchmarkError(f"fleetctl start {name}: exit {proc.returncode}: {proc.stdout} {proc.stderr}")
        if i >= warmup:
            times.append(took)
    if not await client.launched(names[-runs:]):
        raise BenchmarkError("fleetctl start returned, but not every unit is launched")
    return {"seconds": summary(times), "all": [round(t, 3) for t in times]}


async def _library_runs(client: Client, prefix: str, runs: int, warmup: int, names: list[str]) -> dict[str, Any]:
    reg = client.reg
    from_set, from_create, placed, active = [], [], [], []
    async with EventLog(reg, [reg.keys.schedule, reg.keys.states]) as events:
        for i in range(warmup + runs):
            name = f"{prefix}-{i}.service"
            names.append(name)
            created = time.monotonic()
            await client.fleet.create_units([Unit(name, unit_file(name))])  # inactive, as fleetctl does
            set_at = time.monotonic()
            await client.fleet.set_desired_state([name], DesiredState.LAUNCHED)

            async def check(name: str = name) -> bool:
                info = await client.fleet.unit(name)
                return info is not None and info.current_state == LAUNCHED

            await client.wait(check, 30, f"{name} launched")
            done = time.monotonic()
            await asyncio.sleep(0.05)  # let the event log catch up with the last events
            if i < warmup:
                continue
            from_set.append(done - set_at)
            from_create.append(done - created)
            p = events.first(set_at, is_placement(reg.keys, name))
            a = events.first(set_at, is_active_state(reg.keys, name))
            if p is None or a is None:
                raise BenchmarkError(f"{name}: launched, but the event log missed its placement or active state")
            placed.append(p)
            active.append(a)
    return {
        "set_desired_to_launched_seconds": summary(from_set),
        "create_to_launched_seconds": summary(from_create),
        "set_desired_to_placement_seen_seconds": summary(placed),
        "set_desired_to_active_state_seen_seconds": summary(active),
        "all": [round(t, 3) for t in from_set],
    }


async def _api_runs(lab: Lab, client: Client, prefix: str, runs: int, warmup: int, poll: float,
                    names: list[str]) -> dict[str, Any]:
    from fleetctl.api_client import ApiFleetClient

    node = lab.nodes[0]
    files = lab.client_files() or (None, None, None)
    api = ApiFleetClient(lab.api_url(node.name), timeout=5.0, cafile=files[0], certfile=files[1], keyfile=files[2])
    times = []
    try:
        await api.machines()  # connect outside the timed section
        for i in range(warmup + runs):
            name = f"{prefix}-{i}.service"
            names.append(name)
            await api.create_units([Unit(name, unit_file(name))])
            set_at = time.monotonic()
            await api.set_desired_state([name], DesiredState.LAUNCHED)

            async def launched(name: str = name) -> bool:
                info = await api.unit(name)
                return info is not None and info.current_state == LAUNCHED

            if not await api.wait(launched, 30, poll=poll, names=[name]):
                raise BenchmarkError(f"{name}: not launched 30s after the API set its desired state")
            if i >= warmup:
                times.append(time.monotonic() - set_at)
    finally:
        await api.close()
    return {"endpoint": lab.api_url(node.name), "poll_seconds": poll,
            "set_desired_to_launched_seconds": summary(times), "all": [round(t, 3) for t in times]}


async def _verify(lab: Lab, client: Client, names: list[str]) -> dict[str, Any]:
    """Every started unit launched in fleet and active in systemd on exactly one node."""
    launched = await client.launched(names)
    if not launched:
        raise BenchmarkError("not every started unit is launched at the end")
    copies = await blocking(running_copies, lab, names)
    wrong = {n: c for n, c in copies.items() if len(c) != 1}
    if wrong:
        raise BenchmarkError(f"units not active exactly once in systemd: {wrong}")
    per_node: dict[str, int] = {}
    for nodes_of in copies.values():
        per_node[nodes_of[0]] = per_node.get(nodes_of[0], 0) + 1
    return {"units": len(names), "launched": len(launched), "active_in_systemd_once": len(copies),
            "per_node": dict(sorted(per_node.items()))}
