"""The change feed's units built from its shared watch (fleetd/api/feed_records.py) on a real
fleetd API and real etcd: after each change, a long poll's `units` equal a fresh read
(GET /units?unitName=..., the registry's transaction) made right after, and come without a
registry read while the hub can tell them; where it cannot (a unit created after the wait's
read, a new body), the answer is read from etcd as before, and equal all the same."""

from __future__ import annotations

import time

from fleetd.api.feed_records import UNKNOWN, KeyKinds, Seed, fold, placement_of
from fleetd.model import DesiredState, Placement, Unit, UnitState
from fleetd.registry import codec
from fleetd.registry.stores import UnitRecord
from fleetd.unit.file import UnitFile

import test_api_watch
from _depth import examples
from _api_server import publish_state
from test_api_watch import BODY, MID, get

server = test_api_watch.server
OTHER = "fedcba9876543210fedcba9876543210"
NAMES = ["a.service", "b.service", "c.service", "d.service"]
KINDS = KeyKinds("p/job/", "p/schedule/", "p/states/")


def count_reads(server) -> list:
    reg = server.harness.server.context.registry
    calls, real = [], reg.unit_records

    async def unit_records(names, **kw):
        calls.append(list(names))
        return await real(names, **kw)

    reg.unit_records = unit_records
    return calls


def hub_of(server):
    return server.harness.server.context.extras["feed_hub"]


def sealed(server, names) -> None:
    """The wait's first read is kept as seeds once its bounding revision came (after the answer)."""
    deadline = time.monotonic() + 10
    while not all(n in hub_of(server).seeds for n in names):
        assert time.monotonic() < deadline, "the read was never kept as seeds"
        time.sleep(0.01)


def query(names) -> str:
    return "&".join(f"unitName={n}" for n in names)


def fresh(server, names) -> list:
    status, found = get(server, f"/fleet/v1/units?{query(names)}")
    assert status == 200
    return found.get("units", [])


def test_answers_equal_a_fresh_read_and_need_no_read(server):
    reg, run = server.registry, server.run
    run(reg.create_unit(Unit("a.service", BODY, DesiredState.LAUNCHED)))
    run(reg.create_unit(Unit("b.service", BODY)))
    run(reg.campaign(MID, server.lease))
    reads = count_reads(server)
    status, first = get(server, f"/fleet/v1/_watch/units?{query(NAMES)}&units=true")
    assert status == 200 and first["units"] == fresh(server, NAMES)
    sealed(server, NAMES)
    since, before = first["revision"], len(reads)
    steps = [
        lambda: reg.apply_schedule(fence_machine_id=MID, place=[
            Placement("a.service", MID, BODY.hash, DesiredState.LAUNCHED)]),
        lambda: publish_state(reg, server.lease, "a.service", MID, BODY.hash, "activating", "start"),
        lambda: publish_state(reg, server.lease, "a.service", MID, BODY.hash),
        lambda: reg.set_desired_state(["b.service"], DesiredState.LOADED),
        lambda: publish_state(reg, server.lease, "b.service", OTHER, BODY.hash, "inactive", "dead"),
        lambda: reg.apply_schedule(fence_machine_id=MID, place=[
            Placement("b.service", OTHER, BODY.hash, DesiredState.LOADED)]),
        lambda: reg.set_desired_state(["a.service"], DesiredState.INACTIVE),
        lambda: reg.apply_schedule(fence_machine_id=MID, unplace=[("a.service", MID)]),
        lambda: reg.delete_states(["a.service"], MID),
        lambda: reg.destroy_units(["b.service"]),
    ]
    for step in steps:
        run(step())
        status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&{query(NAMES)}&units=true")
        assert status == 200 and answer["changed"] is True
        assert answer["units"] == fresh(server, NAMES)
        since = answer["revision"]
    assert len(reads) == before + len(steps)  # the fresh reads only: every answer came from the hub
    assert [u["name"] for u in answer["units"]] == ["a.service"]

    # a unit created after the read (its states before it were not read): read from etcd
    run(reg.create_unit(Unit("d.service", BODY, DesiredState.LAUNCHED)))
    before = len(reads)
    status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&{query(NAMES)}&units=true")
    assert answer["units"] == fresh(server, NAMES) and [u["name"] for u in answer["units"]] == ["a.service", "d.service"]
    assert len(reads) == before + 2  # the answer's own read and the fresh one
    sealed(server, ["d.service"])
    # that read is kept in its turn: the next change is answered from the hub again
    since = answer["revision"]
    run(publish_state(reg, server.lease, "d.service", MID, BODY.hash))
    before = len(reads)
    deadline = time.monotonic() + 10
    while hub_of(server).seeds["d.service"].high > hub_of(server).position:  # its bound came before the report
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&{query(NAMES)}&units=true")
    assert answer["units"] == fresh(server, NAMES)
    assert len(reads) == before + 1
    # a new body for a unit: read
    other = UnitFile.parse("[Service]\nExecStart=/bin/sleep 2000\n")
    since = answer["revision"]
    run(reg.replace_unit(Unit("a.service", other, DesiredState.INACTIVE)))
    before = len(reads)
    status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&{query(NAMES)}&units=true")
    assert answer["units"] == fresh(server, NAMES)
    assert len(reads) == before + 2


