"""The pure decisions of fleetd/disruption.py: when an agent whose lease may have expired fences,
and when a set of lost machines is a disruption (the engine's unhealthy-zone rule)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fleetd.disruption import (PEER_POLL, PEER_TIMEOUT, STOP_MARGIN, PeerAnswer, answer_for, disrupted, fence_decision,
                               fence_grace, hold_until, settle_seconds)

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
    # only a peer that reaches etcd is evidence against holding on; silence is not
    assert verdict.peer_reaches is (R in {a for m, a in answers.items() if m in known})


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


# ---------------------------------------------------------------- holding on (hold_until)

TTL5 = 5.0
SETTLE = settle_seconds(TTL5)  # 3.67 s
GRACE = fence_grace(TTL5)  # 1.17 s


@pytest.mark.parametrize("case, last_hold, reach, now, keeps", [
    # the CI failure (issue 13, test_outage[60]): holding through a total etcd outage, one round
    # in which the peers were merely silent (a loaded machine, an answer past PEER_TIMEOUT) made
    # the machine fence at once and restart its units in place; silence proves nothing
    ("a silent round right after a hold verdict keeps the units", 100.0, None, 100.6, True),
    ("silence for less than settle - margin keeps them", 100.0, None, 100.0 + SETTLE - STOP_MARGIN - 0.01, True),
    # a machine that hears nobody for that long fences: it may be the one cut off from everything
    ("silence up to settle - margin after the last hold fences", 100.0, None, 100.0 + SETTLE - STOP_MARGIN, False),
    ("long silence fences", 100.0, None, 130.0, False),
    # a peer reaches etcd again: this machine may be the one left behind, fence_grace to confirm
    ("a peer reaching etcd leaves fence_grace", 100.0, 100.5, 100.5 + GRACE - 0.01, True),
    ("and then fences", 100.0, 100.5, 100.5 + GRACE, False),
    ("a newer hold verdict does not cancel a peer's reach", 110.0, 100.5, 100.5 + GRACE, False),
    ("a reach heard long ago still bounds the hold", 200.0, 100.0, 150.0, False),
])
def test_hold_until(case, last_hold, reach, now, keeps):
    assert (now < hold_until(last_hold, reach, TTL5)) is keeps, case


@settings(deadline=None)
@given(st.floats(0, 1e4), st.one_of(st.none(), st.floats(0, 1e4)), st.floats(1, 60))
def test_hold_until_never_outlasts_the_engine(last_hold, reach, ttl):
    """The engine releases a vanished machine's units `settle` after the disruption ends, and it
    had not ended when the last hold verdict was asked (its peers were cut off then), nor before
    a peer reached etcd minus the time to hear it: the machine has stopped by then."""
    until = hold_until(last_hold, reach, ttl)
    assert until <= last_hold + settle_seconds(ttl) - STOP_MARGIN
    if reach is not None:
        assert until <= reach - PEER_POLL - PEER_TIMEOUT + settle_seconds(ttl) - STOP_MARGIN + 1e-9
