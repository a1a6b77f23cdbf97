"""The pure decisions of fleetd/disruption.py: when an agent whose lease may have expired fences,
and when a set of lost machines is a disruption (the engine's unhealthy-zone rule)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fleetd.disruption import PeerAnswer, answer_for, disrupted, fence_decision

R, C, U = PeerAnswer.REACHES_ETCD, PeerAnswer.CUT_OFF, PeerAnswer.UNREACHABLE


@pytest.mark.parametrize("affected, known, expected", [
    (0, 4, False), (1, 4, False), (2, 4, False), (3, 4, True), (4, 4, True),
    (1, 1, True),  # a lone machine: nowhere else to go
    (1, 2, False), (2, 2, True),
    (1, 3, False), (2, 3, True),
    (5, 10, False), (6, 10, True),
    (0, 0, False),
])
def test_disrupted(affected, known, expected):
    assert disrupted(affected, known) is expected


@pytest.mark.parametrize("case, known, answers, fence", [
    # isolated machine: the others reach etcd
    ("isolated", "abcd", {"b": R, "c": R, "d": R}, True),
    ("one peer reaches etcd is enough", "abcd", {"b": C, "c": C, "d": R}, True),
    # total etcd outage (or quorum lost): everybody is cut off
    ("total outage", "abcd", {"b": C, "c": C, "d": C}, False),
    ("total outage, one peer down", "abcd", {"b": C, "c": C, "d": U}, False),
    # minority side of a partition: the peers on the other side do not answer
    ("minority side", "abcd", {"b": C, "c": U, "d": U}, True),
    # majority of machines cut off from etcd (etcd on the other side): hold, the engine holds too
    ("majority side cut off", "abcde", {"b": C, "c": C, "d": U, "e": U}, False),
    # a machine that reaches neither etcd nor its peers
    ("reaches nobody", "abcd", {"b": U, "c": U, "d": U}, True),
    ("no peer channel", "abcd", {}, True),
    ("lone machine", "a", {}, False),
    ("two machines, both cut off", "ab", {"b": C}, False),
    ("two machines, peer silent", "ab", {"b": U}, True),
    ("answers from strangers do not count", "ab", {"b": U, "x": C, "y": C}, True),
])
def test_fence_decision(case, known, answers, fence):
    verdict = fence_decision("a", set(known), answers)
    assert verdict.fence is fence, f"{case}: {verdict.reason}"
    assert verdict.reason


machines = st.lists(st.sampled_from("bcdefghij"), unique=True, max_size=8)


@settings(deadline=None)  # a loaded machine is no failure
@given(machines, st.data())
def test_a_reachable_peer_always_fences(peers, data):
    answers = {p: data.draw(st.sampled_from([R, C, U])) for p in peers}
    verdict = fence_decision("a", {"a", *peers}, answers)
    if R in answers.values():
        assert verdict.fence


@settings(deadline=None)  # a loaded machine is no failure
@given(machines, st.data())
def test_keeping_units_implies_the_engine_holds_them(peers, data):
    """Whenever an agent keeps its units past its lease, the machines known to be cut off are a
    disruption for the engine too, which then does not reschedule their units."""
    answers = {p: data.draw(st.sampled_from([R, C, U])) for p in peers}
    verdict = fence_decision("a", {"a", *peers}, answers)
    if not verdict.fence:
        cut_off = 1 + sum(1 for a in answers.values() if a is C)
        assert disrupted(cut_off, len(peers) + 1)
        assert R not in answers.values()


@settings(deadline=None)  # a loaded machine is no failure
@given(machines, st.data())
def test_more_evidence_of_an_outage_never_turns_keep_into_fence(peers, data):
    answers = {p: data.draw(st.sampled_from([C, U])) for p in peers}
    before = fence_decision("a", {"a", *peers}, answers)
    silent = [p for p, a in answers.items() if a is U]
    if silent and not before.fence:
        more = dict(answers, **{silent[0]: C})
        assert not fence_decision("a", {"a", *peers}, more).fence


def test_answer_for():
    assert answer_for(None, True, 100.0) is R
    assert answer_for(99.5, True, 100.0) is R  # a slow keep-alive: in doubt, the asker fences
    assert answer_for(98.0, True, 100.0) is C
    assert answer_for(None, False, 100.0) is C  # not registered: not reaching etcd
