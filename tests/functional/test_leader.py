"""The engine leader on a 3-node lab: killing the leader's node elects a new leader within the
lease TTL and never places a unit twice; stopping fleetd on the leader hands leadership over
at once. Prints the leader failover time.

The leader is read where the engines keep it, `<prefix>lease/engine-leader` (etcdctl). Every
lab node runs an etcd member. Before the kill, etcd's raft leader is moved off the victim
(`etcdctl move-leader`): when etcd's own leader dies too, etcd elects a new one and renews every
lease, which adds an election timeout plus a full TTL to the takeover (5.2-5.7 s measured
with a 3 s engine lease). That case is etcd's semantics, not the engine's; the second kill test
covers it with a bound of two leases plus an election.
"""

from __future__ import annotations

import time

import pytest

from _functional import unit_body, wait_for

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True, agent_ttl="3s")

SLACK = 2.0  # etcd expiry check, a follower reconnecting its watch, its campaign, polling


def new_leader(fleet, old: str):
    return lambda: (lambda now: now if now and now != old else None)(fleet.leader())


def test_leader_kill_elects_a_new_leader_without_duplicate_placement(fleet):
    took, lease = _kill_the_leader(fleet, etcd_leader_too=False)
    print(f"\nFIGURE engine leader failover after killing the leader's node: {took:.1f}s "
          f"(engine lease {lease:g}s)")


def test_leader_kill_with_etcd_leader(fleet):
    """The same with etcd's raft leader on the victim: etcd's election renews the leases."""
    took, lease = _kill_the_leader(fleet, etcd_leader_too=True)
    print(f"\nFIGURE engine leader failover when the leader's node also held etcd's raft leader: "
          f"{took:.1f}s (engine lease {lease:g}s)")


def _kill_the_leader(fleet, etcd_leader_too: bool) -> tuple[float, float]:
    leader = wait_for("an engine leader", fleet.leader)
    victim = fleet.node_of(leader)
    lease = fleet.engine_lease_ttl()
    if etcd_leader_too:
        fleet.etcd_leader_on(victim)
        bound = 2 * lease + 2.0 + SLACK  # election timeout, then a renewed full lease
    else:
        fleet.etcd_leader_off(victim)
        bound = lease + SLACK
    moved = time.monotonic()
    names = [f"lead.{i}.service" for i in range(6)]
    fleet.ctl("start", *[fleet.write(n, unit_body(n)) for n in names])
    before = fleet.single(fleet.wait_active(6))
    assert fleet.leader() == leader
    since = fleet.revision()
    # setup, not a check: a raft leader change makes etcd extend every lease; the engine
    # leader's next keep-alive (every lease/3) brings its lease back to exactly the TTL
    time.sleep(max(0.0, moved + lease / 3 + 0.5 - time.monotonic()))

    killed = time.monotonic()
    victim.kill()
    successor = wait_for("a new engine leader", new_leader(fleet, leader), timeout=lease + 20, interval=0.1)
    took = time.monotonic() - killed
    assert successor != victim.machine_id
    assert took <= bound, f"new leader after {took:.1f}s (engine lease {lease:g}s)"

    fleet.wait_machines(2, timeout=30)
    after = wait_for("the victim's units active elsewhere",
                     lambda: (lambda a: a if len(a) == 6 and victim.machine_id not in a.values() else None)(
                         fleet.single(fleet.active())), timeout=30)
    assert {n: m for n, m in after.items() if before[n] != victim.machine_id} == \
        {n: m for n, m in before.items() if m != victim.machine_id}
    fleet.wait_runs_once(names)
    most = fleet.most_placements(since)
    assert set(most) >= set(names)
    assert all(most[n] == 1 for n in names), f"a unit was placed on two machines at once: {most}"
    assert {n: len(m) for n, m in fleet.placements().items() if n in names} == dict.fromkeys(names, 1)
    return took, lease


def test_fleetd_stop_on_the_leader_hands_over_at_once(fleet):
    leader = wait_for("an engine leader", fleet.leader)
    node = fleet.node_of(leader)
    held_by = fleet.engine_lease()
    lease = fleet.lease_time_to_live(held_by)[0]
    started = time.monotonic()
    node.stop_fleetd()
    wait_for("a new engine leader", new_leader(fleet, leader), timeout=lease + 10, interval=0.05)
    took = time.monotonic() - started
    remaining = fleet.lease_time_to_live(held_by)[1]
    # Without a resign the key would stay until the old lease runs out: a successor seen while
    # that lease still lives proves the resign; so does one seen sooner than the lease could
    # expire after the stop began (keep-alives every TTL/3). Either holds at once on a quiet
    # machine; on a loaded one (CI) the stop alone can take longer than 0.6 TTL.
    assert remaining > 0 or took < lease * 0.6, (
        f"leadership handed over only after {took:.1f}s, when the old leader's lease had expired "
        f"(lease {lease:g}s)")
    node.start_fleetd()
    fleet.ctl("start", fleet.write("after.service", unit_body("after")))
    fleet.wait_active(1)
