"""Machine presence against a real etcd (see test_presence.py): a keep-alive that got no answer
is retried at once, and registering again after an outage retries a failed attempt within its
budget, then fences."""

from __future__ import annotations

import asyncio
import time

from fleetd.model import Machine
from fleetd.presence import Presence

TTL = 3.0  # TTL / 3 = the request timeout (1 s): a retry after a whole keep-alive interval would take 2 s


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
