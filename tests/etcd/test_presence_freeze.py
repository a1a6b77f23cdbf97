"""Machine presence against a real etcd that is frozen (SIGSTOP), as an etcd member is when its
host stalls: for half the TTL the lease stays confirmed and `lost` is never set (the agent
would stop and restart its units for nothing); for longer than the TTL `lost` is set no later
than the moment etcd may expire the lease (no unit may run twice), and the machine registers
again once etcd is back.

The freeze starts just before a keep-alive is due, the worst moment: the last answered one is
as old as it gets. Each test has an etcd of its own (a frozen or expired one is not shared).
This module: the freeze of half the TTL; test_presence_freeze_expiry.py the longer one
(tests/etcd/_freeze.py has what they share).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from _freeze import own_registry  # noqa: F401  (a fixture)
from _freeze import freeze_before_next_keepalive, running
from fleetd.errors import RegistryUnavailable
from fleetd.model import Machine
from fleetd.presence import Presence
from fleetlab.testing.etcd import free_port


@pytest.mark.parametrize("ttl", [2.0, pytest.param(5.0, marks=pytest.mark.deep)])  # 5 s: the full suite
async def test_a_freeze_of_half_the_ttl_keeps_the_lease_confirmed(own_etcd, own_registry, tmp_path, ttl):
    presence = Presence(own_registry, Machine("a1" * 16, "10.0.0.1"), ttl, tmp_path)
    await presence.register()
    lease = presence.lease_id
    async with running(presence, own_etcd) as watch:
        frozen_at = await freeze_before_next_keepalive(presence, own_etcd)
        deadline_at_freeze = presence.expires_at
        await asyncio.sleep(ttl / 2)
        own_etcd.resume()  # (running() resumes it should the test fail before)
        resumed_at = time.monotonic()
        assert deadline_at_freeze - resumed_at < ttl / 2  # the freeze really ate into the lease
        # past the old deadline (0.5 s of event-loop slack), and a keep-alive sent after the freeze
        # answered: a late `lost` would show by now
        until = time.monotonic() + ttl * 3
        while time.monotonic() < deadline_at_freeze + 0.5 or presence.last_alive < resumed_at:
            assert time.monotonic() < until, "no keep-alive answered after the freeze"
            await asyncio.sleep(0.02)
        assert watch.events == [], f"lost set {watch.events[0][0] - frozen_at:.2f}s into a {ttl / 2}s freeze"
        assert presence.registered.is_set() and presence.lease_id == lease
        assert presence.expires_at > resumed_at + ttl / 2  # confirmed again since
        assert await own_registry.get_machine(presence.machine.id) is not None


async def test_keepalive_direct_uses_a_connection_of_its_own(registry, etcd_server):
    lease = await registry.grant_lease(5)
    try:
        assert await registry.keepalive_direct(etcd_server.endpoint, lease, 1.0) == 5
    finally:
        await registry.revoke_lease(lease)
    assert await registry.keepalive_direct(etcd_server.endpoint, lease, 1.0) == 0  # gone: expired
    nobody = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=nobody):
        await registry.keepalive_direct(nobody, lease, 1.0)
    assert time.monotonic() - started < 1.5
    assert await registry.keepalive(lease) == 0  # the shared connection was not disturbed
