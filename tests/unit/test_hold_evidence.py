"""A lone lost machine's units move at once when evidence allows (fleetd/engine/hold.py:
lone_loss_proven, and HoldState.step with evidence): table tests and hypothesis properties.

The two things the evidence must never get wrong:
- a machine cut off at the same moment as the lost one (its lease expires within one keep-alive
  interval of the lost one's) is never taken for a machine that was not: the engine would move
  the units of machines that vanish together (a partition, an outage);
- a machine whose agent was cut off from etcd lately may have told the lost one to hold on
  (fleetd/disruption.py): its units must not move while it may keep them running.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from _depth import examples
from fleetd.disruption import STOP_MARGIN, quiet_seconds, settle_seconds
from fleetd.engine.hold import EVIDENCE_MARGIN, HoldState, Liveness, lone_loss_proven, policy_for
from fleetd.lease_timing import keepalive_interval
from fleetd.model import Machine

P5 = policy_for(5.0)  # lease_ttl 5, interval 1.67, settle 3.67, quiet 7.33
M = {i: Machine(c * 32) for i, c in enumerate("abcde")}
QUIET = 100.0  # an agent in touch with etcd for long


def present(*ids: int) -> dict[str, Machine]:
    return {M[i].id: M[i] for i in ids}


def fresh(asked_at: float, left: int = 4, quiet: float = QUIET, granted: int = 5) -> Liveness:
    return Liveness(asked_at, left, granted, quiet)


def test_policy_for_the_default_ttl_releases_early():
    assert P5.lease_ttl == 5 and abs(P5.interval - 5 / 3) < 1e-9
    assert P5.quiet == quiet_seconds(5.0) == 2 * settle_seconds(5.0)


@pytest.mark.parametrize("case, evidence, proven", [
    ("every other lease fresh, every agent quiet", {1: fresh(10.0), 2: fresh(10.0, left=3)}, True),
    ("a lease renewed just now", {1: fresh(10.0, left=5), 2: fresh(10.0, left=3)}, True),
    # lost at 10: a machine cut off with it has its lease expire before 10 + 1.67 (+ 0.5 margin)
    ("a lease that ends with the lost one's keep-alive interval", {1: fresh(10.0, left=2), 2: fresh(10.0)}, False),
    ("asked later: 2 s left at 10.2 still ends too soon", {1: fresh(10.2, left=2), 2: fresh(10.2)}, True),
    ("a lease already expired (not revoked yet)", {1: fresh(10.0, left=0), 2: fresh(10.0)}, False),
    ("a lease not found", {1: fresh(10.0, left=-1), 2: fresh(10.0)}, False),
    ("a lease granted with another TTL", {1: fresh(10.0, granted=30, left=29), 2: fresh(10.0)}, False),
    ("an agent cut off from etcd lately (it may have told the lost one to hold on)",
     {1: fresh(10.0, quiet=3.0), 2: fresh(10.0)}, False),
    ("an agent cut off now", {1: fresh(10.0, quiet=0.0), 2: fresh(10.0)}, False),
    ("an agent quiet just long enough", {1: fresh(10.0, quiet=P5.quiet), 2: fresh(10.0)}, True),
    ("an agent that did not answer", {1: Liveness(10.0, 4, 5, None), 2: fresh(10.0)}, False),
    ("a lease that could not be read", {1: Liveness(10.0, None, None, QUIET), 2: fresh(10.0)}, False),
    ("a machine nobody asked about", {1: fresh(10.0)}, False),
    ("evidence gathered before the machine vanished", {1: fresh(9.0), 2: fresh(9.0)}, False),
])
def test_lone_loss_proven(case, evidence, proven):
    by_id = {M[i].id: e for i, e in evidence.items()}
    assert lone_loss_proven(10.0, present(1, 2), by_id, P5) is proven, case


def test_no_early_release_without_a_lease_ttl():
    policy = policy_for(5.0).__class__(grace=10.0, settle=4.0)
    assert not lone_loss_proven(10.0, present(1), {M[1].id: fresh(10.0)}, policy)


# ------------------------------------------------------------------ HoldState.step with evidence

def test_a_lone_lost_machine_is_released_at_once_with_evidence():
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P5)
    s, h = s.step(present(0, 1, 2), [], 10.0, P5)
    assert h.held == {M[3].id} and h.ask == M[3].id  # the engine should gather evidence
    evidence = {M[i].id: fresh(10.05) for i in (0, 1, 2)}
    s, h = s.step(present(0, 1, 2), [], 10.1, P5, evidence)
    # proven; a machine cut off stopped its units at its lease deadline: STOP_MARGIN to do so
    assert h.held == {M[3].id} and h.ask is None and h.wake_at == 10.0 + STOP_MARGIN
    s, h = s.step(present(0, 1, 2), [], 10.0 + STOP_MARGIN, P5)  # the proof is remembered
    assert not h.held and M[3].id not in s.known and not s.early


def test_a_proven_machine_that_comes_back_is_forgotten():
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P5)
    s, _ = s.step(present(0, 1, 2), [], 10.0, P5)
    s, h = s.step(present(0, 1, 2), [], 10.1, P5, {M[i].id: fresh(10.05) for i in (0, 1, 2)})
    assert s.early
    s, h = s.step(present(0, 1, 2, 3), [], 10.2, P5)
    assert not h.held and not s.early
    s, h = s.step(present(0, 1, 2), [], 20.0, P5)  # lost again later: evidence needed again
    assert h.held == {M[3].id} and h.ask == M[3].id and h.wake_at == 20.0 + P5.settle


def test_a_second_machine_vanishing_before_the_move_brings_the_settle_back():
    s, _ = HoldState().step(present(0, 1, 2, 3, 4), [], 0.0, P5)
    s, _ = s.step(present(0, 1, 2, 4), [], 10.0, P5)
    s, h = s.step(present(0, 1, 2, 4), [], 10.1, P5, {M[i].id: fresh(10.05) for i in (0, 1, 2, 4)})
    assert h.wake_at == 10.0 + STOP_MARGIN
    s, h = s.step(present(0, 1, 2), [], 10.2, P5)
    assert h.held == {M[3].id, M[4].id} and h.wake_at == 10.0 + P5.settle


def test_an_old_lease_keeps_the_settle_time():
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P5)
    s, h = s.step(present(0, 1, 2), [], 10.0, P5)
    evidence = {M[0].id: fresh(10.05), M[1].id: fresh(10.05, left=1), M[2].id: fresh(10.05)}
    s, h = s.step(present(0, 1, 2), [], 10.1, P5, evidence)
    assert h.held == {M[3].id} and h.wake_at == 10.0 + P5.settle
    s, h = s.step(present(0, 1), [], 11.0, P5)  # and it was: machine 2 vanishes too
    assert h.held == {M[2].id, M[3].id} and h.ask is None
    s, h = s.step(present(0, 1), [], 10.0 + P5.settle, P5)
    assert h.held == {M[2].id}  # 2 of 4 is no disruption: each moves after its settle time


def test_two_vanished_machines_ask_for_nothing_and_ignore_evidence():
    s, _ = HoldState().step(present(0, 1, 2, 3, 4), [], 0.0, P5)
    s, h = s.step(present(0, 1, 2), [], 10.0, P5)
    assert h.ask is None and h.held == {M[3].id, M[4].id}
    s, h = s.step(present(0, 1, 2), [], 10.1, P5, {M[i].id: fresh(10.05) for i in (0, 1, 2)})
    assert h.held == {M[3].id, M[4].id}


def test_after_a_disruption_the_full_settle_applies_whatever_the_evidence():
    s, _ = HoldState().step(present(0, 1, 2, 3), [], 0.0, P5)
    s, h = s.step(present(0), [], 10.0, P5)
    s, h = s.step(present(0), [], 19.9, P5)
    assert h.disrupted
    s, h = s.step(present(0, 1, 2), [], 20.0, P5)  # two are back, one is missing
    assert not h.disrupted and h.held == {M[3].id} and h.ask is None
    s, h = s.step(present(0, 1, 2), [], 20.1, P5, {M[i].id: fresh(20.05) for i in (0, 1, 2)})
    assert h.held == {M[3].id} and h.wake_at == 19.9 + P5.settle


def test_in_grace_a_lone_missing_machine_proven_lost_ends_the_grace():
    """A new leader (the old one's machine crashed): the only machine the schedule names that is
    missing is the old leader's; once evidence proves it lost, nothing waits for it."""
    s = HoldState().gained_leadership(100.0, P5)
    s, h = s.step(present(0, 2), [M[0].id, M[1].id], 100.0, P5)
    assert h.in_grace and h.held == {M[1].id} and h.ask == M[1].id
    s, h = s.step(present(0, 2), [M[0].id, M[1].id], 100.1, P5, {M[i].id: fresh(100.05) for i in (0, 2)})
    assert not h.in_grace and h.held == {M[1].id} and h.wake_at == 100.0 + STOP_MARGIN
    s, h = s.step(present(0, 2), [M[0].id, M[1].id], 100.0 + STOP_MARGIN, P5)
    assert not h.in_grace and not h.held


def test_in_grace_evidence_that_proves_nothing_keeps_the_grace():
    s = HoldState().gained_leadership(100.0, P5)
    s, h = s.step(present(0, 2), [M[0].id, M[1].id], 100.0, P5)
    s, h = s.step(present(0, 2), [M[0].id, M[1].id], 100.1, P5,
                  {M[0].id: fresh(100.05), M[2].id: fresh(100.05, quiet=1.0)})  # just registered
    assert h.in_grace and h.held == {M[1].id} and h.wake_at == 110.0


def test_in_grace_two_missing_machines_ask_for_nothing():
    s = HoldState().gained_leadership(100.0, P5)
    s, h = s.step(present(0), [M[0].id, M[1].id, M[2].id], 100.0, P5)
    assert h.in_grace and h.ask is None
    _, h = s.step(present(0), [M[0].id, M[1].id, M[2].id], 100.1, P5, {M[0].id: fresh(100.05)})
    assert h.in_grace and h.held == {M[1].id, M[2].id}


# ------------------------------------------------------------------ properties

ttls = st.sampled_from([2, 3, 5, 10, 30])


@settings(max_examples=examples(400), deadline=None)
@given(ttls, st.data())
def test_a_machine_cut_off_with_the_lost_one_is_never_missed(ttl, data):
    """Timeline in etcd's clock. The lost machine renewed at 0 (its lease expires at ttl) and
    was cut off at T before its next keep-alive (one interval later, EVIDENCE_MARGIN late at
    most). Another machine cut off at the same moment renewed last at or before T. However
    late the engine sees the loss and asks, and whatever that machine's agent answers, the
    lone loss is never proven."""
    policy = policy_for(float(ttl))
    k = keepalive_interval(float(ttl))
    cut = data.draw(st.floats(0.0, k + EVIDENCE_MARGIN, exclude_max=True))
    last_renewal = data.draw(st.floats(-k, cut))
    lost_at = ttl + data.draw(st.floats(0.0, 3.0))  # etcd's expiry check, the watch, the pass
    asked_at = lost_at + data.draw(st.floats(0.0, 2.0))
    left = math.floor(last_renewal + ttl - asked_at)  # etcd rounds down
    together = Liveness(asked_at, max(-1, left), ttl, data.draw(st.none() | st.floats(0.0, 1000.0)))
    others = {M[1].id: together}
    for i in (2, 3):
        if data.draw(st.booleans()):  # healthy machines beside it change nothing
            others[M[i].id] = Liveness(asked_at, ttl, ttl, QUIET)
    assert not lone_loss_proven(lost_at, others, others, policy)


def test_an_expired_lease_proves_nothing():
    """Found by the property above (fast7, session 7): TTL 2, both machines renewed at 0 and
    were cut off; the loss seen at 2.0 and asked about at 4.0. The other machine's lease is gone
    too (etcd answers TTL -1), which once read as 'lasts until 3.0', i.e. exactly the bound,
    and its agent answered quiet for exactly `quiet`: the loss counted as lone."""
    policy = policy_for(2.0)
    bound = 2.0 + policy.interval + EVIDENCE_MARGIN
    gone = Liveness(4.0, -1, 2, policy.quiet)
    assert not lone_loss_proven(2.0, [M[1].id], {M[1].id: gone}, policy)
    # a live lease that lasts exactly to the bound is no proof either (it must last past it)
    at_bound = Liveness(bound - 1, 1, 2, policy.quiet)
    assert not lone_loss_proven(2.0, [M[1].id], {M[1].id: at_bound}, policy)
    past_bound = Liveness(bound - 0.5, 1, 2, policy.quiet)
    assert lone_loss_proven(2.0, [M[1].id], {M[1].id: past_bound}, policy)


@settings(max_examples=examples(300), deadline=None)
@given(ttls, st.floats(0.0, 1000.0), st.data())
def test_a_machine_lately_cut_off_always_keeps_the_settle(ttl, lost_at, data):
    policy = policy_for(float(ttl))
    asked_at = lost_at + data.draw(st.floats(0.0, 2.0))
    quiet = data.draw(st.floats(0.0, policy.quiet, exclude_max=True))
    others = {M[1].id: Liveness(asked_at, ttl, ttl, quiet), M[2].id: Liveness(asked_at, ttl, ttl, QUIET)}
    assert not lone_loss_proven(lost_at, others, others, policy)


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from([5, 10, 30]), st.data())
def test_healthy_machines_prove_a_lone_loss(ttl, data):
    """Machines that renew every keep-alive interval (up to EVIDENCE_MARGIN / 2 late) and whose
    agents are quiet prove it, asked up to a second after the loss was seen (TTL 5 s and up)."""
    policy = policy_for(float(ttl))
    k = keepalive_interval(float(ttl))
    lost_at = data.draw(st.floats(0.0, 1000.0))
    asked_at = lost_at + data.draw(st.floats(0.0, 1.0))
    others = {}
    for i in range(1, data.draw(st.integers(1, 4)) + 1):
        renewed = asked_at - data.draw(st.floats(0.0, k + EVIDENCE_MARGIN / 2))
        others[M[i].id] = Liveness(asked_at, math.floor(renewed + ttl - asked_at), ttl, QUIET)
    assert lone_loss_proven(lost_at, others, others, policy)
