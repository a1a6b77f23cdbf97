"""The pure timing of machine leases (fleetd/lease_timing.py)."""

from __future__ import annotations

import pytest

from fleetd.lease_timing import (
    MIN_HEADROOM,
    MIN_INTERVAL,
    KeepaliveTiming,
    keepalive_interval,
    lease_deadline,
    lease_ttl_seconds,
)


@pytest.mark.parametrize("ttl, interval", [(2, 0.5), (3, 0.7), (4, 1.2), (4.8, 1.6), (5, 5 / 3), (12, 4.0), (30, 10.0)])
def test_keepalive_interval(ttl, interval):
    assert keepalive_interval(ttl) == pytest.approx(interval)


@pytest.mark.parametrize("ttl", [x / 2 for x in range(4, 121)])  # 2 s .. 60 s
def test_a_cut_of_half_the_ttl_leaves_time_to_confirm_the_lease(ttl):
    interval = keepalive_interval(ttl)
    assert MIN_INTERVAL <= interval <= ttl / 3 + 1e-9  # never rarer than fleet's TTL/3
    headroom = ttl / 2 - interval  # after a cut of ttl/2 that began just before a keep-alive was due
    assert headroom >= min(MIN_HEADROOM, ttl / 2 - MIN_INTERVAL) - 1e-9, f"ttl {ttl}: {headroom:.2f}s left"
    if ttl >= 4.8:  # failover time and etcd load as with fleet's TTL/3
        assert interval == pytest.approx(ttl / 3)


def test_lease_ttl_seconds_matches_what_etcd_is_asked_for():
    assert [lease_ttl_seconds(t) for t in (0.5, 2.0, 2.4, 2.6, 5.0, 30.0)] == [2, 2, 2, 3, 5, 30]


def test_the_deadline_counts_from_the_sending():
    # etcd renews the lease when its leader receives the keep-alive, after it was sent
    assert lease_deadline(100.0, 5) == 105.0


@pytest.mark.parametrize("ttl", [2.0, 5.0, 30.0])
def test_keepalive_timing(ttl):
    timing = KeepaliveTiming.for_ttl(ttl, request_timeout=1.0)
    assert timing.interval == pytest.approx(keepalive_interval(ttl))
    assert timing.attempt_timeout == 1.0
    # during a cut of half the TTL, rounds of attempts on new connections have begun before
    # it heals, and one starts within half the headroom left after it
    assert timing.hedge <= ttl / 2
    assert timing.retry <= (ttl / 2 - timing.interval) / 2
    assert 0 < timing.retry <= timing.hedge <= timing.interval
    assert timing.lost_retry == 0.5
