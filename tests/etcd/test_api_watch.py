"""The API's change feed (GET /fleet/v1/_watch/units, beyond fleet) and fleetctl's waits on it:
a real fleetd API server on real etcd. The feed answers on the first change of the named units
(an etcd watch, no polling); fleetctl's API driver checks once, then sleeps in the long-poll
until something changed, and falls back to polling against a server without the route."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

import pytest

import fleetctl.api_client
from fleetctl.api_client import ApiFleetClient
from fleetd.api.watch import unit_of_key
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.unit.file import UnitFile

from _api_server import ThreadedApiServer, publish_state, register_machine

MID = "0123456789abcdef0123456789abcdef"
BODY = UnitFile.parse("[Service]\nExecStart=/bin/sleep 1000\n")


@pytest.fixture
def server(etcd_settings, tmp_path):
    with ThreadedApiServer(etcd_settings, tmp_path / "srv", Machine(MID, "10.1.2.3")) as srv:
        srv.lease = srv.run(register_machine(srv.registry, MID, "10.1.2.3"))
        yield srv


def get(server, path: str, timeout: float = 30) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.harness.server.tcp_addresses[0], timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def later(seconds: float, fn) -> threading.Thread:
    def go():
        time.sleep(seconds)
        fn()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_unit_of_key():
    ranges = ("p/job/", "p/schedule/", "p/states/")
    assert unit_of_key("p/job/a@1.service", *ranges) == "a@1.service"
    assert unit_of_key(f"p/schedule/{MID}/a.service", *ranges) == "a.service"
    assert unit_of_key(f"p/states/a.service/{MID}", *ranges) == "a.service"
    assert unit_of_key("p/machines/x/object", *ranges) == ""


def test_feed_answers_the_first_change_of_the_named_units(server):
    status, now = get(server, "/fleet/v1/_watch/units")
    assert status == 200 and set(now) == {"revision"}
    since = now["revision"]
    # nothing changes: held for the timeout, then "unchanged" with the same revision
    started = time.monotonic()
    assert get(server, f"/fleet/v1/_watch/units?since={since}&timeout=0.3") == (200, {"revision": since, "changed": False})
    assert time.monotonic() - started >= 0.3
    # a change of another unit does not answer a watch of a.service; a.service's state does
    server.run(server.registry.create_unit(Unit("b.service", BODY)))  # after `since`: not a.service's
    state = later(0.3, lambda: server.run(publish_state(server.registry, server.lease, "a.service", MID, BODY.hash)))
    status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName=a.service")
    state.join()
    assert status == 200 and answer["changed"] is True
    _, after = get(server, "/fleet/v1/_watch/units")
    assert answer["revision"] == after["revision"] > since  # a's state is the last change
    # without names, any unit's change answers (b's creation, before a's state); a change
    # already made answers at once
    started = time.monotonic()
    status, first = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20")
    assert status == 200 and first["changed"] is True and since < first["revision"] < answer["revision"]
    assert time.monotonic() - started < 10
    # the same under fleet's old prefix; bad numbers are a 400
    assert get(server, "/v1-alpha/_watch/units")[0] == 200
    assert get(server, "/fleet/v1/_watch/units?since=x")[0] == 400
    assert get(server, "/fleet/v1/_watch/units?since=-1")[0] == 400


def test_a_compacted_revision_answers_at_once_with_the_current_one(server):
    _, now = get(server, "/fleet/v1/_watch/units")
    server.run(server.registry.create_unit(Unit("c.service", BODY)))
    _, current = get(server, "/fleet/v1/_watch/units")
    server.run(server.registry.core.connection.client.compact(current["revision"]))  # test-only: etcd's compaction
    assert get(server, f"/fleet/v1/_watch/units?since={now['revision']}&timeout=20") == (
        200, {"revision": current["revision"], "changed": True})


def _counting_wait(server, client: ApiFleetClient, delay: float) -> tuple[bool, int]:
    """client.wait() for a.service to be active; its state is published `delay` s later."""
    checks = 0

    async def check() -> bool:
        nonlocal checks
        checks += 1
        return any(s.active_state == "active" for s in await client.unit_states("a.service"))

    publisher = later(delay, lambda: server.run(publish_state(server.registry, server.lease, "a.service", MID, BODY.hash)))
    try:
        ok = asyncio.run(client.wait(check, 20, names=["a.service"]))
    finally:
        publisher.join()
    return ok, checks


def test_fleetctl_waits_sleep_in_the_feed_instead_of_polling(server):
    client = ApiFleetClient(server.unix_endpoint)
    try:
        assert client.feed_revision() is not None
        ok, checks = _counting_wait(server, client, 1.0)
    finally:
        asyncio.run(client.close())
    # polling (25 ms at first) would have checked about 25 times in that second; woken by the
    # feed, it checks once before and once after the change (once more if the first long-poll
    # was answered by the change of an unrelated key range of the same unit)
    assert ok and checks <= 3, checks


def test_fleetctl_waits_poll_against_a_server_without_the_feed(server, monkeypatch):
    monkeypatch.setattr(fleetctl.api_client, "WATCH_PATH", "/fleet/v1/_no_such_route")  # as fleet's own API
    client = ApiFleetClient(server.unix_endpoint)
    try:
        assert client.feed_revision() is None
        ok, checks = _counting_wait(server, client, 0.5)
    finally:
        asyncio.run(client.close())
    assert ok and checks > 3, checks


def test_fleetctl_start_blocks_on_the_feed_until_launched(server, tmp_path, monkeypatch):
    """`fleetctl start` (API driver): placed and reported by a stand-in engine+agent a while
    after the command set the desired state; the command returns with fleet's message."""
    from click.testing import CliRunner

    from fleetctl.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.service").write_text(BODY.serialize())
    stop = threading.Event()

    async def engine_and_agent() -> None:
        reg = server.registry
        while not stop.is_set():
            unit = await reg.get_unit("w.service")
            if unit is not None and unit.desired_state is DesiredState.LAUNCHED:
                await asyncio.sleep(0.3)
                await reg.apply_schedule(fence_machine_id=MID, place=[
                    Placement(unit.name, MID, unit.hash, unit.desired_state)])
                await publish_state(reg, server.lease, unit.name, MID, unit.hash)
                return
            await asyncio.sleep(0.05)

    server.run(server.registry.campaign(MID, server.lease))
    thread = threading.Thread(target=lambda: server.run(engine_and_agent(), timeout=60), daemon=True)
    thread.start()
    try:
        r = CliRunner().invoke(cli, [f"--endpoint={server.unix_endpoint}", "start", "--block-attempts=40", "w.service"])
    finally:
        stop.set()
        thread.join(10)
    assert (r.exit_code, r.output) == (0, "Unit w.service inactive\nUnit w.service launched on 01234567.../10.1.2.3\n"), r.stderr


