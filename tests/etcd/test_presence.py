"""Machine presence against a real etcd: loss detection when keep-alives stop getting through,
and recovery when etcd kept the lease alive meanwhile (no etcd partition needed: the
registry's keepalive is made to hang, as it does when the node is cut off). The retries and
registering after an outage: test_presence_retry.py (a module of its own, so that two xdist
workers wait through the TTLs at once)."""

from __future__ import annotations

import asyncio
import time

from fleetd.model import Machine
from fleetd.presence import Presence

TTL = 2.0  # (3 s until session 9; at 2 s a loss noticed one keep-alive interval late, 0.5 s, still fails)


async def test_lost_at_expiry_and_resumed_when_etcd_kept_the_lease(registry, tmp_path):
    presence = Presence(registry, Machine("ab" * 16, "10.0.0.1"), TTL, tmp_path)
    await presence.register()
    lease = presence.lease_id
    real_keepalive = registry.keepalive
    cut = asyncio.Event()

    async def keepalive(lease_id: int, timeout: float | None = None) -> int:  # hangs while "partitioned"
        if cut.is_set():
            await asyncio.sleep(3600)
        return await real_keepalive(lease_id)

    async def keepalive_direct(endpoint: str, lease_id: int, timeout: float) -> int:  # the same on a new connection
        return await keepalive(lease_id, timeout)

    async def keep_lease_alive() -> None:  # what etcd does on a raft leader change
        while True:
            await real_keepalive(lease)
            await asyncio.sleep(0.5)

    registry.keepalive = keepalive
    registry.keepalive_direct = keepalive_direct
    runner = asyncio.create_task(presence.run())
    keeper = None
    try:
        seen = presence.last_alive  # the cut once a keep-alive of the running presence was answered
        deadline = time.monotonic() + 10
        while presence.last_alive == seen:
            assert time.monotonic() < deadline, "no keep-alive answered in 10 s"
            await asyncio.sleep(0.01)
        cut.set()
        cut_at = time.monotonic()
        keeper = asyncio.create_task(keep_lease_alive())
        await asyncio.wait_for(presence.lost.wait(), 10)
        took = time.monotonic() - cut_at
        # at the moment the lease may have expired (last answered keep-alive's sending + TTL
        # <= cut + TTL), not one keep-alive round later
        assert took <= TTL + 0.1, f"loss noticed {took:.2f}s after the cut (TTL {TTL}s)"
        assert not presence.registered.is_set()

        cut.clear()  # reconnected: the lease is still alive, so the machine never left
        await asyncio.wait_for(presence.registered.wait(), 5)
        assert not presence.lost.is_set()
        assert presence.lease_id == lease
        assert await registry.get_machine(presence.machine.id) is not None
    finally:
        for task in (runner, keeper):
            if task is not None:
                task.cancel()
        await asyncio.gather(runner, *([keeper] if keeper else []), return_exceptions=True)
        registry.keepalive = real_keepalive
        del registry.keepalive_direct
        await registry.revoke_lease(lease)


async def test_expired_lease_registers_again(registry, tmp_path):
    presence = Presence(registry, Machine("cd" * 16, "10.0.0.2"), TTL, tmp_path)
    await presence.register()
    old = presence.lease_id
    runner = asyncio.create_task(presence.run())
    try:
        await registry.revoke_lease(old)  # the lease is gone in etcd (expired)
        deadline = time.monotonic() + 10
        while presence.lease_id == old or not presence.registered.is_set():
            assert time.monotonic() < deadline, "did not register again"
            await asyncio.sleep(0.05)
        assert not presence.lost.is_set()
        assert await registry.get_machine(presence.machine.id) is not None
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await registry.revoke_lease(presence.lease_id)
