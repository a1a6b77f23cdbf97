"""The web dashboard's handlers (fleetd/api/dashboard.py) on a real fleetd API and a real etcd:
pages, the Server-Sent Events feed fed by the registry watch, roles and operator actions.

The browser itself is driven in tests/test_dashboard_lab.py."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _depth import examples
from fleetd.api import dashboard
from fleetd.model import DesiredState, Machine, Placement, Unit, UnitState
from fleetd.registry.cluster_watch import Change, ClusterView, follow_cluster, read_cluster
from fleetd.unit.file import UnitFile

from _api_server import HELLO_OPTIONS, ApiHarness, publish_state, register_machine

MID_A = "a" * 32
MID_B = "b" * 32
HELLO = UnitFile.from_options([(o["section"], o["name"], o["value"]) for o in HELLO_OPTIONS])
RESERVING = UnitFile.parse("[Service]\nExecStart=/bin/true\n[X-Fleet]\nReserveCPU=0.5\nReserveMemory=256M\n")


@pytest.fixture
async def api(etcd_settings, tmp_path):
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID_A, "127.0.0.1")) as harness:
        yield harness


@pytest.fixture
async def read_only_api(etcd_settings, tmp_path):
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID_A, "127.0.0.1"), api_tcp_role="read-only") as harness:
        yield harness


async def cluster(reg, *, failed: str = "") -> dict[str, int]:
    """Two machines (A leads the engine), units hello-1..3 placed and active; `failed` fails."""
    lease_a = await register_machine(reg, MID_A, "10.0.0.1", {"role": "web"})
    lease_b = await register_machine(reg, MID_B, "10.0.0.2")
    assert await reg.campaign(MID_A, lease_a)
    names = ["hello-1.service", "hello-2.service", "hello-3.service", "big.service"]
    for name in names:
        file = RESERVING if name == "big.service" else HELLO
        assert await reg.create_unit(Unit(name, file, DesiredState.LAUNCHED))
    await reg.apply_schedule(fence_machine_id=MID_A, place=[
        Placement(n, MID_A if i % 2 == 0 else MID_B, (RESERVING if n == "big.service" else HELLO).hash,
                  DesiredState.LAUNCHED) for i, n in enumerate(names)])
    for i, name in enumerate(names):
        machine, lease = (MID_A, lease_a) if i % 2 == 0 else (MID_B, lease_b)
        file_hash = (RESERVING if name == "big.service" else HELLO).hash
        active, sub = ("failed", "failed") if name == failed else ("active", "running")
        await publish_state(reg, lease, name, machine, file_hash, active, sub)
    return {MID_A: lease_a, MID_B: lease_b}


async def get_text(api, path: str) -> tuple[int, str]:
    async with api.session.get(api.base + path) as resp:
        return resp.status, await resp.text()


class Events:
    """A client of /dashboard/events: yields the decoded `data` of each event."""

    def __init__(self, api, query: str):
        self.api, self.query = api, query
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> "Events":
        self.resp = await self.api.session.get(self.api.base + "/dashboard/events?" + self.query)
        assert self.resp.status == 200 and self.resp.headers["Content-Type"] == "text/event-stream"
        return self

    async def __aexit__(self, *exc) -> None:
        self.resp.close()

    async def next(self, timeout: float = 5.0) -> tuple[str, dict]:
        event, data = "message", None
        while True:
            line = (await asyncio.wait_for(self.resp.content.readline(), timeout)).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                return event, data

    async def until(self, predicate, timeout: float = 5.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event, data = await self.next(max(0.05, deadline - loop.time()))
            if event == "message" and predicate(data):
                return data


def revision_of(html: str) -> int:
    return int(re.search(r'data-revision="(\d+)"', html).group(1))


# ---------------------------------------------------------------------------- pages


async def test_overview_lists_machines_and_units_failed_first(api):
    await cluster(api.registry, failed="hello-3.service")
    status, html = await get_text(api, "/")
    assert status == 200
    assert "10.0.0.1" in html and "10.0.0.2" in html and "role=web" in html
    for name in ("hello-1.service", "hello-2.service", "hello-3.service", "big.service"):
        assert f'id="u-{name}"' in html
    order = re.findall(r'<tr id="u-([^"]+)"', html)
    assert order[0] == "hello-3.service" and order[1:] == sorted(order[1:])  # failed first
    leader_row = re.search(rf'<tr id="m-{MID_A}".*?</tr>', html, re.S).group(0)
    assert "leader" in leader_row
    other_row = re.search(rf'<tr id="m-{MID_B}".*?</tr>', html, re.S).group(0)
    assert "leader" not in other_row
    assert "0.5 / 2" in other_row and "256.0 MiB / 1.0 GiB" in other_row  # reserved / capacity (big.service)
    assert "0 / 2" in leader_row
    row = re.search(r'<tr id="u-hello-1.service".*?</tr>', html, re.S).group(0)
    assert "launched" in row and "active" in row and HELLO.hash[:7] in row and "10.0.0.1" in row
    assert 'data-action="/dashboard/actions/unit/hello-1.service/stop"' in row


async def test_other_methods_on_root_and_api_routes_unchanged(api):
    status, _, body = await api.call("POST", "/")
    assert status == 405 and body["error"]["code"] == 405
    assert (await api.call("GET", "/fleet/v1"))[0] == 405
    assert (await api.call("GET", "/metrics"))[0] == 200
    assert (await api.call("GET", "/dashboard/static/nope.js"))[0] == 404
    status, text = await get_text(api, "/dashboard/static/dashboard.js")
    assert status == 200 and "EventSource" in text


async def test_placement_unit_and_services_pages(api):
    await cluster(api.registry)
    status, html = await get_text(api, "/dashboard/placement")
    assert status == 200 and 'id="p-hello-2.service"' in html
    row = re.search(r'<tr id="p-hello-2.service".*?</tr>', html, re.S).group(0)
    assert row.count('class="cell target"') == 1 and "active" in row
    status, html = await get_text(api, "/dashboard/units/hello-1.service")
    assert status == 200 and "Hello World" in html and "/fleet/v1/units/hello-1.service/status" in html
    assert "rendered unit" not in html  # not a container unit
    status, _ = await get_text(api, "/dashboard/units/nope.service")
    assert status == 404
    status, html = await get_text(api, "/dashboard/services")
    assert status == 200 and 'id="no-services"' in html


async def test_services_come_from_the_pluggable_provider(api):
    async def provider(request):
        return [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 80, "machine": MID_A,
                                               "unit": "web@1.service", "healthy": True}]}]

    dashboard.set_services_provider(api.server.context, provider)
    status, html = await get_text(api, "/dashboard/services")
    assert status == 200 and "10.0.0.1:80" in html and "web@1.service" in html and "healthy" in html

    async def unhealthy(request):
        return [{"name": "db", "endpoints": [{"address": "10.0.0.2", "port": 5432, "healthy": False}]},
                {"name": "idle", "endpoints": []}]

    dashboard.set_services_provider(api.server._runner.app, unhealthy)
    status, html = await get_text(api, "/dashboard/services")
    assert status == 200 and "10.0.0.2:5432" in html and "unhealthy" in html and ">idle<" in html


# ---------------------------------------------------------------------------- live updates


async def test_state_change_reaches_the_event_stream(api):
    leases = await cluster(api.registry)
    _, html = await get_text(api, "/")
    async with Events(api, f"view=overview&since={revision_of(html)}") as events:
        event, hello = await events.next()
        assert event == "hello"
        await publish_state(api.registry, leases[MID_A], "hello-1.service", MID_A, HELLO.hash, "failed", "failed")
        data = await events.until(lambda d: any(op.get("id") == "u-hello-1.service" for op in d["ops"]))
        op = next(op for op in data["ops"] if op.get("id") == "u-hello-1.service")
        assert op["op"] == "row" and op["table"] == "unit-rows" and op["key"].startswith("0")  # failed first
        assert "failed" in op["html"]
        # a new unit appears as a row; a destroyed one is removed
        assert await api.registry.create_unit(Unit("new.service", HELLO, DesiredState.INACTIVE))
        data = await events.until(lambda d: any(op.get("id") == "u-new.service" for op in d["ops"]))
        assert "new.service" in next(op for op in data["ops"] if op.get("id") == "u-new.service")["html"]
        await api.registry.destroy_units(["new.service"])
        data = await events.until(lambda d: any(op.get("id") == "u-new.service" and op["html"] is None
                                                for op in d["ops"]))


async def test_stream_from_an_old_revision_starts_with_everything(api):
    await cluster(api.registry)
    async with Events(api, "view=overview&since=1") as events:
        replaced: set[str] = set()
        await events.until(lambda d: replaced.update(op["id"] for op in d["ops"] if op["op"] == "html")
                           or replaced >= {"counts", "machines", "units"})


async def test_machine_that_leaves_is_shown_gone(api):
    leases = await cluster(api.registry)
    _, html = await get_text(api, "/")
    async with Events(api, f"view=overview&since={revision_of(html)}") as events:
        await events.next()
        await api.registry.revoke_lease(leases[MID_B])
        data = await events.until(lambda d: any(op["id"] == "machines" and "gone" in op["html"] for op in d["ops"]))
        machines = next(op["html"] for op in data["ops"] if op["id"] == "machines")
        row = re.search(rf'<tr id="m-{MID_B}".*?</tr>', machines, re.S).group(0)
        assert "gone" in row and "drain" not in row
    _, html = await get_text(api, "/")  # a fresh page still shows it
    assert re.search(rf'<tr id="m-{MID_B}" [^>]*class="gone', html)


async def test_unit_page_stream_follows_its_unit(api):
    leases = await cluster(api.registry)
    _, html = await get_text(api, "/dashboard/units/hello-2.service")
    async with Events(api, f"view=unit&unit=hello-2.service&since={revision_of(html)}") as events:
        await events.next()
        await publish_state(api.registry, leases[MID_B], "hello-2.service", MID_B, HELLO.hash, "inactive", "dead")
        data = await events.until(lambda d: any(op["id"] == "unit-summary" for op in d["ops"]))
        summary = next(op["html"] for op in data["ops"] if op["id"] == "unit-summary")
        assert "inactive" in summary and "dead" in summary
        assert {"op": "refresh", "id": "unit-status"} in data["ops"]


async def test_cluster_watch_applies_events_in_place(registry):
    leases = await cluster(registry)
    view = await read_cluster(registry)
    assert set(view.units) == {"hello-1.service", "hello-2.service", "hello-3.service", "big.service"}
    assert view.leader == MID_A and set(view.machines) == {MID_A, MID_B}
    changes: list[Change] = []
    seen = asyncio.Event()

    def on_change(v: ClusterView, change: Change) -> None:
        changes.append(change)
        seen.set()

    task = asyncio.create_task(follow_cluster(registry, view, on_change))
    try:
        await registry.set_desired_state(["hello-1.service"], DesiredState.LOADED)
        await registry.set_draining(MID_B, True)
        async with asyncio.timeout(5):
            while not (any("hello-1.service" in c.units for c in changes) and any(MID_B in c.machines for c in changes)):
                seen.clear()
                await seen.wait()
        assert view.units["hello-1.service"].desired_state is DesiredState.LOADED
        assert view.machines[MID_B].draining
        await registry.revoke_lease(leases[MID_B])  # machine record and its states vanish together
        async with asyncio.timeout(5):
            while MID_B in view.machines or "hello-2.service" in view.states:
                seen.clear()
                await seen.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------------- roles and actions


async def post_action(api, path: str, header: bool = True) -> tuple[int, dict]:
    headers = {"X-Fleet-Dashboard": "1"} if header else {}
    async with api.session.post(api.base + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_operator_actions(api):
    await cluster(api.registry)
    status, body = await post_action(api, "/dashboard/actions/unit/hello-1.service/stop", header=False)
    assert status == 403 and "X-Fleet-Dashboard" in body["error"]["message"]
    assert (await post_action(api, "/dashboard/actions/unit/hello-1.service/stop"))[0] == 200
    assert (await api.registry.get_unit("hello-1.service")).desired_state is DesiredState.LOADED
    assert (await post_action(api, "/dashboard/actions/unit/hello-1.service/start"))[0] == 200
    assert (await api.registry.get_unit("hello-1.service")).desired_state is DesiredState.LAUNCHED
    assert (await post_action(api, f"/dashboard/actions/machine/{MID_B}/drain"))[0] == 200
    assert (await api.registry.get_machine(MID_B)).draining
    assert (await post_action(api, f"/dashboard/actions/machine/{MID_B}/undrain"))[0] == 200
    assert not (await api.registry.get_machine(MID_B)).draining
    assert (await post_action(api, "/dashboard/actions/unit/hello-1.service/destroy"))[0] == 200
    assert await api.registry.get_unit("hello-1.service") is None
    status, body = await post_action(api, "/dashboard/actions/unit/hello-1.service/stop")
    assert status == 404 and body["error"]["code"] == 404
    assert (await post_action(api, "/dashboard/actions/unit/hello-2.service/explode"))[0] == 404
    assert (await post_action(api, "/dashboard/actions/machine/nope/drain"))[0] == 404
    async with api.session.get(api.base + "/dashboard/actions/unit/hello-2.service/stop") as resp:
        assert resp.status == 405


async def test_read_only_client_sees_no_buttons_and_is_refused(read_only_api):
    api = read_only_api
    await cluster(api.registry)
    for path in ("/", "/dashboard/units/hello-1.service"):
        status, html = await get_text(api, path)
        assert status == 200 and "hello-1.service" in html
        assert "data-action" not in html and 'data-role="read-only"' in html
    for path in ("/dashboard/actions/unit/hello-1.service/stop", f"/dashboard/actions/machine/{MID_B}/drain"):
        status, body = await post_action(api, path)
        assert status == 403 and body == {"error": {"code": 403, "message": body["error"]["message"]}}
        assert "read-only" in body["error"]["message"]
    assert (await api.registry.get_unit("hello-1.service")).desired_state is DesiredState.LAUNCHED
    # the unix socket is an operator's, whatever TCP clients are
    connector = aiohttp.UnixConnector(path=api.server.unix_paths[0])
    async with aiohttp.ClientSession(connector=connector) as local:
        async with local.get("http://fleet/") as resp:
            html = await resp.text()
            assert 'data-role="operator"' in html and "data-action" in html
        async with local.post("http://fleet/dashboard/actions/unit/hello-1.service/stop",
                              headers={"X-Fleet-Dashboard": "1"}) as resp:
            assert resp.status == 200
    assert (await api.registry.get_unit("hello-1.service")).desired_state is DesiredState.LOADED


def test_unknown_role_is_refused_at_start(tmp_path):
    from fleetd.config import load_config
    from fleetd.errors import ConfigError

    (tmp_path / "fleet.conf").write_text("api_tcp_role=admin\n")
    with pytest.raises(ConfigError, match="api_tcp_role: 'admin' is not a role"):
        load_config(tmp_path / "fleet.conf", env={})
    assert load_config(tmp_path / "fleet.conf", env={}, overrides={"api_tcp_role": "read-only"}).api_tcp_role == "read-only"


# ---------------------------------------------------------------------------- functional core


def test_rows_from_a_view():
    view = ClusterView(revision=7, leader=MID_A)
    view.machines = {MID_A: Machine(MID_A, "10.0.0.1"), MID_B: Machine(MID_B, "10.0.0.2", draining=True)}
    view.units = {n: Unit(n, HELLO, DesiredState.LAUNCHED) for n in ("b.service", "a.service", "z.service")}
    view.placements = {n: Placement(n, MID_B, HELLO.hash, DesiredState.LAUNCHED) for n in view.units}
    view.states = {"z.service": {MID_B: UnitState("z.service", MID_B, HELLO.hash, "loaded", "failed", "failed")},
                   "a.service": {MID_B: UnitState("a.service", MID_B, HELLO.hash, "loaded", "active", "running")}}
    rows = dashboard.unit_rows(view)
    assert [r.name for r in rows] == ["z.service", "a.service", "b.service"]
    assert rows[1].current == "launched" and rows[1].active == "active" and rows[1].machine_ip == "10.0.0.2"
    assert rows[2].current == "inactive" and rows[2].active == ""  # no state reported yet
    gone = {"c" * 32: Machine("c" * 32, "10.0.0.3")}
    machines = dashboard.machine_rows(view, gone)
    assert [(m.ip, m.leader, m.draining, m.gone, m.units, m.active) for m in machines] == [
        ("10.0.0.1", True, False, False, 0, 0), ("10.0.0.2", False, True, False, 2, 1),
        ("10.0.0.3", False, False, True, 0, 0)]
    assert dashboard.counts_of(view, gone) == {"machines": 2, "gone": 1, "units": 3, "active": 1, "failed": 1}
    assert dashboard.human_bytes(268435456) == "256.0 MiB" and dashboard.human_bytes(0) == "0"


async def test_cluster_watch_stops_when_nobody_looks(api):
    leases = await cluster(api.registry)
    feed = api.server.context.extras[dashboard.FEED_KEY] = dashboard.ClusterFeed(api.registry, idle_stop=0.3)
    _, html = await get_text(api, "/")
    assert feed.running and feed.starts == 1
    async with Events(api, f"view=overview&since={revision_of(html)}") as events:
        await events.next()
        await asyncio.sleep(0.6)
        assert feed.running  # a page is open
    async with asyncio.timeout(5):
        while feed.running:
            await asyncio.sleep(0.05)
    # a machine that left while nobody looked is still shown gone on the next page
    await api.registry.revoke_lease(leases[MID_B])
    _, html = await get_text(api, "/")
    assert feed.starts == 2 and re.search(rf'<tr id="m-{MID_B}" [^>]*class="gone', html)


async def test_unit_page_renders_a_container_unit_as_its_machine_would(api):
    from fleetd.container.render import NodeFacts
    from fleetd.registry.images import ImageDirectory, ImageRecord, MachineImages

    leases = await cluster(api.registry)
    web = UnitFile.parse("[Unit]\nDescription=web\n\n[X-Container]\nImage=busybox\nCommand=httpd -f -p 8080\n")
    assert await api.registry.create_unit(Unit("web.service", web, DesiredState.LAUNCHED))
    await api.registry.apply_schedule(fence_machine_id=MID_A,
                                      place=[Placement("web.service", MID_B, web.hash, DesiredState.LAUNCHED)])
    status, html = await get_text(api, "/dashboard/units/web.service")
    assert status == 200 and "rendered unit" in html and "publishes no image record" in html
    digest = "sha256:" + "1" * 64
    await ImageDirectory(api.registry).publish(MachineImages(
        MID_B, facts=NodeFacts(fleet_run="/opt/fleet/bin/fleet-run").to_json(),
        images=(ImageRecord(digest, ("busybox",), 1, "/var/lib/fleet/images/rootfs/1"),)), leases[MID_B])
    status, html = await get_text(api, "/dashboard/units/web.service")
    rendered = re.search(r'<pre id="unit-rendered">(.*?)</pre>', html, re.S).group(1)
    assert "ExecStart=/opt/fleet/bin/fleet-run" in rendered and "httpd" in rendered and "\n[X-Container]" not in rendered
    assert "[X-Container]" in re.search(r'<pre id="unit-file">(.*?)</pre>', html, re.S).group(1)


_ACTIVE = ["active", "failed", "inactive", "activating"]


@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(list(DesiredState)), st.integers(0, 3),
                          st.sampled_from(_ACTIVE + [""])), max_size=25),
       st.integers(1, 4))
def test_rows_and_counts_agree_for_any_view(specs, machines):
    """Failed units first, then by name; counts match the rows; every placed unit's row names its machine."""
    view = ClusterView(revision=1)
    ids = [f"{i:032x}" for i in range(machines)]
    view.machines = {m: Machine(m, f"10.0.0.{i}") for i, m in enumerate(ids)}
    for number, desired, where, active in specs:
        name = f"u{number}.service"
        machine = ids[where % machines]
        view.units[name] = Unit(name, HELLO, desired)
        view.placements[name] = Placement(name, machine, HELLO.hash, desired)
        if active:
            view.states[name] = {machine: UnitState(name, machine, HELLO.hash, "loaded", active, "x")}
        else:
            view.states.pop(name, None)
    rows = dashboard.unit_rows(view)
    assert [r.name for r in rows] == sorted(view.units, key=lambda n: (not dashboard.unit_row(view, n).failed, n))
    assert all(r.machine_id == view.placements[r.name].machine_id for r in rows)
    counts = dashboard.counts_of(view, {})
    assert counts["units"] == len(rows) and counts["failed"] == sum(r.failed for r in rows)
    assert counts["active"] == sum(r.current == "launched" for r in rows)
    per_machine = dashboard.machine_rows(view, {})
    assert sum(m.units for m in per_machine) == sum(len(s) for s in view.states.values())
