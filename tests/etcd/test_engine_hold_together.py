"""No stampede, machines lost together (fleetd/engine/hold.py's lone_loss_proven) against a
real etcd (tests/etcd/_hold_cluster.py): two machines cut off at one moment lose their leases
less than a keep-alive interval apart, and the first one's loss proves nothing while the
other's lease is as old as its own. (A module of its own: it waits out a 4 s lease while the
other hold modules wait on other xdist workers.)"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from _hold_cluster import Cluster
from fleetd.model import Machine


async def test_machines_lost_together_do_not_move_early(etcd_settings):
    """Two of four machines are cut off at one moment (no disruption: 2 of 4), one of them had
    renewed its lease 0.8 s before the other (less than a keep-alive interval of 1.2 s at a
    TTL of 4 s; 1.67 s at 5 s, what it ran at until session 9): when the first one's lease expires, the second one's is about to, so nothing
    moves before the settle time; once both vanished, each waits for its settle time."""
    async with Cluster(etcd_settings, ttl=4.0) as c:
        healthy = [await c.add_agent(i) for i in (1, 2)]
        lost = [Machine(f"{i:x}" * 32, f"10.0.0.{i}") for i in (3, 4)]
        leases = []
        for machine in lost:
            leases.append(await c.reg.grant_lease(4.0))
            await c.reg.register_machine(machine, leases[-1])
        c.engine.hold_policy = replace(c.engine.hold_policy, grace=0.5, settle=600.0)
        before = await c.start(8)
        assert {p.machine_id for p in before.values()} == {m.machine.id for m in healthy} | {m.id for m in lost}
        await c.reg.keepalive(leases[0])  # the last keep-alives of the two, 0.8 s apart
        await asyncio.sleep(0.8)
        await c.reg.keepalive(leases[1])
        await c.wait_registered(3)  # the first one vanished
        await asyncio.sleep(0.3)
        assert c.asked == sorted([m.machine.id for m in healthy] + [lost[1].id]), "the engine did not ask"
        assert await c.reg.placements() == before, "units of machines lost together moved before the settle time"
        await c.wait_registered(2)
        await asyncio.sleep(1.0)
        assert await c.reg.placements() == before
        assert c.engine.hold.held == {m.id for m in lost}
