"""Machine presence against a real etcd: loss detection when keep-alives stop getting through,
and recovery when etcd kept the lease alive meanwhile (no etcd partition needed: the
registry's keepalive is made to hang, as it does when the node is cut off)."""

from __future__ import annotations

import asyncio
import time

from fleetd.model import Machine
from fleetd.presence import Presence

TTL = 3.0


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
        await asyncio.sleep(1.5)
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


async def test_a_keepalive_that_got_no_answer_is_retried_soon(registry, tmp_path):
    """One etcd member does not answer: the next attempt (on another member, see the
    connection's failover) comes at once, not a whole keep-alive interval later."""
    presence = Presence(registry, Machine("ef" * 16, "10.0.0.3"), TTL, tmp_path)
    await presence.register()
    real_keepalive = registry.keepalive
    calls: list[float] = []
    hang_next = asyncio.Event()

    async def keepalive(lease_id: int, timeout: float | None = None) -> int:
        calls.append(time.monotonic())
        if hang_next.is_set():
            hang_next.clear()
            await asyncio.sleep(3600)
        return await real_keepalive(lease_id)

    registry.keepalive = keepalive
    runner = asyncio.create_task(presence.run())
    try:
        while not calls:
            await asyncio.sleep(0.05)
        hang_next.set()
        while len(calls) < 3:
            await asyncio.sleep(0.05)
        # the hung attempt gives up after min(TTL/3, request timeout) = 1 s, then a short pause
        assert calls[2] - calls[1] < 1.75, f"retried after {calls[2] - calls[1]:.2f}s"
        assert not presence.lost.is_set()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        registry.keepalive = real_keepalive
        await registry.revoke_lease(presence.lease_id)


async def test_registering_after_an_outage_retries_a_failed_attempt(registry, tmp_path):
    """A machine holding on through an outage whose lease etcd expired registers again within
    its budget; an attempt that fails at once (the shared connection still reconnecting) is
    tried again instead of fencing (soak seed 13, session 4: 12 units restarted in place)."""
    from fleetd.errors import RegistryUnavailable

    presence = Presence(registry, Machine("cd" * 16, "10.0.0.2"), TTL, tmp_path)
    await presence.register()
    await registry.revoke_lease(presence.lease_id)  # what etcd did on resuming
    failures = []
    real_register = registry.register_machine

    async def register_machine(*args, **kwargs):
        if len(failures) < 2:
            failures.append(time.monotonic())
            raise RegistryUnavailable("etcd unreachable: failed to connect to all addresses")
        return await real_register(*args, **kwargs)

    registry.register_machine = register_machine
    presence.holding = True
    await presence._register_after_outage()
    assert len(failures) == 2
    assert not presence.lost.is_set() and presence.registered.is_set()
    assert await registry.get_machine(presence.machine.id) is not None


async def test_registering_after_an_outage_fences_when_the_budget_runs_out(registry, tmp_path):
    from fleetd.disruption import settle_seconds
    from fleetd.errors import RegistryUnavailable

    presence = Presence(registry, Machine("ef" * 16, "10.0.0.3"), TTL, tmp_path)
    await presence.register()

    async def register_machine(*args, **kwargs):
        raise RegistryUnavailable("etcd unreachable")

    registry.register_machine = register_machine
    presence.holding = True
    started = time.monotonic()
    await presence._register_after_outage()
    assert presence.lost.is_set() and not presence.registered.is_set()
    assert time.monotonic() - started <= settle_seconds(TTL) - 0.5 + presence.timing.lost_retry + 0.5
