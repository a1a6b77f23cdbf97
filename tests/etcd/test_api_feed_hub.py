"""The change feed's shared watch (fleetd/api/feed.py) on a real fleetd API and real etcd: long
polls are answered from one registry watch per server (none of their own), with the same answers
as a watch of their own; a poll the hub cannot answer (since before its start, its log trimmed
past since) watches by itself."""

from __future__ import annotations

import fleetd.api.feed
from fleetd.model import DesiredState, Placement, Unit

import test_api_watch
from _api_server import publish_state
from test_api_watch import BODY, MID, get, later

server = test_api_watch.server  # the same fixture: a threaded API server with its machine registered


def count_watches(server) -> list:
    """Every registry watch opened from now on: its prefixes."""
    reg = server.harness.server.context.registry
    opened, real = [], reg.watch

    def watch(prefixes, start_revision):
        opened.append(list(prefixes))
        return real(prefixes, start_revision)

    reg.watch = watch
    return opened


def revision(server) -> int:
    return get(server, "/fleet/v1/_watch/units")[1]["revision"]


def test_polls_are_answered_from_one_watch(server):
    opened = count_watches(server)
    since = revision(server)  # starts the hub
    assert len(opened) == 1
    for i in range(4):
        name = f"u{i}.service"
        server.run(server.registry.create_unit(Unit(f"other{i}.service", BODY)))  # not waited for
        # a change made before the poll answers at once; one made while it waits, when made
        if i % 2:
            server.run(publish_state(server.registry, server.lease, name, MID, BODY.hash))
            status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName={name}")
        else:
            state = later(0.2, lambda n=name: server.run(publish_state(server.registry, server.lease, n, MID, BODY.hash)))
            status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName={name}")
            state.join()
        assert status == 200 and answer["changed"] is True
        assert answer["revision"] == revision(server)  # the state, not the other unit's creation before it
        # without names: the first change after since (the other unit's creation; its own
        # revision, not answer - 1: etcd's revisions are global, and a lease of an earlier test
        # on the worker's etcd may expire, a delete elsewhere, between the creation and the state)
        created = server.run(server.registry.core.get(server.registry.keys.job(f"other{i}.service"))).mod_revision
        assert since < created < answer["revision"]
        assert get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20")[1] == {
            "revision": created, "changed": True}
        since = answer["revision"]
    assert get(server, f"/fleet/v1/_watch/units?since={since}&timeout=0.2") == (
        200, {"revision": since, "changed": False})
    assert len(opened) == 1, opened


def test_a_poll_from_before_the_hubs_start_watches_by_itself(server):
    opened = count_watches(server)
    before = server.run(server.registry.current_revision())
    server.run(server.registry.create_unit(Unit("a.service", BODY)))
    server.run(server.registry.create_unit(Unit("b.service", BODY)))
    # the hub starts with this poll, after both creations: it cannot tell what came after `before`
    status, answer = get(server, f"/fleet/v1/_watch/units?since={before}&timeout=20&unitName=b.service")
    assert status == 200 and answer == {"revision": before + 2, "changed": True}
    assert len(opened) == 2  # the hub's and the poll's own


def test_a_log_trimmed_past_since_falls_back(server, monkeypatch):
    monkeypatch.setattr(fleetd.api.feed, "LOG_MAX", 4)
    opened = count_watches(server)
    since = revision(server)
    names = [f"t{i}.service" for i in range(10)]
    for name in names:
        server.run(server.registry.create_unit(Unit(name, BODY)))
    last = revision(server)
    assert last == since + 10
    # the first change after since (dropped from the hub's log) and the last (kept)
    assert get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20") == (
        200, {"revision": since + 1, "changed": True})
    assert get(server, f"/fleet/v1/_watch/units?since={last - 1}&timeout=20&unitName={names[-1]}") == (
        200, {"revision": last, "changed": True})
    assert len(opened) == 2  # the hub's, and the poll from before its log's start


def test_a_poll_on_state_reports_is_not_answered_by_a_placement_a_report_follows(server):
    reg = server.registry
    server.run(reg.create_unit(Unit("w.service", BODY)))
    server.run(reg.campaign(MID, server.lease))
    since = revision(server)
    # the placement first, its state report 0.2 s later: the report answers
    server.run(reg.apply_schedule(fence_machine_id=MID, place=[Placement("w.service", MID, BODY.hash,
                                                                        DesiredState.LAUNCHED)]))
    placed = revision(server)
    state = later(0.2, lambda: server.run(publish_state(reg, server.lease, "w.service", MID, BODY.hash)))
    status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName=w.service&wake=states")
    state.join()
    # the report's own revision, not placed + 1: etcd's revisions are global, and a lease of an
    # earlier test expiring on the worker's etcd may fall in between
    reported = server.run(reg.core.get(reg.keys.state("w.service", MID))).mod_revision
    assert status == 200 and placed < reported and answer == {"revision": reported, "changed": True}
    # without wake=states (or wake=any) the placement answers
    for wake in ("", "&wake=any"):
        assert get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName=w.service{wake}")[1] == {
            "revision": placed, "changed": True}
    # no report follows (a job write): the change answers after the grace
    since = revision(server)
    server.run(reg.set_desired_state(["w.service"], DesiredState.LOADED))
    assert get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName=w.service&wake=states")[1] == {
        "revision": since + 1, "changed": True}
    assert get(server, "/fleet/v1/_watch/units?since=1&wake=sometimes")[0] == 400
