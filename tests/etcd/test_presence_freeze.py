"""Machine presence against a real etcd that is frozen (SIGSTOP), as an etcd member is when its
host stalls: for half the TTL the lease stays confirmed and `lost` is never set (the agent
would stop and restart its units for nothing); for longer than the TTL `lost` is set no later
than the moment etcd may expire the lease (no unit may run twice), and the machine registers
again once etcd is back.

The freeze starts just before a keep-alive is due, the worst moment: the last answered one is
as old as it gets. Each test has an etcd of its own (a frozen or expired one is not shared).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from fleetd.config import EtcdSettings
from fleetd.errors import RegistryUnavailable
from fleetd.model import Machine
from fleetd.presence import Presence
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer, free_port


@pytest.fixture
def own_etcd():
    with EtcdServer() as server:
        yield server


@pytest.fixture
async def own_registry(own_etcd):
    settings = EtcdSettings(endpoints=(own_etcd.endpoint,), key_prefix=f"/fleet-test/{uuid.uuid4().hex[:12]}/",
                            request_timeout=1.0)  # fleetd's default
    registry = await Registry.connect(settings)
    try:
        yield registry
    finally:
        await registry.close()


class LostWatch:
    """Records when `presence.lost` was set (polled every 5 ms, with the lease's deadline then)."""

    def __init__(self, presence: Presence):
        self.presence = presence
        self.events: list[tuple[float, float]] = []  # (monotonic time lost was seen, expires_at)
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        was = False
        while True:
            now = self.presence.lost.is_set()
            if now and not was:
                self.events.append((time.monotonic(), self.presence.expires_at))
            was = now
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class AnsweredKeepalives:
    """Wraps the registry's keep-alive calls: when each answered one was sent, and its TTL."""

    def __init__(self, registry: Registry):
        self.answered: list[tuple[float, int]] = []
        self.registry = registry
        keepalive, direct = registry.keepalive, registry.keepalive_direct

        async def recorded_keepalive(lease_id: int, timeout: float | None = None) -> int:
            return self._record(time.monotonic(), await keepalive(lease_id, timeout))

        async def recorded_direct(endpoint: str, lease_id: int, timeout: float) -> int:
            return self._record(time.monotonic(), await direct(endpoint, lease_id, timeout))

        registry.keepalive, registry.keepalive_direct = recorded_keepalive, recorded_direct

    def _record(self, sent: float, ttl: int) -> int:
        self.answered.append((sent, ttl))
        return ttl

    def deadline(self) -> float:
        """The earliest moment etcd may expire the lease, from the answered keep-alives alone."""
        return max(sent + ttl for sent, ttl in self.answered)

    def restore(self) -> None:
        del self.registry.keepalive, self.registry.keepalive_direct


async def freeze_before_next_keepalive(presence: Presence, etcd: EtcdServer) -> float:
    """Freeze etcd 20 ms before the next keep-alive is due; returns when (monotonic)."""
    seen = presence.last_alive
    deadline = time.monotonic() + 10
    while presence.last_alive == seen:  # a keep-alive was just answered: its phase is known
        assert time.monotonic() < deadline, "no keep-alive answered in 10 s"
        await asyncio.sleep(0.002)
    await asyncio.sleep(max(0.0, presence.last_alive + presence.timing.interval - 0.02 - time.monotonic()))
    etcd.pause()
    return time.monotonic()


@pytest.mark.parametrize("ttl", [2.0, pytest.param(5.0, marks=pytest.mark.deep)])  # 5 s: the full suite
async def test_a_freeze_of_half_the_ttl_keeps_the_lease_confirmed(own_etcd, own_registry, tmp_path, ttl):
    presence = Presence(own_registry, Machine("a1" * 16, "10.0.0.1"), ttl, tmp_path)
    await presence.register()
    lease = presence.lease_id
    runner = asyncio.create_task(presence.run())
    watch = LostWatch(presence)
    try:
        frozen_at = await freeze_before_next_keepalive(presence, own_etcd)
        deadline_at_freeze = presence.expires_at
        try:
            await asyncio.sleep(ttl / 2)
        finally:
            own_etcd.resume()
        resumed_at = time.monotonic()
        assert deadline_at_freeze - resumed_at < ttl / 2  # the freeze really ate into the lease
        await asyncio.sleep(ttl)  # past the old deadline: a late `lost` would show by now
        assert watch.events == [], f"lost set {watch.events[0][0] - frozen_at:.2f}s into a {ttl / 2}s freeze"
        assert presence.registered.is_set() and presence.lease_id == lease
        assert presence.expires_at > resumed_at + ttl / 2  # confirmed again since
        assert await own_registry.get_machine(presence.machine.id) is not None
    finally:
        own_etcd.resume()
        await watch.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_freeze_longer_than_the_ttl_sets_lost_before_etcd_may_expire_the_lease(
        own_etcd, own_registry, tmp_path):
    ttl = 2.0
    presence = Presence(own_registry, Machine("b2" * 16, "10.0.0.2"), ttl, tmp_path)
    await presence.register()
    lease = presence.lease_id
    calls = AnsweredKeepalives(own_registry)
    runner = asyncio.create_task(presence.run())
    watch = LostWatch(presence)
    try:
        frozen_at = await freeze_before_next_keepalive(presence, own_etcd)
        try:
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
        finally:
            own_etcd.resume()
        # etcd expires the lease once it runs again: the machine registers anew
        until = time.monotonic() + 15
        while not presence.registered.is_set():
            assert time.monotonic() < until, "did not register again after etcd came back"
            await asyncio.sleep(0.05)
        assert presence.lease_id != lease and not presence.lost.is_set()
        assert await own_registry.get_machine(presence.machine.id) is not None
    finally:
        own_etcd.resume()
        await watch.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        calls.restore()


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
