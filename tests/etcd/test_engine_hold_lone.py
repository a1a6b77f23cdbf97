"""No stampede, the lone lost machine (fleetd/engine/hold.py's lone_loss_proven, the engine's
evidence in fleetd/engine/evidence.py) against a real etcd with simulated agents
(tests/etcd/_hold_cluster.py): its units move at once when every other lease is fresh and every
agent has long been in touch with etcd, not when another agent was cut off lately; a new leader
in its grace period moves a lost old leader machine's units on that evidence. The lost machine's
lease is revoked (what etcd does when it expires): the engine's decision is the check, not the
wait for the TTL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from _hold_cluster import Cluster
from fleetd.model import Machine


async def test_a_lone_lost_machine_moves_at_once_when_every_other_lease_is_fresh(etcd_settings):
    # TTL 5 s: a lease renewed every 1.67 s has 3 s left at least, well past the bound of
    # 1.67 + 0.5 s (at TTL 2 s a keep-alive 0.3 s late on a loaded machine keeps the settle)
    async with Cluster(etcd_settings, ttl=5.0) as c:
        a = [await c.add_agent(i) for i in (1, 2, 3, 4)]
        c.engine.hold_policy = replace(c.engine.hold_policy, grace=0.5, settle=600.0)  # only evidence moves them now
        before = await c.start(8)
        await c.lose(a[3])
        deadline = time.monotonic() + 20
        while True:
            after = await c.reg.placements()
            if len(after) == 8 and not any(p.machine_id == a[3].machine.id for p in after.values()):
                break  # (a move may be written as an unplacement, then a placement)
            assert time.monotonic() < deadline, "the units of a lone lost machine waited for the settle time"
            await asyncio.sleep(0.1)
        assert c.asked == sorted(x.machine.id for x in a[:3])  # every other machine was asked
        assert {n for n, p in after.items() if p != before[n]} == {n for n, p in before.items()
                                                                  if p.machine_id == a[3].machine.id}


async def test_a_lone_lost_machine_waits_when_another_agent_was_cut_off_lately(etcd_settings):
    """Every lease is fresh, but one agent says it was cut off from etcd 1 s ago: it may have
    told the lost machine to hold on, so its units wait for the settle time. Once it says it
    has been in touch for long (the control), the same evidence moves them: at TTL 5 s the
    leases prove the loss (see above), so what held the units was the agent's answer."""
    async with Cluster(etcd_settings, ttl=5.0) as c:
        a = [await c.add_agent(i) for i in (1, 2, 3, 4)]
        c.engine.hold_policy = replace(c.engine.hold_policy, grace=0.5, settle=600.0)
        c.quiet[a[0].machine.id] = 1.0
        before = await c.start(8)
        await c.lose(a[3])
        await c.wait_registered(3)
        await c.wait_asks(2)  # asked twice (ASK_AGAIN apart): the first answer's pass is written
        assert c.asked == sorted(x.machine.id for x in a[:3])
        assert await c.reg.placements() == before
        assert c.engine.hold.held == {a[3].machine.id}
        c.quiet[a[0].machine.id] = 100.0
        deadline = time.monotonic() + 20
        while any(p.machine_id == a[3].machine.id for p in (await c.reg.placements()).values()):
            assert time.monotonic() < deadline, "the control: fresh leases and quiet agents did not move the units"
            await asyncio.sleep(0.1)


async def test_a_new_leader_moves_the_units_of_the_lost_old_leader_machine_in_grace(etcd_settings):
    """The engine leader's machine crashes: the new leader starts in its grace period, and the
    schedule names the lost machine. Once evidence proves it lost (every other lease fresh,
    every agent quiet), the grace ends and its units move (grace and settle 600 s here: only
    the evidence can move them)."""
    from fleetd.engine.evidence import LoneLossEvidence
    from fleetd.engine.leader import Engine

    async with Cluster(etcd_settings, ttl=5.0) as c:
        a = [await c.add_agent(i) for i in (1, 2, 3)]
        old = Machine("9" * 32, "10.0.0.9")  # the old leader's machine
        lease = await c.reg.grant_lease(5.0)
        await c.reg.register_machine(old, lease)
        c.engine.hold_policy = replace(c.engine.hold_policy, grace=0.5)
        before = await c.start(8)
        on_old = {n for n, p in before.items() if p.machine_id == old.id}
        assert on_old
        c.task.cancel()
        await asyncio.gather(c.task, return_exceptions=True)
        await c.engine.resign()
        await c.reg.revoke_lease(lease)  # it crashed (its lease expired)
        await c.wait_registered(3)
        new = Engine(c.engine.registry, "e" * 32, 0.5, lease_ttl=2.0, machine_ttl=5.0)
        new.hold_policy = replace(new.hold_policy, grace=600.0, settle=600.0)
        new.evidence = LoneLossEvidence(c.engine.registry, c.engine.evidence.ask_quiet)
        c.task = asyncio.create_task(new.run())
        deadline = time.monotonic() + 20
        while True:
            after = await c.reg.placements()
            if len(after) == 8 and not any(p.machine_id == old.id for p in after.values()):
                break  # (a move may be written as an unplacement, then a placement)
            assert time.monotonic() < deadline, "the lost old leader's units waited for the grace period"
            await asyncio.sleep(0.1)
        assert {n for n, p in after.items() if p != before[n]} == on_old
        assert not new.hold.in_grace
        assert c.asked == sorted(x.machine.id for x in a)
