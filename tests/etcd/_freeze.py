"""A presence against an etcd of its own that the test freezes (SIGSTOP), for
tests/etcd/test_presence_freeze*.py: the registry on it, a recorder of when `lost` was set and
of the answered keep-alives, the presence running under that recorder (and cleaned up after it),
and the freeze at the worst moment (split in two modules so that two xdist workers wait through
the freezes at once)."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest

from fleetd.config import EtcdSettings
from fleetd.presence import Presence
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer


@asynccontextmanager
async def registry_on(own_etcd: EtcdServer) -> AsyncIterator[Registry]:
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


@asynccontextmanager
async def running(presence: Presence, etcd: EtcdServer) -> AsyncIterator[LostWatch]:
    """The presence running, watched by a LostWatch; afterwards etcd runs again (whatever froze
    it), the watch stops and the presence's runner is cancelled."""
    runner = asyncio.create_task(presence.run())
    watch = LostWatch(presence)
    try:
        yield watch
    finally:
        etcd.resume()
        await watch.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


class AnsweredKeepalives:
    """Wraps the registry's keep-alive calls (until the `with` block ends): when each answered
    one was sent, and its TTL."""

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

    def __enter__(self) -> AnsweredKeepalives:
        return self

    def __exit__(self, *exc: object) -> None:
        """The registry's own keep-alive calls again."""
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


@pytest.fixture
async def own_registry(own_etcd):
    """A registry on the test's own etcd (tests/etcd/conftest.py)."""
    async with registry_on(own_etcd) as registry:
        yield registry
