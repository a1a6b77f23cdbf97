"""Lease keep-alives on one long-lived LeaseKeepAlive stream per connection (fleetd/registry/
connection.py `_KeepAliveStream`), against a real etcd: many leases share it, a lease that is
gone answers TTL 0, a keep-alive with no answer in time is unavailable and the next one goes on
a new stream, closing the connection ends a waiting keep-alive. The answer-to-waiter rules with
a stream whose answers the test hands out: tests/unit/test_registry_keepalive_lines.py."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from fleetd.config import EtcdSettings
from fleetd.errors import RegistryUnavailable
from fleetd.registry import Registry, RequestCounter

STREAM = "Lease/LeaseKeepAlive"


async def _counted(endpoint: str, request_timeout: float = 5.0) -> tuple[Registry, RequestCounter]:
    counter = RequestCounter()
    settings = EtcdSettings(endpoints=(endpoint,), key_prefix=f"/fleet-test/{uuid.uuid4().hex[:12]}/",
                            request_timeout=request_timeout)
    return await Registry.connect(settings, counter=counter), counter


async def test_many_leases_share_one_stream(etcd_server):
    registry, counter = await _counted(etcd_server.endpoint)
    try:
        leases = [await registry.grant_lease(30) for _ in range(40)]
        for _ in range(5):
            ttls = await asyncio.gather(*(registry.keepalive(lease) for lease in leases))
            assert all(25 <= ttl <= 30 for ttl in ttls), ttls
        assert counter.calls[STREAM] == 1  # one stream ...
        assert counter.sent[STREAM] == counter.received[STREAM] == 200  # ... 200 keep-alives on it
        for lease in leases:
            await registry.revoke_lease(lease)
    finally:
        await registry.close()


async def test_a_lease_that_is_gone_answers_zero_and_the_others_go_on(etcd_server):
    registry, counter = await _counted(etcd_server.endpoint)
    try:
        gone, alive = await registry.grant_lease(10), await registry.grant_lease(10)
        assert await registry.keepalive(gone) > 0
        await registry.revoke_lease(gone)
        assert await asyncio.gather(registry.keepalive(gone), registry.keepalive(alive), registry.keepalive(gone)) \
            == [0, 10, 0]
        assert await registry.keepalive(alive) == 10
        assert counter.calls[STREAM] == 1
        await registry.revoke_lease(alive)
    finally:
        await registry.close()


async def test_no_answer_in_time_is_unavailable_and_the_next_keepalive_has_a_new_stream(own_etcd):
    registry, counter = await _counted(own_etcd.endpoint, request_timeout=1.0)
    try:
        lease = await registry.grant_lease(10)
        assert await registry.keepalive(lease) > 0
        first = registry.connection._keepalive_stream
        own_etcd.pause()
        try:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable):
                await registry.keepalive(lease, timeout=0.3)
            assert time.monotonic() - started < 1.0  # its own timeout, not the request timeout
            assert first.retired and registry.connection._keepalive_stream is None
            # sent while etcd is still frozen: on a new stream, answered once etcd resumes
            waiting = asyncio.ensure_future(registry.keepalive(lease, timeout=10))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        finally:
            own_etcd.resume()
        assert await asyncio.wait_for(waiting, 10) > 0
        second = registry.connection._keepalive_stream
        assert second is not first and not second.retired
        assert counter.calls[STREAM] == 2
        for _ in range(50):  # the retired stream is closed (its last request gave up)
            if first.reader.done():
                break
            await asyncio.sleep(0.02)
        assert first.reader.done()
        assert await registry.keepalive(lease) > 0 and counter.calls[STREAM] == 2
    finally:
        await registry.close()


async def test_closing_the_connection_ends_a_waiting_keepalive(own_etcd):
    registry, _ = await _counted(own_etcd.endpoint)
    lease = await registry.grant_lease(10)
    assert await registry.keepalive(lease) > 0
    own_etcd.pause()
    try:
        waiting = asyncio.ensure_future(registry.keepalive(lease, timeout=30))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await registry.close()
        with pytest.raises(RegistryUnavailable):
            await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 5
    finally:
        own_etcd.resume()
