"""fleetctl list-services / list-endpoints (etcd driver, real etcd) and [X-Service] refused at
submit with nothing written."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner

from fleetctl.cli import cli
from fleetd.registry import Registry
from fleetd.registry.services import CRITICAL, Endpoint, ServiceRecords


def run(settings, *args: str):
    base = ["--driver=etcd", f"--endpoint={settings.endpoints[0]}", f"--etcd-key-prefix={settings.key_prefix}"]
    return CliRunner().invoke(cli, base + list(args), catch_exceptions=False)


def ep(n: int, service: str = "web", health: str = "passing") -> Endpoint:
    return Endpoint(service, f"{service}@{n}.service", f"{n:032x}", f"10.0.0.{n}", 8080, "http", ("v2",), health,
                    f"{service}-{n}")


def publish(settings, endpoints) -> int:
    async def go():
        async with await Registry.connect(settings) as reg:
            lease = await reg.grant_lease(60)
            await ServiceRecords(reg, skydns_prefix="").publish(endpoints, lease)
            return lease
    return asyncio.run(go())


def test_list_services_and_endpoints(etcd_settings):
    publish(etcd_settings, [ep(1), ep(2, health=CRITICAL), ep(3, "db")])
    out = run(etcd_settings, "list-services")
    assert out.exit_code == 0 and out.output == "SERVICE\tENDPOINTS\ndb\t1/1\nweb\t1/2\n"
    out = run(etcd_settings, "list-endpoints", "web")
    lines = out.output.splitlines()
    assert lines[0].split() == ["SERVICE", "UNIT", "MACHINE", "ADDRESS", "PORT", "HEALTH", "TAGS"]
    assert [line.split() for line in lines[1:]] == [
        ["web", "web@1.service", f"{1:032x}"[:8] + "...", "10.0.0.1", "8080", "passing", "v2"],
        ["web", "web@2.service", f"{2:032x}"[:8] + "...", "10.0.0.2", "8080", "critical", "v2"]]
    data = json.loads(run(etcd_settings, "list-endpoints", "--output", "json").output)
    assert [Endpoint.from_json(d) for d in data] == [ep(3, "db"), ep(1), ep(2, health=CRITICAL)]
    bad = run(etcd_settings, "list-endpoints", "Not_A_Label")
    assert bad.exit_code == 1 and "invalid service name" in bad.output


def test_malformed_service_refused_at_submit_nothing_written(etcd_settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.service").write_text("[Service]\nExecStart=/bin/true\n\n[X-Service]\nName=web\nPort=80\n"
                                        "Check=ftp://nope/\n")
    out = run(etcd_settings, "submit", "w.service")
    assert out.exit_code == 1
    assert "unit w.service: [X-Service] service 'web': Check= 'ftp://nope/': unknown check scheme" in out.output
    assert "w.service" not in run(etcd_settings, "list-unit-files").output


async def _next(gen, timeout: float = 10.0):
    return await asyncio.wait_for(gen.__anext__(), timeout)


async def test_watch_endpoints_etcd_driver(etcd_settings):
    """list-endpoints --watch's feed with the etcd driver: the registry's watch."""
    from fleetctl.etcd_client import EtcdFleetClient

    async with await Registry.connect(etcd_settings) as reg:
        records = ServiceRecords(reg, skydns_prefix="")
        lease = await reg.grant_lease(60)
        client = EtcdFleetClient(etcd_settings)
        feed = client.watch_endpoints("web")
        try:
            assert await _next(feed) == []
            await records.publish([ep(1)], lease)
            assert await _next(feed) == [ep(1)]
            await records.publish([ep(3, "db")], lease)  # another service: not in this feed
            await records.withdraw([ep(1)])
            assert await _next(feed) == []
            assert await client.endpoints() == [ep(3, "db")]
        finally:
            await feed.aclose()
            await client.close()
            await reg.revoke_lease(lease)


def test_watch_endpoints_api_driver(etcd_settings, tmp_path):
    """list-endpoints --watch's feed with the API driver: the API's stream (the client is
    blocking, so the server runs in its own thread)."""
    from fleetctl.api_client import ApiFleetClient
    from fleetctl.commands.common import run_without_loop
    from tests._api_server import ThreadedApiServer

    with ThreadedApiServer(etcd_settings, tmp_path, skydns_prefix="") as server:
        records = ServiceRecords(server.registry, skydns_prefix="")
        lease = server.run(server.registry.grant_lease(60))
        client = ApiFleetClient(server.tcp_endpoint)
        feed = client.watch_endpoints("web")
        try:
            assert run_without_loop(feed.__anext__()) == []
            server.run(records.publish([ep(1)], lease))
            assert run_without_loop(feed.__anext__()) == [ep(1)]
            server.run(records.publish([ep(3, "db")], lease))  # another service: not in this feed
            server.run(records.withdraw([ep(1)]))
            assert run_without_loop(feed.__anext__()) == []
            assert run_without_loop(client.endpoints()) == [ep(3, "db")]
        finally:
            run_without_loop(feed.aclose())
            run_without_loop(client.close())
            server.run(server.registry.revoke_lease(lease))
