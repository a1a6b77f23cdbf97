"""Failover on a real lab, per agent_ttl (each TTL boots its own lab: the TTL is in fleet.conf).

- node kill: units are started (spread over the nodes), a node that is not the engine leader
  is crashed (`Node.kill`: SIGKILL of its init), and the clock runs until every unit it ran
  is launched on another machine, as the client library sees it. Before the kill, etcd's
  raft leader is moved off the victim (`etcdctl move-leader`): losing etcd's leader too adds
  an election and etcd's renewal of every lease, which is etcd's behaviour, not fleet's (the
  functional suite measures that case). The victim is booted again after each run, and the
  next kill waits until it has been registered for `quiet_seconds` (fleetd/disruption.py):
  the engine moves a lone lost machine's units at once only when every other fleetd has been
  in touch with etcd that long (fleetd/engine/hold.py), else after its settle time, so a
  kill right after a reboot measures that other case (`--no-wait-quiet` to measure it).
- leader kill: the node whose fleetd holds `<prefix>lease/engine-leader` is crashed; a new
  unit is submitted right after the kill. Measured: kill -> another machine holds the key,
  kill -> the new unit is launched, and kill -> the units the leader's node ran are launched
  elsewhere (the new leader starts in its grace period, which the lost machine ends only once
  the engine has proven it lost: fleetd/engine/hold.py).
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

from fleetd.disruption import quiet_seconds
from fleetd.errors import BenchmarkError, FleetError
from fleetd.registry import WatchEvent

from ..lab import Lab
from ..node import Node
from .common import (
    Client,
    EventLog,
    Log,
    bench_lab,
    blocking,
    cleanup,
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
             wait_quiet: bool = True, log: Log = quiet) -> dict[str, Any]:
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
            row = asyncio.run(_failover(lab, runs, units, leader, hiccups, hiccup_fraction, log, wait_quiet))
            row["lab"] = {"name": lab.name, "nodes": len(lab.nodes)}
            result["by_agent_ttl"][lab.agent_ttl] = row
    result["after"] = conditions()
    return result


async def _failover(lab: Lab, runs: int, units: int, leader: bool, hiccups: bool, fraction: float,
                    log: Log, wait_quiet: bool = True) -> dict[str, Any]:
    ttl = lab_ttl_seconds(lab)
    tag = new_tag("fo")
    async with Client(settings_for(lab)) as client:
        await client.wait_leader()
        engine_lease = await blocking(lease_ttl, lab, client.reg.keys.engine_leader)
    out: dict[str, Any] = {"agent_ttl_seconds": ttl, "engine_lease_ttl_seconds": engine_lease}
    rows = []
    for run in range(runs):
        if run and wait_quiet:  # the last victim registered again at the end of the last run
            await asyncio.sleep(quiet_seconds(ttl))
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
        row = await _leader_kill(lab, f"{tag}-l", ttl, engine_lease, units)
        log(f"agent_ttl {lab.agent_ttl}: leader kill: new leader after {row['kill_to_new_leader_seconds']:.2f}s, "
            f"new unit launched after {row['kill_to_new_unit_launched_seconds']:.2f}s, its units active elsewhere "
            f"after {row['kill_to_victims_units_launched_elsewhere_seconds']}s")
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
    async with Client(settings_for(lab, exclude=[victim])) as client:
        async with cleanup(_restorer(lab, victim), lambda: client.destroy(names)):
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


def _restorer(lab: Lab, node: Node):
    """A cleanup step: boot `node` again if it is down (a run that failed after the kill)."""

    async def restore() -> None:
        if not node.running:
            await _restore(lab, node)

    return restore


# ---------------------------------------------------------------------------- leader kill


async def _leader_kill(lab: Lab, prefix: str, ttl: float, engine_lease: float, count: int = 0) -> dict[str, Any]:
    async with Client(settings_for(lab)) as probe:
        leader = await probe.wait_leader()
    victim = node_of(lab, leader)
    moved_etcd_leader = await blocking(move_etcd_leader_off, lab, victim)
    name = f"{prefix}-new.service"
    olds = [f"{prefix}-{i}.service" for i in range(count)]  # some of them on the leader's node
    async with Client(settings_for(lab, exclude=[victim])) as client:
        reg = client.reg
        keys = reg.keys
        async with cleanup(_restorer(lab, victim), lambda: client.destroy([name, *olds])):
            on_victim = sorted(n for n, m in (await client.start_units(olds)).items() if m == victim.machine_id) \
                if olds else []
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

                async def moved() -> bool:
                    return bool(await client.launched(on_victim, not_on=victim.machine_id))

                if on_victim:  # the new leader's grace period holds them until the old machine is known lost
                    await client.wait(moved, engine_lease + 2 * ttl + 60, f"{on_victim} launched elsewhere")
                took_old = time.monotonic() - killed if on_victim else None
                await asyncio.sleep(0.1)
                took_leader = events.first(killed, lambda e: e.key == keys.engine_leader and e.value is not None
                                           and e.value.decode() != victim.machine_id)
                key_gone = events.first(killed, lambda e: e.key == keys.engine_leader and e.value is None)
                unit_placed = events.first(killed, is_placement(keys, name))
                on_dead = events.first(killed, lambda e: e.value is not None
                                       and e.key == keys.placement(victim.machine_id, name))
                expired = events.first(killed, lambda e: e.value is None and e.key == keys.machine_object(victim.machine_id))
                successor = await client.leader()
            load = load_average()
            copies = await blocking(running_copies, lab, [name])
            if len(copies[name]) != 1:
                raise BenchmarkError(f"{name}: active on {copies[name]} after the leader kill")
    if took_leader is None:
        raise BenchmarkError("the event log missed the new engine leader")
    return {
        "victim": victim.name,
        "new_leader": node_of(lab, successor).name if successor else None,
        "etcd_leader_moved_off_victim": moved_etcd_leader,
        "kill_to_leader_key_expired_seconds": _round(key_gone),
        "kill_to_new_leader_seconds": round(took_leader, 3),
        "kill_to_new_unit_placed_seconds": _round(unit_placed),
        "kill_to_new_unit_launched_seconds": round(took_unit, 3),
        "new_unit_first_placed_on_dead_machine": on_dead is not None,
        "kill_to_machine_expired_seconds": _round(expired),
        "new_unit_on": node_of(lab, placed[name]).name,
        "units_on_victim": len(on_victim),
        "kill_to_victims_units_launched_elsewhere_seconds": _round(took_old),
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
        async with cleanup(lambda: client.destroy(names)):
            await client.start_units(names)
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
                moved_leader = kind == "node_partitioned" and await blocking(move_etcd_leader_off, lab, node)
                if moved_leader:  # etcd extended every lease; keep-alives undo it
                    await asyncio.sleep(ttl / 3 + 0.5)
                etcd_leader = await blocking(etcd_leader_node, lab)
                placed = {n: p.machine_id for n, p in (await client.reg.placements()).items() if n in names}
                facts = {"engine_leader": node.machine_id == await client.wait_leader(),
                         "etcd_raft_leader": etcd_leader is not None and etcd_leader.name == node.name,
                         "units_on_node": sum(1 for m in placed.values() if m == node.machine_id),
                         "etcd_leader_moved_off_first": moved_leader}
                row = await _hiccup(lab, client, names, node, act, undo, hold, ttl, f"{prefix}-b{len(out)}.service")
                row.update(facts)
                verdict = "no unit moved" if row["no_unit_moved"] else \
                    f"UNITS MOVED: {row['units_moved']}, machines expired: {row['machines_expired']}"
                if row["units_restarted"]:
                    verdict += f"; {len(row['units_restarted'])} units restarted in place"
                log(f"agent_ttl {lab.agent_ttl}: {kind} on {node.name} for {hold:.1f}s: {verdict}")
                out[kind] = row
    return out


async def _hiccup(lab: Lab, client: Client, names: list[str], node: Node, act, undo, hold: float, ttl: float,
                  barrier: str) -> dict[str, Any]:
    reg = client.reg
    keys = reg.keys
    ours = set(names)
    before = {n: p.machine_id for n, p in (await reg.placements()).items() if n in ours}
    pids_before = await blocking(_main_pids, lab, before)
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
        async with cleanup(lambda: client.destroy([barrier])):
            await client.start_units([barrier])  # the engine and an agent ran passes since
        ended = time.monotonic()
        await asyncio.sleep(0.1)

        def placement_of(e: WatchEvent) -> tuple[str, str] | None:
            if not e.key.startswith(keys.schedule):
                return None
            machine, _, name = e.key[len(keys.schedule):].partition("/")
            return (machine, name) if name in ours else None

        def machine_gone(e: WatchEvent) -> bool:
            return e.value is None and e.key.startswith(keys.machines) and e.key.endswith("/object")

        changes = [(e, placement_of(e)) for e in events.between(started, ended, lambda e: placement_of(e) is not None)]
        expired = events.between(started, ended, machine_gone)
    # an agent that stopped its units to be safe starts them again: wait for that
    try:
        await client.wait(lambda: client.launched(names), 30, "the units launched again")
        not_running = []
    except BenchmarkError:
        infos = await client.infos()
        not_running = sorted(n for n in names if infos.get(n) is None or infos[n].current_state != "launched")
    after = {n: p.machine_id for n, p in (await reg.placements()).items() if n in ours}
    moved = {n for n in names if after.get(n) != before.get(n)}
    moved |= {name for e, (machine, name) in changes if e.value is None or machine != before.get(name)}
    pids_after = await blocking(_main_pids, lab, after)
    restarted = sorted(n for n in names if n not in moved and pids_after.get(n) != pids_before.get(n))
    return {
        "node": node.name,
        "held_seconds": round(held, 3),
        "schedule_events": [f"{'DELETE' if e.value is None else 'PUT'} {_node_name(lab, m)}/{n}" for e, (m, n) in changes],
        "units_moved": sorted(moved),
        "units_restarted": restarted,
        "restarted_on": sorted({_node_name(lab, before[n]) for n in restarted if n in before}),
        "not_running_again": not_running,
        "machines_expired": sorted({_node_name(lab, e.key[len(keys.machines):].partition("/")[0]) for e in expired}),
        "no_unit_moved": not moved and not expired,
        "ok": not moved and not expired and not restarted and not not_running,
        "load_average": load_average(),
    }


def _node_name(lab: Lab, machine_id: str) -> str:
    try:
        return node_of(lab, machine_id).name
    except BenchmarkError:
        return machine_id[:8]


def _main_pids(lab: Lab, placed: dict[str, str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, machine in placed.items():
        try:
            out[name] = service_pid(node_of(lab, machine), name)
        except FleetError:  # no such node or unit, or the node is down
            out[name] = None
    return out


def _last(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
