"""No stampede (fleetd/engine/hold.py): the pure hold decision, what it leaves of a reconcile
pass, hypothesis properties over the real scheduler, and the engine loop against a real etcd
with simulated agents (three of four machines vanish at once: nothing moves; a lone lost
machine's units move at once when every other lease is fresh, and not when another machine's
lease is as old as its own, or another agent was cut off lately)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

from hypothesis import given, settings, strategies as st

from _depth import examples
from fleetd.engine.hold import HoldPolicy, HoldState, policy_for, restrain, with_ghosts
from fleetd.engine.scheduler import reconcile
from fleetd.model import ClusterSnapshot, DesiredState, Machine, Placement, Unit
from fleetd.unit.file import UnitFile

P = HoldPolicy(grace=10.0, settle=4.0)
M = {i: Machine(c * 32) for i, c in enumerate("abcd")}


def present(*ids: int) -> dict[str, Machine]:
    return {M[i].id: M[i] for i in ids}


def unit(name: str, desired: str = "launched", xfleet: str = "") -> Unit:
    text = "[Service]\nExecStart=/bin/sleep 1000\n" + (f"[X-Fleet]\n{xfleet}\n" if xfleet else "")
    return Unit(name, UnitFile.parse(text), DesiredState(desired))


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

class Cluster:
    """Simulated agents (TTL 2 s) and an engine with the lone-loss evidence wired: leases read
    from the real etcd, the agents' quiet times from `quiet` (by machine index; default long)."""

    def __init__(self, etcd_settings, ttl: float = 2.0):
        self.etcd_settings = etcd_settings
        self.ttl = ttl
        self.regs, self.agents = [], []
        self.quiet: dict[str, float | None] = {}
        self.reg = self.engine = self.task = None

    async def __aenter__(self) -> "Cluster":
        from fleetd.engine.evidence import LoneLossEvidence
        from fleetd.engine.leader import Engine
        from fleetd.registry import Registry

        self.reg = await Registry.connect(self.etcd_settings)
        engine_reg = await Registry.connect(self.etcd_settings)
        self.regs += [self.reg, engine_reg]
        self.engine = Engine(engine_reg, "f" * 32, 0.5, lease_ttl=2.0, machine_ttl=self.ttl)

        async def ask_quiet(peers):
            self.asked = sorted(peers)
            return {m: self.quiet.get(m, 100.0) for m in peers}

        self.asked: list[str] = []
        self.engine.evidence = LoneLossEvidence(engine_reg, ask_quiet)
        return self

    async def add_agent(self, i: int):
        from fleetd.registry import Registry
        from fleetlab.testing.simagent import SimulatedAgent

        r = await Registry.connect(self.etcd_settings)
        self.regs.append(r)
        agent = SimulatedAgent(r, Machine(f"{i:x}" * 32, f"10.0.0.{i}"), ttl=self.ttl)
        await agent.start()
        self.agents.append(agent)
        return agent

    async def start(self, units: int) -> dict:
        self.task = asyncio.create_task(self.engine.run())
        await self.reg.create_units([unit(f"u{i}.service") for i in range(units)])
        deadline = time.monotonic() + 15
        while len(placed := await self.reg.placements()) < units:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        return placed

    async def wait_registered(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(await self.reg.list_machines()) != count:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for agent in self.agents:
            await agent.crash()
        for r in self.regs:
            await r.close()


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
        await c.agents[-1].crash()  # one machine lost alone: its units move
        deadline = time.monotonic() + 20
        while any(p.machine_id == c.agents[-1].machine.id for p in (await c.reg.placements()).values()):
            assert time.monotonic() < deadline, "units of a lone lost machine did not move"
            await asyncio.sleep(0.1)


async def test_a_lone_lost_machine_moves_at_once_when_every_other_lease_is_fresh(etcd_settings):
    # TTL 5 s: a lease renewed every 1.67 s has 3 s left at least, well past the bound of
    # 1.67 + 0.5 s (at TTL 2 s a keep-alive 0.3 s late on a loaded machine keeps the settle)
    async with Cluster(etcd_settings, ttl=5.0) as c:
        a = [await c.add_agent(i) for i in (1, 2, 3, 4)]
        c.engine.hold_policy = replace(c.engine.hold_policy, grace=0.5, settle=600.0)  # only evidence moves them now
        before = await c.start(8)
        await a[3].crash()
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


async def test_machines_lost_together_do_not_move_early(etcd_settings):
    """Two of four machines are cut off at one moment (no disruption: 2 of 4), one of them had
    renewed its lease 0.8 s before the other (less than a keep-alive interval of 1.67 s at a
    TTL of 5 s): when the first one's lease expires, the second one's is about to, so nothing
    moves before the settle time; once both vanished, each waits for its settle time."""
    async with Cluster(etcd_settings, ttl=5.0) as c:
        healthy = [await c.add_agent(i) for i in (1, 2)]
        lost = [Machine(f"{i:x}" * 32, f"10.0.0.{i}") for i in (3, 4)]
        leases = []
        for machine in lost:
            leases.append(await c.reg.grant_lease(5.0))
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


async def test_a_lone_lost_machine_waits_when_another_agent_was_cut_off_lately(etcd_settings):
    """Every lease is fresh, but one agent says it was cut off from etcd 1 s ago: it may have
    told the lost machine to hold on, so its units wait for the settle time."""
    async with Cluster(etcd_settings) as c:
        a = [await c.add_agent(i) for i in (1, 2, 3, 4)]
        c.engine.hold_policy = replace(c.engine.hold_policy, grace=0.5, settle=600.0)
        c.quiet[a[0].machine.id] = 1.0
        before = await c.start(8)
        await a[3].crash()
        await c.wait_registered(3)
        await asyncio.sleep(2.0)
        assert c.asked, "the engine did not ask the agents"
        assert await c.reg.placements() == before
        assert c.engine.hold.held == {a[3].machine.id}


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
