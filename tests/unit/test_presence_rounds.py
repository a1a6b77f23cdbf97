"""Which etcd members a round of keep-alive attempts goes to (fleetd/presence.py: round_endpoints):
every member while the lease is at stake, one in turn while holding on or fenced (no storm of
new TLS connections queued in frozen etcd members, issue 13)."""

from __future__ import annotations

import pytest

from fleetd.presence import round_endpoints

E = ("https://a:2379", "https://b:2379", "https://c:2379")


@pytest.mark.parametrize("round_no", range(6))
def test_urgent_rounds_try_every_member(round_no):
    assert round_endpoints(E, round_no, urgent=True) == list(E)


def test_other_rounds_try_one_member_in_turn():
    seen = [round_endpoints(E, n, urgent=False) for n in range(1, 7)]
    assert all(len(s) == 1 for s in seen)
    assert {s[0] for s in seen[:3]} == set(E)  # every member within len(E) rounds
    assert seen[:3] == seen[3:]


def test_no_endpoints():
    assert round_endpoints((), 3, urgent=False) == []
