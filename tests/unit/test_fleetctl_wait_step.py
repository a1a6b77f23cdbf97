"""fleetctl/fast_http.py until_next_check: one wait between two checks of a blocking command,
shared by the API client and the fast path."""

from __future__ import annotations

import time

from fleetctl.fast_http import LONG_POLL, until_next_check


def test_a_passed_deadline_ends_the_wait_without_asking():
    asked = []
    assert until_next_check(lambda s, h: asked.append(s) or 9, 5, time.monotonic() - 0.1, iter([1.0])) == (False, 5)
    assert asked == []


def test_the_feed_answers_the_next_revision_without_sleeping():
    asked = []
    began = time.monotonic()
    go_on, since = until_next_check(lambda s, h: asked.append((s, h)) or s + 3, 7, None, iter([5.0]))
    assert (go_on, since) == (True, 10)
    assert asked == [(7, LONG_POLL)]  # no deadline: the longest hold
    assert time.monotonic() - began < 1.0  # the 5 s delay was not slept


def test_the_hold_never_outlasts_the_deadline():
    holds = []
    until_next_check(lambda s, h: holds.append(h) or s, 1, time.monotonic() + 2.0, iter([5.0]))
    assert holds and 0 < holds[0] <= 2.0


def test_without_a_feed_it_sleeps_the_next_delay_and_keeps_none():
    began = time.monotonic()
    assert until_next_check(lambda s, h: None, None, None, iter([0.05, 9.0])) == (True, None)
    assert 0.04 <= time.monotonic() - began < 1.0
    # a feed that goes away (None) falls back to the delay, capped by the deadline
    began = time.monotonic()
    assert until_next_check(lambda s, h: None, 3, time.monotonic() + 0.1, iter([9.0])) == (True, None)
    assert time.monotonic() - began < 1.0
