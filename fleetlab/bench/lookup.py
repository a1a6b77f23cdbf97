"""Lookup benchmark: what it costs a client to find named units in a large cluster.

A real etcd holds `units` launched units placed on `machines` machines, each reported active
(the registry as a settled cluster leaves it; no agents run). For sampled names it times,
through fleetctl's etcd driver (`fleetctl.etcd_client.EtcdFleetClient`):

- `unit(name)`: what `fleetctl status/cat/ssh` and the API's per-unit routes look up;
- `units_named([name], exact_machine=False)`: one check of a blocking wait (`fleetctl start`);
- `units()`: the whole cluster, which is what a wait's check read before;
- the unit, its states and the whole `schedule/` range: what `unit(name)` read before.

Before any figure is returned, every per-name answer is checked against the whole-cluster one.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Awaitable, Callable

from fleetd.config import EtcdSettings
from fleetd.errors import BenchmarkError
from fleetd.model import DesiredState, Placement, Unit, UnitState
from fleetd.wire import unit_info
from fleetd.registry import Registry
from fleetd.unit.file import UnitFile
from fleetlab.testing.etcd import EtcdServer

KEY_PREFIX = "/fleet-bench-lookup/"


def lookup(units: int = 10_000, machines: int = 100, *, samples: int = 20, quick: bool = False,
           etcd_binary: str = "etcd") -> dict[str, Any]:
    """Median seconds per lookup, by way of looking up, on a cluster of `units` units."""
    if quick:
        units, machines, samples = 1000, 10, 10
    if units < 1 or machines < 1 or samples < 1:
        raise BenchmarkError("lookup benchmark: units, machines and samples must be at least 1")
    return asyncio.run(_lookup(units, machines, samples, etcd_binary))


def _machine(i: int, machines: int) -> str:
    return f"{i % machines:032x}"


async def _fill(reg: Registry, units: int, machines: int) -> list[Unit]:
    all_units = [Unit(f"lookup-{i:06d}.service", UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {i}\n"),
                      DesiredState.LAUNCHED) for i in range(units)]
    await reg.create_units(all_units)
    lease = await reg.grant_lease(600)
    leader = _machine(0, machines)
    if not await reg.campaign(leader, lease):
        raise BenchmarkError("lookup benchmark: could not take the engine leader key")
    await reg.apply_schedule(fence_machine_id=leader, place=[
        Placement(u.name, _machine(i, machines), u.hash, DesiredState.LAUNCHED) for i, u in enumerate(all_units)])
    await reg.publish_states([UnitState(u.name, _machine(i, machines), u.hash, "loaded", "active", "running",
                                        DesiredState.LAUNCHED.value) for i, u in enumerate(all_units)], lease)
    return all_units


async def _timed(fn: Callable[[], Awaitable[Any]], times: list[float]) -> Any:
    started = time.perf_counter()
    result = await fn()
    times.append(time.perf_counter() - started)
    return result


async def _lookup(units: int, machines: int, samples: int, etcd_binary: str) -> dict[str, Any]:
    from fleetctl.etcd_client import EtcdFleetClient

    with EtcdServer(binary=etcd_binary) as etcd:
        settings = EtcdSettings(endpoints=(etcd.endpoint,), key_prefix=KEY_PREFIX, request_timeout=30.0)
        async with await Registry.connect(settings) as reg:
            all_units = await _fill(reg, units, machines)
        client = EtcdFleetClient(settings)
        reg = None
        try:
            step = max(1, units // samples)
            names = [all_units[i].name for i in range(0, units, step)][:samples]
            per_name, wait_check, whole, scanned = [], [], [], []
            reg = await Registry.connect(settings)  # closed below, with the client

            async def with_schedule_scan(name: str):
                unit = await reg.get_unit(name)
                placements, states = await asyncio.gather(reg.placements(), reg.unit_states(name=name))
                return unit_info(unit, placements.get(name), states)

            for name in names:
                before = await _timed(lambda: with_schedule_scan(name), scanned)
                one = await _timed(lambda: client.unit(name), per_name)
                (checked,) = await _timed(lambda: client.units_named([name], exact_machine=False), wait_check)
                everything = {u.name: u for u in await _timed(client.units, whole)}
                if not before == one == checked == everything[name]:
                    raise BenchmarkError(f"lookup benchmark: {name}: per-name answers differ from the "
                                         f"whole-cluster one: {one} / {checked} / {everything[name]}")
                if everything[name].current_state != DesiredState.LAUNCHED.value:
                    raise BenchmarkError(f"lookup benchmark: {name} is not launched: {everything[name]}")
        finally:
            await client.close()
            if reg is not None:
                await reg.close()

    def median_ms(times: list[float]) -> float:
        return round(statistics.median(times) * 1000, 2)

    return {
        "benchmark": "lookup",
        "units": units,
        "machines": machines,
        "samples": len(names),
        "unit_by_name_ms": median_ms(per_name),
        "unit_by_name_with_schedule_scan_ms": median_ms(scanned),
        "wait_check_ms": median_ms(wait_check),
        "whole_cluster_ms": median_ms(whole),
        "verified": len(names),
    }
