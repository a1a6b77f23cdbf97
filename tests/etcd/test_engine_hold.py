"""No stampede (fleetd/engine/hold.py): the pure hold decision, what it leaves of a reconcile
pass, hypothesis properties over the real scheduler, and the engine loop against a real etcd
with simulated agents (tests/etcd/_hold_cluster.py): three of four machines vanish at once and
nothing moves. The lone lost machine's evidence is tested in test_engine_hold_lone.py (its units
move at once when every other lease is fresh, and not when another agent was cut off lately)
and test_engine_hold_together.py (not when another machine's lease is as old as its own): one
module each, so that xdist's workers wait through their TTLs at the same time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from hypothesis import given, settings, strategies as st

from _depth import examples
from _hold_cluster import Cluster, unit
from fleetd.engine.hold import HoldPolicy, HoldState, policy_for, restrain, with_ghosts
from fleetd.engine.scheduler import reconcile
from fleetd.model import ClusterSnapshot, Machine, Placement

P = HoldPolicy(grace=10.0, settle=4.0)
M = {i: Machine(c * 32) for i, c in enumerate("abcd")}


def present(*ids: int) -> dict[str, Machine]:
    return {M[i].id: M[i] for i in ids}


def snap(units, machines, placed: dict[str, int]) -> ClusterSnapshot:
    by_name = {u.name: u for u in units}
    placements = {n: Placement(n, M[i].id, by_name[n].hash, by_name[n].desired_state) for n, i in placed.items()}
    return ClusterSnapshot(1, by_name, machines, placements)


def schedule(snapshot: ClusterSnapshot, hold) -> dict[str, str]:
    decisions = restrain(reconcile(with_ghosts(snapshot, hold)), snapshot, hold)
    return {n: p.machine_id for n, p in decisions.apply(snapshot.placements).items()}


def test_policy_for_the_default_ttl():
    p = policy_for(5.0)
    assert p.grace == 10.0 and abs(p.settle - (5.0 / 3 + 2.0)) < 1e-9


def test_one_machine_vanishing_is_held_for_settle_then_released():
    s, h = HoldState().step(present(0, 1, 2, 3), [], 0.0, P)
    assert not h.held and not h.in_grace
    s, h = s.step(present(0, 1, 2), [], 10.0, P)
    assert h.held == {M[3].id} and not h.disrupted and h.wake_at == 14.0
    s, h = s.step(present(0, 1, 2), [], 13.9, P)
    assert h.held == {M[3].id}
    s, h = s.step(present(0, 1, 2), [], 14.0, P)
    assert not h.held and M[3].id not in s.known  # released: forgotten


def test_machines_vanishing_a_few_moments_apart_are_one_disruption():
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P)
    s, h = s.step(present(0, 2, 3), [], 10.0, P)
    assert not h.disrupted
    s, h = s.step(present(0, 3), [], 11.0, P)
    assert not h.disrupted  # 2 of 4: not more than 55 %
    s, h = s.step(present(0), [], 12.0, P)
    assert h.disrupted and h.held == {M[1].id, M[2].id, M[3].id}
    s, h = s.step(present(0), [], 1000.0, P)  # held for as long as the disruption lasts
    assert h.held == {M[1].id, M[2].id, M[3].id}
    s, h = s.step(present(0, 1, 2), [], 1001.0, P)  # two are back: no more disruption...
    assert not h.disrupted and h.held == {M[3].id} and h.wake_at == 1000.0 + P.settle
    s, h = s.step(present(0, 1, 2), [], 1000.0 + P.settle, P)  # ...released settle seconds later
    assert not h.held


def test_everybody_vanishing_is_held():
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P)
    s, h = s.step({}, [], 5.0, P)
    assert h.disrupted and len(h.held) == 4
    s, h = s.step(present(0, 1, 2, 3), [], 50.0, P)  # etcd back, everybody registered again
    assert not h.held and not h.disrupted


def test_grace_after_leadership_holds_machines_named_by_the_schedule():
    s = HoldState().gained_leadership(100.0, P)
    s, h = s.step(present(0), [M[0].id, M[1].id], 100.0, P)
    assert h.in_grace and h.held == {M[1].id} and h.wake_at == 110.0
    s, h = s.step(present(0, 1), [M[0].id, M[1].id], 101.0, P)  # it registered: grace over
    assert not h.in_grace and not h.held


def test_grace_ends_at_once_when_nothing_is_missing():
    s = HoldState().gained_leadership(100.0, P)
    _, h = s.step(present(0, 1), [M[0].id], 100.0, P)
    assert not h.in_grace and not h.held


def test_grace_runs_out():
    s = HoldState().gained_leadership(100.0, P)
    s, h = s.step(present(0), [M[1].id], 100.0, P)
    assert h.in_grace and h.held == {M[1].id}
    s, h = s.step(present(0), [M[1].id], 110.0, P)
    assert not h.in_grace and not h.held  # vanished since 100, settle is 4 s: released


def test_restrain_keeps_units_on_held_machines_and_lets_the_user_act():
    units = [unit("a.service"), unit("b.service"), unit("c.service", desired="inactive"), unit("d.service")]
    snapshot = snap(units, present(0, 1), {"a.service": 2, "b.service": 0, "c.service": 2})
    s, _ = HoldState().step(present(0, 1, 2), [], 0.0, P)
    _, h = s.step(present(0, 1), [], 1.0, P)
    assert h.held == {M[2].id}
    after = schedule(snapshot, h)
    assert after["a.service"] == M[2].id  # stays on the held machine
    assert "c.service" not in after  # the user made it inactive: unplaced all the same
    assert after["d.service"] in (M[0].id, M[1].id)  # new units go to live machines only
    # without the hold, a moves
    assert schedule(snapshot, type(h)())["a.service"] != M[2].id


def test_restrain_in_grace_places_nothing_new():
    units = [unit("a.service"), unit("new.service")]
    snapshot = snap(units, present(0), {"a.service": 1})
    s = HoldState().gained_leadership(0.0, P)
    _, h = s.step(present(0), [M[1].id], 0.0, P)
    decisions = restrain(reconcile(with_ghosts(snapshot, h)), snapshot, h)
    assert not decisions.places and not decisions.unplaces
    assert "new.service" in decisions.unschedulable and "grace" in decisions.unschedulable["new.service"]


names = st.lists(st.sampled_from([f"u{i}.service" for i in range(12)]), unique=True, min_size=1, max_size=12)


@settings(max_examples=examples(150), deadline=None)
@given(names, st.data())
def test_no_unit_leaves_a_held_machine(unit_names, data):
    units = [unit(n, xfleet=data.draw(st.sampled_from(["", "Conflicts=u1*", "MachineOf=u0.service"])))
             for n in unit_names]
    placed = {n: data.draw(st.integers(0, 3)) for n in unit_names if data.draw(st.booleans())}
    alive = data.draw(st.lists(st.integers(0, 3), unique=True))
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P)
    now = data.draw(st.floats(0.0, 100.0))
    _, h = s.step(present(*alive), [M[i].id for i in placed.values()], now, P)
    snapshot = snap(units, present(*alive), placed)
    after = schedule(snapshot, h)
    for name, i in placed.items():
        if M[i].id in h.held:
            assert after.get(name) == M[i].id, f"{name} left held machine {i}"
    for name, machine_id in after.items():
        if name not in placed or snapshot.placements[name].machine_id != machine_id:
            assert machine_id not in h.held, f"{name} newly placed on a held machine"
    if h.disrupted:
        assert len(h.held) == 4 - len(alive)


# ------------------------------------------------------------------ the engine loop, real etcd

async def test_machine_leases_as_etcd_has_them(etcd_settings):
    async with Cluster(etcd_settings) as c:
        a = [await c.add_agent(i) for i in (1, 2)]
        leases = await c.reg.machine_leases([x.machine.id for x in a] + ["9" * 32], 10)
        assert set(leases) == {a[0].machine.id, a[1].machine.id}  # an unknown machine is left out
        for left, granted in leases.values():
            assert granted == 2 and 0 <= left <= 2
        assert await c.reg.machine_leases([x.machine.id for x in a], 1) is None  # too many to ask


async def test_three_of_four_machines_vanishing_at_once_move_nothing(etcd_settings):
    async with Cluster(etcd_settings) as c:
        a = [await c.add_agent(i) for i in (1, 2, 3, 4)]
        before = await c.start(8)
        assert sorted(Counter(p.machine_id for p in before.values()).values()) == [2, 2, 2, 2]
        for agent in a[1:]:
            await agent.crash()
        await c.wait_registered(1)
        await asyncio.sleep(c.engine.hold_policy.settle + 1.0)
        assert await c.reg.placements() == before, "units of machines that vanished together were moved"
        assert c.engine.hold.disrupted
        for i in (2, 3, 4):  # they come back (etcd was out, say): no churn
            await c.add_agent(i)
        await asyncio.sleep(c.engine.hold_policy.settle)
        assert await c.reg.placements() == before
        await c.lose(c.agents[-1])  # one machine lost alone: its units move
        deadline = time.monotonic() + 20
        while any(p.machine_id == c.agents[-1].machine.id for p in (await c.reg.placements()).values()):
            assert time.monotonic() < deadline, "units of a lone lost machine did not move"
            await asyncio.sleep(0.1)