def test_a_poll_without_a_kept_read_reads(server):
    """No read of the units before (a poll straight away): read from etcd, as before."""
    reg, run = server.registry, server.run
    run(reg.create_unit(Unit("a.service", BODY, DesiredState.LAUNCHED)))
    since = get(server, "/fleet/v1/_watch/units")[1]["revision"]
    reads = count_reads(server)
    run(publish_state(reg, server.lease, "a.service", MID, BODY.hash))
    status, answer = get(server, f"/fleet/v1/_watch/units?since={since}&timeout=20&unitName=a.service&units=true")
    assert answer["units"] == fresh(server, ["a.service"])
    assert len(reads) == 2


# ---------------------------------------------------------------- fold, pure

def record(name="a.service", body=BODY, desired=DesiredState.LAUNCHED, placement=None, states=()):
    return UnitRecord(Unit(name, body, desired), placement, tuple(states))


def state(machine, active="active"):
    return UnitState("a.service", machine, BODY.hash, "loaded", active, "running")


def test_fold_applies_each_keys_last_change():
    seed = Seed(record(), 10, 12)
    place = Placement("a.service", MID, BODY.hash, DesiredState.LAUNCHED)
    changes = [
        (f"p/schedule/{MID}/a.service", codec.encode_target(BODY.hash, DesiredState.LAUNCHED)),
        (f"p/states/a.service/{OTHER}", codec.encode_state(state(OTHER, "failed"))),
        (f"p/states/a.service/{MID}", codec.encode_state(state(MID, "activating"))),
        (f"p/states/a.service/{MID}", codec.encode_state(state(MID))),
        ("p/job/a.service", codec.encode_job("a.service", BODY.hash, DesiredState.LOADED)),
    ]
    assert fold(seed, changes, KINDS) == record(desired=DesiredState.LOADED, placement=place,
                                                states=(state(MID), state(OTHER, "failed")))
    # nothing changed: the seed; deleted: none; deleted and created again with the same body: known
    assert fold(seed, [], KINDS) == seed.record
    assert fold(seed, [("p/job/a.service", None)], KINDS) is None
    assert fold(seed, [("p/job/a.service", None),
                       ("p/job/a.service", codec.encode_job("a.service", BODY.hash, DesiredState.INACTIVE))],
                KINDS) == record(desired=DesiredState.INACTIVE)
    # a placement and a state removed
    full = Seed(record(placement=place, states=(state(MID),)), 10, 10)
    assert fold(full, [(f"p/schedule/{MID}/a.service", None), (f"p/states/a.service/{MID}", None)], KINDS) == record()


def test_fold_cannot_tell_a_new_unit_or_body():
    created = [("p/job/a.service", codec.encode_job("a.service", BODY.hash, DesiredState.LAUNCHED))]
    assert fold(Seed(None, 1, 1), created, KINDS) is UNKNOWN
    assert fold(Seed(None, 1, 1), [(f"p/states/a.service/{MID}", codec.encode_state(state(MID)))], KINDS) is None
    other = UnitFile.parse("[Service]\nExecStart=/bin/true\n")
    assert fold(Seed(record(), 1, 1), [("p/job/a.service", codec.encode_job("a.service", other.hash,
                                                                             DesiredState.LAUNCHED))], KINDS) is UNKNOWN


