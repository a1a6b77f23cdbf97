"""Service discovery against a real etcd: records and SkyDNS keys under a lease, withdrawal,
foreign/bad records skipped with one log line, the watch feed, the agent-side publisher with a
real HTTP check, and the DNS responder (queried with dig) answering from the watch-fed view."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import time

import pytest
from aiohttp import web

from fleetd.discovery.dns import DnsResponder
from fleetd.discovery.feed import ViewFeed
from fleetd.discovery.publisher import EndpointPublisher
from fleetd.registry.services import CRITICAL, PASSING, Endpoint, ServiceRecords
from fleetd.unit.file import UnitFile

pytestmark = pytest.mark.etcd


def ep(n: int, health: str = PASSING) -> Endpoint:
    return Endpoint("web", f"web@{n}.service", f"m{n}", f"10.0.0.{n}", 8080, "http", ("v2",), health, f"web-{n}")


async def eventually(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def raw(registry, prefix: str) -> dict[str, bytes]:
    kvs = await registry.core.connection.call(registry.core.connection.client.get_prefix, prefix.encode())
    return {kv.key.decode(): kv.value for kv in kvs}


def records_for(registry, etcd_prefix) -> ServiceRecords:
    # a SkyDNS prefix of this test's own, so that parallel tests never share keys
    return ServiceRecords(registry, domain="fleet.local", skydns_prefix=f"{etcd_prefix}skydns/", ttl=7)


async def test_publish_under_lease_skydns_only_when_healthy_and_lease_loss_removes_all(registry, etcd_prefix):
    records = records_for(registry, etcd_prefix)
    lease = await registry.grant_lease(30)
    await records.publish([ep(1), ep(2, CRITICAL)], lease)
    found = await records.endpoints()
    assert found == [ep(1), ep(2, CRITICAL)]
    sky = await raw(registry, f"{etcd_prefix}skydns/")
    assert list(sky) == [f"{etcd_prefix}skydns/local/fleet/web/web-1"]
    assert json.loads(sky[f"{etcd_prefix}skydns/local/fleet/web/web-1"]) == {
        "host": "10.0.0.1", "port": 8080, "priority": 10, "weight": 10, "ttl": 7}
    key = f"{etcd_prefix}services/web/m1/web@1.service"
    kv = await registry.core.connection.call(registry.core.connection.client.get, key.encode())
    assert kv.lease == lease
    await registry.revoke_lease(lease)
    assert await records.endpoints() == [] and await raw(registry, f"{etcd_prefix}skydns/") == {}


async def test_withdraw_and_recover(registry, etcd_prefix):
    records = records_for(registry, etcd_prefix)
    lease = await registry.grant_lease(30)
    try:
        await records.publish([ep(1), ep(2)], lease)
        await records.withdraw([ep(1)])
        assert await records.endpoints() == [ep(2)]
        await records.publish([ep(2, CRITICAL)], lease)  # check failed: out of SkyDNS, record stays
        assert await records.endpoints() == [ep(2, CRITICAL)]
        assert await raw(registry, f"{etcd_prefix}skydns/") == {}
        await records.publish([ep(2)], lease)
        assert list(await raw(registry, f"{etcd_prefix}skydns/")) == [f"{etcd_prefix}skydns/local/fleet/web/web-2"]
    finally:
        await registry.revoke_lease(lease)


async def test_bad_and_foreign_records_are_skipped_with_one_log_line(registry, etcd_prefix, caplog):
    records = records_for(registry, etcd_prefix)
    client = registry.core.connection.client
    lease = await registry.grant_lease(30)
    try:
        await records.publish([ep(1)], lease)
        await registry.core.connection.call(client.put, f"{etcd_prefix}services/web/m9/x.service".encode(), b"{oops")
        foreign = {**ep(2).to_json(), "service": "db"}  # does not match the key it sits under
        await registry.core.connection.call(client.put, f"{etcd_prefix}services/web/m2/web@2.service".encode(),
                                  json.dumps(foreign).encode())
        await registry.core.connection.call(client.put, f"{etcd_prefix}services/web/stray".encode(), b"{}")
        with caplog.at_level(logging.WARNING, logger="fleetd.registry.services"):
            assert await records.endpoints() == [ep(1)]
            assert await records.endpoints() == [ep(1)]  # read again: no new complaint
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3, lines
        assert any("m9/x.service: value is not valid JSON; skipped" in line for line in lines)
        assert any("does not match its key" in line for line in lines)
    finally:
        await registry.revoke_lease(lease)


async def test_changes_follow_publish_and_withdraw(registry, etcd_prefix):
    records = records_for(registry, etcd_prefix)
    lease = await registry.grant_lease(30)
    seen: list[list[str]] = []

    async def follow():
        async for current in records.changes("web"):
            seen.append(sorted(e.unit for e in current.values()))

    task = asyncio.create_task(follow())
    try:
        await eventually(lambda: asyncio.sleep(0, bool(seen)), what="the first snapshot")
        await records.publish([ep(1)], lease)
        await records.publish([ep(2)], lease)
        await records.withdraw([ep(1)])
        await eventually(lambda: asyncio.sleep(0, seen[-1] == ["web@2.service"]), what="the withdrawal")
        assert seen == [[], ["web@1.service"], ["web@1.service", "web@2.service"], ["web@2.service"]]
    finally:
        task.cancel()
        await registry.revoke_lease(lease)


class State:
    def __init__(self, name: str, active: str):
        self.name, self.active_state = name, active


@pytest.fixture
async def web_server():
    """A real HTTP server on 127.0.0.1 whose /health answers `status["code"]`."""
    status = {"code": 200}

    async def health(request):
        return web.Response(status=status["code"], text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield port, status
    await runner.cleanup()


async def test_publisher_follows_unit_state_and_check(registry, etcd_prefix, web_server):
    port, status = web_server
    records = records_for(registry, etcd_prefix)
    lease = await registry.grant_lease(30)
    publisher = EndpointPublisher(records, "m" * 32, "127.0.0.1", lambda: lease, hostname="node1")
    task = asyncio.create_task(publisher.run())
    name = "web@1.service"
    unit = UnitFile.parse(f"[Service]\nExecStart=/bin/true\n\n[X-Service]\nName=web\nPort={port}\n"
                          f"Protocol=http\nTags=%H\nCheck=http://:{port}/health\nCheckInterval=200ms\nFall=2\n")

    async def health_of():
        found = await records.endpoints("web")
        return found[0].health if found else "absent"

    try:
        publisher.units_desired({name: unit, "plain.service": UnitFile.parse("[Service]\nExecStart=/bin/true\n")})
        await asyncio.sleep(0.3)
        assert await health_of() == "absent"  # loaded, not active: nothing published
        publisher.unit_states([State(name, "active")])
        await eventually(lambda: _is(health_of, PASSING), what="the endpoint to pass")
        (found,) = await records.endpoints("web")
        assert (found.host, found.port, found.tags, found.label) == ("127.0.0.1", port, ("node1",), "web-1")
        status["code"] = 500
        await eventually(lambda: _is(health_of, CRITICAL), what="the failing check to withdraw it from DNS")
        assert await raw(registry, f"{etcd_prefix}skydns/") == {}
        status["code"] = 200
        await eventually(lambda: _is(health_of, PASSING), what="the endpoint to come back")
        started = time.monotonic()
        publisher.unit_states([State(name, "inactive")])
        await eventually(lambda: _is(health_of, "absent"), what="the stopped unit's endpoint to go")
        print(f"stopped -> withdrawn in {time.monotonic() - started:.3f}s")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await registry.revoke_lease(lease)


async def _is(fn, value) -> bool:
    return await fn() == value


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")
async def test_dns_answers_from_the_watch_fed_view(registry, etcd_prefix):
    records = records_for(registry, etcd_prefix)
    feed = ViewFeed(records, "fleet.local")
    feed_task = asyncio.create_task(feed.run())
    dns = DnsResponder(lambda: feed.view)
    await dns.start("127.0.0.1", 0)
    port = dns._udp.get_extra_info("sockname")[1]
    tcp_port = dns._tcp.sockets[0].getsockname()[1]
    lease = await registry.grant_lease(30)

    async def dig(*args: str, p: int = port) -> str:
        proc = await asyncio.create_subprocess_exec("dig", "@127.0.0.1", "-p", str(p), "+short", "+tries=1",
                                                    "+time=2", *args, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        return out.decode()

    try:
        await records.publish([ep(1), ep(2), ep(3, CRITICAL)], lease)
        await eventually(lambda: asyncio.sleep(0, len(feed.view.endpoints) == 3), what="the view")
        assert sorted((await dig("web.fleet.local")).split()) == ["10.0.0.1", "10.0.0.2"]
        srv = await dig("SRV", "_web._tcp.fleet.local")
        assert sorted(srv.splitlines()) == ["10 10 8080 web-1.web.fleet.local.", "10 10 8080 web-2.web.fleet.local."]
        assert (await dig("web-2.web.fleet.local")).split() == ["10.0.0.2"]
        # TCP: another socket, the same port number as UDP when bound to a fixed port
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        writer.close()
        await records.withdraw([ep(1)])
        await eventually(lambda: asyncio.sleep(0, len(feed.view.endpoints) == 2), what="the withdrawal")
        assert (await dig("web.fleet.local")).split() == ["10.0.0.2"]
    finally:
        feed_task.cancel()
        await asyncio.gather(feed_task, return_exceptions=True)
        await dns.stop()
        await registry.revoke_lease(lease)


# --------------------------------------------------------------------------- the API and fleetctl


async def test_api_refuses_bad_service_and_serves_endpoints_and_a_watch_stream(etcd_settings, tmp_path, registry,
                                                                                etcd_prefix):
    from tests._api_server import ApiHarness

    async with ApiHarness(etcd_settings, tmp_path, skydns_prefix=f"{etcd_prefix}skydns/") as api:
        bad = {"desiredState": "launched", "options": [
            {"section": "Service", "name": "ExecStart", "value": "/bin/true"},
            {"section": "X-Service", "name": "Name", "value": "web"},
            {"section": "X-Service", "name": "Port", "value": "http"}]}
        status, _, body = await api.call("PUT", "/fleet/v1/units/bad.service", body=bad)
        assert status == 400 and "[X-Service] service 'web': Port= 'http' is not a port number" in json.dumps(body)
        assert await registry.get_unit("bad.service") is None  # nothing written
        records = records_for(registry, etcd_prefix)
        lease = await registry.grant_lease(30)
        try:
            await records.publish([ep(1), ep(2, CRITICAL)], lease)
            status, _, body = await api.call("GET", "/fleet/v1/services")
            assert status == 200 and body == {"services": [{"name": "web", "healthy": 1, "total": 2}]}
            status, _, body = await api.call("GET", "/fleet/v1/services/web/endpoints")
            assert [Endpoint.from_json(e) for e in body["endpoints"]] == [ep(1), ep(2, CRITICAL)]
            assert (await api.call("GET", "/fleet/v1/services/Bad_Name/endpoints"))[0] == 400
            assert (await api.call("POST", "/fleet/v1/services"))[0] == 405

            import aiohttp

            async with aiohttp.ClientSession() as session, \
                    session.get(f"{api.base}/fleet/v1/endpoints", params={"watch": "true"}) as resp:
                assert resp.headers["Content-Type"] == "application/x-ndjson"
                first = json.loads(await resp.content.readline())
                assert len(first["endpoints"]) == 2
                await records.withdraw([ep(2)])
                second = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
                assert [e["unit"] for e in second["endpoints"]] == ["web@1.service"]
        finally:
            await registry.revoke_lease(lease)
