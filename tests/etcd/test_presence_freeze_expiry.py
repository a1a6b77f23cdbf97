"""Machine presence against a real etcd frozen (SIGSTOP) for longer than the TTL: `lost` is set
no later than the moment etcd may expire the lease (no unit may run twice), and the machine
registers again once etcd is back (see test_presence_freeze.py; tests/etcd/_freeze.py)."""

from __future__ import annotations

import asyncio
import time

from _freeze import own_registry  # noqa: F401  (a fixture)
from _freeze import AnsweredKeepalives, freeze_before_next_keepalive, running
from fleetd.model import Machine
from fleetd.presence import Presence


async def test_a_freeze_longer_than_the_ttl_sets_lost_before_etcd_may_expire_the_lease(
        own_etcd, own_registry, tmp_path):
    ttl = 2.0
    presence = Presence(own_registry, Machine("b2" * 16, "10.0.0.2"), ttl, tmp_path)
    await presence.register()
    lease = presence.lease_id
    with AnsweredKeepalives(own_registry) as calls:
        async with running(presence, own_etcd) as watch:
            frozen_at = await freeze_before_next_keepalive(presence, own_etcd)
            await asyncio.sleep(ttl + 1.0)
            assert len(watch.events) == 1, "lost not set although etcd was frozen for longer than the TTL"
            seen_at, _ = watch.events[0]
            # etcd renewed the lease when it received the last answered keep-alive, after it was
            # sent: it may expire from that sending + TTL on, and lost must be set by then (5 ms
            # polling and event-loop slack allowed); nor much earlier (that would be no tolerance;
            # presence takes the sending time a task switch before this recorder does)
            deadline = calls.deadline()
            assert deadline <= frozen_at + ttl
            assert seen_at <= deadline + 0.1, f"lost set {seen_at - deadline:.3f}s after the lease's deadline"
            assert seen_at >= deadline - 0.25, f"lost set {deadline - seen_at:.3f}s before the lease's deadline"
            assert not presence.registered.is_set()
            own_etcd.resume()  # (running() resumes it should the test fail before)
            # etcd expires the lease once it runs again: the machine registers anew
            until = time.monotonic() + 15
            while not presence.registered.is_set():
                assert time.monotonic() < until, "did not register again after etcd came back"
                await asyncio.sleep(0.05)
            assert presence.lease_id != lease and not presence.lost.is_set()
            assert await own_registry.get_machine(presence.machine.id) is not None