def test_a_value_that_is_no_record_cannot_be_told():
    assert fold(Seed(record(), 1, 1), [(f"p/states/a.service/{MID}", b"")], KINDS) is UNKNOWN
    assert fold(Seed(record(), 1, 1), [("p/job/a.service", b'{"name": "a.service"}')], KINDS) is UNKNOWN


def test_placement_as_the_registry_chooses_it():
    on = {m: Placement("a.service", m, BODY.hash, DesiredState.LAUNCHED) for m in (MID, OTHER)}
    assert placement_of({}, (state(MID),)) is None
    assert placement_of({OTHER: on[OTHER]}, (state(MID),)) == on[OTHER]  # not reported: found anywhere
    assert placement_of(on, (state(OTHER),)) == on[OTHER]  # on a reporting machine first
    assert placement_of(on, (state(MID), state(OTHER))) == on[OTHER]  # the last of them
    assert placement_of(on, ()) == on[OTHER]  # the last in key order


# a property: a seed read at any point of a history, folded with the changes after it, gives
# what a read at the end gives (the read modelled on the keys as etcd holds them)

from hypothesis import given, settings, strategies as st  # noqa: E402

MACHINES = (MID, OTHER)
SECOND = UnitFile.parse("[Service]\nExecStart=/bin/sleep 3000\n")


def change_strategy():
    job = st.tuples(st.just("job"), st.sampled_from(["launched", "loaded", "inactive", None]))
    place = st.tuples(st.just("schedule"), st.sampled_from(MACHINES), st.booleans())
    report = st.tuples(st.just("states"), st.sampled_from(MACHINES),
                       st.sampled_from(["active", "failed", "activating", None]))
    return st.one_of(job, place, report)


def as_key_change(change, body):
    kind = change[0]
    if kind == "job":
        value = None if change[1] is None else codec.encode_job("a.service", body.hash, DesiredState(change[1]))
        return "p/job/a.service", value
    if kind == "schedule":
        value = codec.encode_target(body.hash, DesiredState.LAUNCHED) if change[2] else None
        return f"p/schedule/{change[1]}/a.service", value
    value = None if change[2] is None else codec.encode_state(state(change[1], change[2]))
    return f"p/states/a.service/{change[1]}", value


def read(keys: dict, body) -> UnitRecord | None:
    """What Registry.unit_records returns for the keys held (fleetd/registry/views.py)."""
    if "p/job/a.service" not in keys:
        return None
    _, _, desired = codec.decode_job(keys["p/job/a.service"])
    states = sorted((codec.decode_state(v) for k, v in keys.items() if k.startswith("p/states/")),
                    key=lambda s: s.machine_id)
    placements = {k.split("/")[2]: codec.decode_placement("a.service", k.split("/")[2], v)
                  for k, v in sorted(keys.items()) if k.startswith("p/schedule/")}
    found = None
    for s in states:
        found = placements.get(s.machine_id, found)
    if found is None and placements:
        found = placements[sorted(placements)[-1]]
    return UnitRecord(Unit("a.service", body, desired), found, tuple(states))


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(change_strategy(), max_size=25), st.data())
def test_fold_of_a_seed_and_the_changes_after_equals_a_read(changes, data):
    history = [as_key_change(c, BODY) for c in changes]
    # one placement of a unit at a time, as the engine writes them: a placement moves
    keys: dict = {}
    kept = []
    for key, value in history:
        if key.startswith("p/schedule/") and value is not None:
            for other in [k for k in keys if k.startswith("p/schedule/") and k != key]:
                kept.append((other, None))
                del keys[other]
        kept.append((key, value))
        if value is None:
            keys.pop(key, None)
        else:
            keys[key] = value
    at = data.draw(st.integers(0, len(kept)))
    before: dict = {}
    for key, value in kept[:at]:
        if value is None:
            before.pop(key, None)
        else:
            before[key] = value
    seed = Seed(read(before, BODY), at, at)
    # a change the read saw already may come again (the read was between low and high)
    again = data.draw(st.integers(0, at))
    result = fold(seed, kept[at - again:], KINDS)
    seen_job_created = seed.record is None and any(k == "p/job/a.service" and v is not None for k, v in kept[at - again:])
    if seen_job_created:
        assert result is UNKNOWN
    else:
        assert result == read(keys, BODY)