def test_held_watches_stay_out_of_the_request_duration_metric(server):
    _, now = get(server, "/fleet/v1/_watch/units")
    get(server, f"/fleet/v1/_watch/units?since={now['revision']}&timeout=0.5")
    conn = http.client.HTTPConnection(server.harness.server.tcp_addresses[0], timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    slow = [line for line in text.splitlines() if line.startswith("fleet_api_request_duration_seconds_bucket")
            and 'le="0.25"' in line]
    counts = [line for line in text.splitlines() if line.startswith("fleet_api_request_duration_seconds_count")]
    assert slow and counts, text[:2000]
    # every observed request (the un-held GET of the revision included) was fast
    assert sum(float(l.rsplit(" ", 1)[1]) for l in slow) == sum(float(l.rsplit(" ", 1)[1]) for l in counts)


def test_api_driver_batches_on_kept_connections(server):
    """Batches (create, states of several units) go out on a kept pool of threads, each with its
    keep-alive connection; the answers are each unit's own, in the order asked."""
    client = ApiFleetClient(server.unix_endpoint)
    names = [f"s{i}.service" for i in range(5)]
    try:
        assert asyncio.run(client.create_units([Unit(n, BODY) for n in names])) == names
        for name in names[1:]:
            server.run(publish_state(server.registry, server.lease, name, MID, BODY.hash))
        server.run(publish_state(server.registry, server.lease, "s1.service.extra", MID, BODY.hash))
        for _ in range(2):
            states = asyncio.run(client.unit_states_named(list(reversed(names))))
            assert [s.name for s in states] == list(reversed(names[1:]))
        assert len(client._connections) <= 1 + len(names)  # the caller's and the pool's, not one per request
    finally:
        asyncio.run(client.close())
    assert client._connections == []


def test_feed_answers_with_the_named_units_read_after_its_revision(server):
    server.run(server.registry.create_unit(Unit("a.service", BODY, DesiredState.LAUNCHED)))
    server.run(server.registry.create_unit(Unit("b.service", BODY)))
    # at once: the revision, and the named units that exist, read after it (c.service: none)
    status, now = get(server, "/fleet/v1/_watch/units?unitName=a.service&unitName=c.service&units=true")
    assert status == 200 and set(now) == {"revision", "units"}
    assert [(u["name"], u["desiredState"], u["currentState"]) for u in now["units"]] == [
        ("a.service", "launched", "inactive")]
    # the first change after it answers with the units as they are after the change
    server.run(server.registry.campaign(MID, server.lease))
    server.run(server.registry.apply_schedule(
        fence_machine_id=MID, place=[Placement("a.service", MID, BODY.hash, DesiredState.LAUNCHED)]))
    state = later(0.3, lambda: server.run(publish_state(server.registry, server.lease, "a.service", MID, BODY.hash)))
    status, changed = get(server, f"/fleet/v1/_watch/units?since={now['revision']}&timeout=20"
                                  "&unitName=a.service&units=true")
    state.join()
    assert status == 200 and changed["changed"] is True and changed["revision"] > now["revision"]
    assert [u["name"] for u in changed["units"]] == ["a.service"]
    # read after the revision answered: at least as new as it (the placement at least)
    assert changed["units"][0]["machineID"] == MID
    # no change within the hold: no units; without unitName, `units` is ignored
    _, last = get(server, "/fleet/v1/_watch/units")
    assert get(server, f"/fleet/v1/_watch/units?since={last['revision']}&timeout=0.2&unitName=a.service&units=true") \
        == (200, {"revision": last["revision"], "changed": False})
    assert set(get(server, "/fleet/v1/_watch/units?units=true")[1]) == {"revision"}
