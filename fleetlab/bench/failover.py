"""Failover on a real lab, per agent_ttl (each TTL boots its own lab: the TTL is in fleet.conf).

- node kill: units are started (spread over the nodes), a node that is not the engine leader
  is crashed (`Node.kill`: SIGKILL of its init), and the clock runs until every unit it ran
  is launched on another machine, as the client library sees it. Before the kill, etcd's
  raft leader is moved off the victim (`etcdctl move-leader`): losing etcd's leader too adds
  an election and etcd's renewal of every lease, which is etcd's behaviour, not fleet's (the
  functional suite measures that case). The victim is booted again after each run.
- leader kill: the node whose fleetd holds `<prefix>lease/engine-leader` is crashed; a new
  unit is submitted right after the kill. Measured: kill -> another machine holds the key,
  and kill -> the new unit is launched.
- no false failover: for `hiccup_fraction` x TTL, (1) the etcd member every fleetd talks to
  first (node 1's, the first of etcd_servers) is frozen with SIGSTOP, (2) a node running
  units is cut off the network. After each, the benchmark waits past the TTL, runs a barrier
  unit (the engine and an agent have run passes since), and checks in the etcd event log that
  no unit was re-placed and no machine expired, and in systemd that no unit was restarted.
  Three hiccups: node 1's etcd member frozen (it is the first of every fleetd's
  etcd_servers), node 2 cut off (etcd's raft leader moved off it first), node 1 cut off.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

from fleetd.errors import BenchmarkError
from fleetd.registry import WatchEvent

from ..lab import Lab
from ..node import Node
from .common import (
    Client,
    EventLog,
    Log,
    bench_lab,
    blocking,
    conditions,
    etcd_leader_node,
    etcd_pid,
    is_active_state,
    is_placement,
    lab_ttl_seconds,
    lease_ttl,
    load_average,
    move_etcd_leader_off,
    new_tag,
    node_of,
    quiet,
    running_copies,
    service_pid,
    settings_for,
    summary,
)


def failover(agent_ttls: Sequence[str] = ("5s", "2s"), *, runs: int = 3, units: int = 6, leader: bool = True,
             hiccups: bool = True, hiccup_fraction: float = 0.5, nodes: int = 3, keep_lab: str | None = None,
             log: Log = quiet) -> dict[str, Any]:
    """Node kill (`runs` times), leader kill and hiccups, for each agent_ttl in `agent_ttls`."""
    if nodes < 3:
        raise BenchmarkError("failover: needs at least 3 nodes (3 etcd members: one may die)")
    if runs < 0 or units < 3:
        raise BenchmarkError("failover: --runs must be >= 0 and --units >= 3")
    if not 0 < hiccup_fraction < 1:
        raise BenchmarkError("failover: --hiccup-fraction must be between 0 and 1 (a share of the TTL)")
    result: dict[str, Any] = {"benchmark": "failover", "runs": runs, "units": units, "before": conditions(),
                              "by_agent_ttl": {}}
    for ttl in ([None] if keep_lab else list(agent_ttls)):
        with bench_lab("failover", nodes=nodes, agent_ttl=ttl or "5s", keep_lab=keep_lab, log=log) as lab:
            if len(lab.nodes) < 3:
                raise BenchmarkError(f"failover: lab {lab.name} has {len(lab.nodes)} nodes; needs at least 3")
            row = asyncio.run(_failover(lab, runs, units, leader, hiccups, hiccup_fraction, log))
            row["lab"] = {"name": lab.name, "nodes": len(lab.nodes)}
            result["by_agent_ttl"][lab.agent_ttl] = row
    result["after"] = conditions()
    return result


async def _failover(lab: Lab, runs: int, units: int, leader: bool, hiccups: bool, fraction: float,
                    log: Log) -> dict[str, Any]:
    ttl = lab_ttl_seconds(lab)
    tag = new_tag("fo")
    async with Client(settings_for(lab)) as client:
        await client.wait_leader()
        engine_lease = await blocking(lease_ttl, lab, client.reg.keys.engine_leader)
    out: dict[str, Any] = {"agent_ttl_seconds": ttl, "engine_lease_ttl_seconds": engine_lease}
    rows = []
    for run in range(runs):
        row = await _node_kill(lab, f"{tag}-k{run}", units, run, ttl)
        log(f"agent_ttl {lab.agent_ttl}: node kill {run + 1}/{runs}: units active elsewhere after "
            f"{row['kill_to_all_launched_elsewhere_seconds']:.2f}s (load {row['load_average'][0]})")
        rows.append(row)
    if rows:
        out["node_kill"] = {
            "kill_to_all_launched_elsewhere_seconds": summary([r["kill_to_all_launched_elsewhere_seconds"] for r in rows]),
            "runs": rows,
        }
    if leader:
        row = await _leader_kill(lab, f"{tag}-l", ttl, engine_lease)
        log(f"agent_ttl {lab.agent_ttl}: leader kill: new leader after {row['kill_to_new_leader_seconds']:.2f}s, "
            f"new unit launched after {row['kill_to_new_unit_launched_seconds']:.2f}s")
        out["leader_kill"] = row
    if hiccups:
        row = await _hiccups(lab, f"{tag}-h", units, ttl, fraction, log)
        out["no_false_failover"] = row
    return out


# ---------------------------------------------------------------------------- node kill


async def _node_kill(lab: Lab, prefix: str, count: int, run: int, ttl: float) -> dict[str, Any]:
    async with Client(settings_for(lab)) as probe:
        leader = await probe.wait_leader()
    candidates = [n for n in lab.nodes if n.machine_id != leader]
    victim = candidates[run % len(candidates)]
    moved_etcd_leader = await blocking(move_etcd_leader_off, lab, victim)
    names = [f"{prefix}-{i}.service" for i in range(count)]
    restored = False
    async with Client(settings_for(lab, exclude=[victim])) as client:
        try:
            placed = await client.start_units(names)
            on_victim = sorted(n for n, m in placed.items() if m == victim.machine_id)
            if not on_victim:
                raise BenchmarkError(f"no unit was placed on {victim.name}: {placed}")
            if moved_etcd_leader:  # etcd extended every lease; the next keep-alive undoes it
                await asyncio.sleep(ttl / 3 + 0.5)
            reg = client.reg
            keys = reg.keys
            async with EventLog(reg, [keys.machines, keys.schedule, keys.states]) as events:
                await asyncio.sleep(0.2)
                killed = time.monotonic()
                await blocking(victim.kill)
                moved: dict[str, str] = {}

                async def check() -> bool:
                    got = await client.launched(on_victim, not_on=victim.machine_id)
                    if got:
                        moved.update(got)
                    return bool(got)

                await client.wait(check, ttl + 60, f"{on_victim} launched away from {victim.name}")
                took = time.monotonic() - killed
                await asyncio.sleep(0.1)
                expired = events.first(killed, lambda e: e.value is None and e.key == keys.machine_object(victim.machine_id))
                replaced = [events.first(killed, is_placement(keys, n, not_on=victim.machine_id)) for n in on_victim]
                active = [events.first(killed, is_active_state(keys, n, not_on=victim.machine_id)) for n in on_victim]
            load = load_average()
            copies = await blocking(running_copies, lab, names)
            wrong = {n: c for n, c in copies.items() if len(c) != 1}
            if wrong:
                raise BenchmarkError(f"after the kill of {victim.name}, units not active exactly once: {wrong}")
            await _restore(lab, victim)
            restored = True
        finally:
            if not restored and not victim.running:
                await _restore(lab, victim)
            await client.destroy(names)
    return {
        "victim": victim.name,
        "etcd_leader_moved_off_victim": moved_etcd_leader,
        "units_moved": len(on_victim),
        "moved_to": sorted({node_of(lab, m).name for m in moved.values()}),
        "kill_to_all_launched_elsewhere_seconds": round(took, 3),
        "kill_to_machine_expired_seconds": _round(expired),
        "kill_to_last_replacement_seconds": _round(_last(replaced)),
        "kill_to_last_active_state_seen_seconds": _round(_last(active)),
        "load_average": load,
    }


async def _restore(lab: Lab, node: Node) -> None:
    """Boot a killed node again and wait until its fleetd registered and etcd is whole."""
    await blocking(node.start)
    await blocking(lab.wait_etcd_healthy, 60)
    await blocking(lab.wait_fleetd, 90)


# ---------------------------------------------------------------------------- leader kill


async def _leader_kill(lab: Lab, prefix: str, ttl: float, engine_lease: float) -> dict[str, Any]:
    async with Client(settings_for(lab)) as probe:
        leader = await probe.wait_leader()
    victim = node_of(lab, leader)
    moved_etcd_leader = await blocking(move_etcd_leader_off, lab, victim)
    name = f"{prefix}-new.service"
    restored = False
    async with Client(settings_for(lab, exclude=[victim])) as client:
        reg = client.reg
        keys = reg.keys
        try:
            if moved_etcd_leader:
                await asyncio.sleep(max(ttl, engine_lease) / 3 + 0.5)
            async with EventLog(reg, [keys.engine_leader, keys.schedule, keys.states, keys.machines]) as events:
                await asyncio.sleep(0.2)
                killed = time.monotonic()
                await blocking(victim.kill)
                submit = asyncio.ensure_future(client.start_units([name], timeout=engine_lease + ttl + 60))

                async def new_leader() -> bool:
                    holder = await client.leader()
                    return holder is not None and holder != victim.machine_id

                await client.wait(new_leader, engine_lease + 60, "a new engine leader")
                placed = await submit
                took_unit = time.monotonic() - killed
                await asyncio.sleep(0.1)
                took_leader = events.first(killed, lambda e: e.key == keys.engine_leader and e.value is not None
                                           and e.value.decode() != victim.machine_id)
                key_gone = events.first(killed, lambda e: e.key == keys.engine_leader and e.value is None)
                on_dead = events.first(killed, lambda e: e.value is not None
                                       and e.key == keys.placement(victim.machine_id, name))
                expired = events.first(killed, lambda e: e.value is None and e.key == keys.machine_object(victim.machine_id))
                successor = await client.leader()
            load = load_average()
            copies = await blocking(running_copies, lab, [name])
            if len(copies[name]) != 1:
                raise BenchmarkError(f"{name}: active on {copies[name]} after the leader kill")
            await _restore(lab, victim)
            restored = True
        finally:
            if not restored and not victim.running:
                await _restore(lab, victim)
            await client.destroy([name])
    if took_leader is None:
        raise BenchmarkError("the event log missed the new engine leader")
    return {
        "victim": victim.name,
        "new_leader": node_of(lab, successor).name if successor else None,
        "etcd_leader_moved_off_victim": moved_etcd_leader,
        "kill_to_leader_key_expired_seconds": _round(key_gone),
        "kill_to_new_leader_seconds": round(took_leader, 3),
        "kill_to_new_unit_launched_seconds": round(took_unit, 3),
        "new_unit_first_placed_on_dead_machine": on_dead is not None,
        "kill_to_machine_expired_seconds": _round(expired),
        "new_unit_on": node_of(lab, placed[name]).name,
        "load_average": load,
    }


# ---------------------------------------------------------------------------- hiccups


async def _hiccups(lab: Lab, prefix: str, count: int, ttl: float, fraction: float, log: Log) -> dict[str, Any]:
    hold = fraction * ttl
    first, plain = lab.nodes[0], lab.nodes[1]  # node 1's etcd member is every fleetd's first
    names = [f"{prefix}-{i}.service" for i in range(count)]
    out: dict[str, Any] = {"hold_seconds": round(hold, 3), "agent_ttl_seconds": ttl}
    # the client reads through the last node's member only: never frozen nor cut off below
    async with Client(settings_for(lab, exclude=lab.nodes[:-1])) as client:
        try:
            placed = await client.start_units(names)
            pid = await blocking(etcd_pid, first)
            cases = [
                ("etcd_member_frozen", first,
                 lambda: blocking(first.exec, ["kill", "-STOP", str(pid)]),
                 lambda: blocking(first.exec, ["kill", "-CONT", str(pid)])),
                # a node whose etcd member is no fleetd's first choice and not etcd's raft leader
                ("node_partitioned", plain, lambda: blocking(plain.partition), lambda: blocking(plain.heal)),
                # node 1: its member is every fleetd's first choice (often also the raft leader)
                ("first_node_partitioned", first, lambda: blocking(first.partition), lambda: blocking(first.heal)),
            ]
            for kind, node, act, undo in cases:
                if kind == "node_partitioned" and await blocking(move_etcd_leader_off, lab, node):
                    await asyncio.sleep(ttl / 3 + 0.5)  # etcd extended every lease; keep-alives undo it
                etcd_leader = await blocking(etcd_leader_node, lab)
                facts = {"engine_leader": node.machine_id == await client.wait_leader(),
                         "etcd_raft_leader": etcd_leader is not None and etcd_leader.name == node.name,
                         "units_on_node": sum(1 for m in placed.values() if m == node.machine_id)}
                row = await _hiccup(lab, client, names, placed, node, act, undo, hold, ttl,
                                    f"{prefix}-b{len(out)}.service")
                row.update(facts)
                verdict = "no unit moved" if row["no_unit_moved"] else f"UNITS MOVED: {row['units_moved']}"
                if row["units_restarted"]:
                    verdict += f"; {len(row['units_restarted'])} units restarted in place"
                log(f"agent_ttl {lab.agent_ttl}: {kind} on {node.name} for {hold:.1f}s: {verdict}")
                out[kind] = row
        finally:
            await client.destroy(names)
    return out


async def _hiccup(lab: Lab, client: Client, names: list[str], placed: dict[str, str], node: Node, act, undo,
                  hold: float, ttl: float, barrier: str) -> dict[str, Any]:
    reg = client.reg
    keys = reg.keys
    pids_before = await blocking(_main_pids, lab, placed)
    async with EventLog(reg, [keys.schedule, keys.machines]) as events:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await act()
        try:
            await asyncio.sleep(max(0.0, hold - (time.monotonic() - started)))
        finally:
            await undo()
        held = time.monotonic() - started
        await asyncio.sleep(ttl + 1.0)  # past the TTL: an expired lease would have shown by now
        try:
            await client.start_units([barrier])  # the engine and an agent ran passes since
        finally:
            await client.destroy([barrier])
        ended = time.monotonic()
        await asyncio.sleep(0.1)
        ours = set(names)

        def unit_key(e: WatchEvent) -> bool:
            return e.key.startswith(keys.schedule) and e.key.rpartition("/")[2] in ours

        def machine_gone(e: WatchEvent) -> bool:
            return e.value is None and e.key.startswith(keys.machines) and e.key.endswith("/object")

        changes = events.between(started, ended, unit_key)
        expired = events.between(started, ended, machine_gone)
    now = await client.launched(names)
    pids_after = await blocking(_main_pids, lab, placed)
    moved = sorted(n for n in names if not now or now.get(n) != placed[n])
    restarted = sorted(n for n in names if pids_after.get(n) != pids_before.get(n))
    return {
        "node": node.name,
        "held_seconds": round(held, 3),
        "schedule_changes": len(changes),
        "units_moved": moved,
        "units_restarted": restarted,
        "restarted_on": sorted({node_of(lab, placed[n]).name for n in restarted}),
        "machines_expired": sorted({node_of(lab, e.key[len(keys.machines):].partition("/")[0]).name for e in expired}),
        "no_unit_moved": not changes and not moved and not expired,
        "ok": not changes and not moved and not restarted and not expired,
        "load_average": load_average(),
    }


def _main_pids(lab: Lab, placed: dict[str, str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, machine in placed.items():
        try:
            out[name] = service_pid(node_of(lab, machine), name)
        except BenchmarkError:
            out[name] = None
    return out


def _last(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
