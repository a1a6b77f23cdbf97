"""The registry's performance features against a real etcd: request counting, cached snapshot
decoding, one-transaction machine views, pipelined schedule writes; the engine's idle skip."""

from __future__ import annotations

import asyncio

import pytest

from fleetd.engine.leader import Engine
from fleetd.model import DesiredState, Machine, Placement, Unit
from fleetd.registry import NotLeader, Registry, RequestCounter
from fleetd.registry.connection import _CountedUnary
from fleetd.registry.registry import MAX_TXN_OPS
from fleetd.unit.file import UnitFile

MID_A = "a" * 32
MID_B = "b" * 32


def unit(name: str, state: DesiredState = DesiredState.LAUNCHED, extra: str = "") -> Unit:
    text = f"[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/sleep 1000\n{extra}"
    return Unit(name, UnitFile.parse(text), state)


async def test_counter_counts_requests_and_protobuf_bytes(etcd_settings):
    counter = RequestCounter()
    async with await Registry.connect(etcd_settings, counter=counter) as reg:
        await reg.current_revision()  # one empty Txn
        assert counter.requests == 1
        assert counter.calls == {"KV/Txn": 1}
        assert counter.sent_bytes["KV/Txn"] == 0  # an empty TxnRequest
        assert counter.received_bytes["KV/Txn"] > 0  # its header

        before = counter.copy()
        await reg.create_units([unit("a.service"), unit("b.service")])
        delta = counter - before
        assert delta.calls == {"KV/Txn": 1}
        body = unit("a.service").file.serialize().encode()
        assert delta.bytes_sent > 2 * len(body)  # both bodies and both jobs went out

        before = counter.copy()
        revision = await reg.current_revision()
        events = []

        async def watch():
            async for event in reg.watch([reg.keys.jobs], revision + 1):
                events.append(event)
                return

        task = asyncio.create_task(watch())
        while not (counter - before).sent.get("Watch/Watch"):
            await asyncio.sleep(0.01)
        await reg.set_desired_state(["a.service"], DesiredState.LOADED)
        await asyncio.wait_for(task, 5)
        delta = counter - before
        assert events and events[0].key.endswith("/a.service")
        assert delta.sent["Watch/Watch"] >= 1  # the create request
        assert delta.received["Watch/Watch"] >= 2  # "created" and the event
        assert delta.received_bytes["Watch/Watch"] > len(b"a.service")
        lease = await reg.grant_lease(5)
        await reg.keepalive(lease)
        assert counter.calls["Lease/LeaseGrant"] == 1 and counter.sent["Lease/LeaseKeepAlive"] == 1
        summary = counter.as_dict()
        assert summary["requests"] == counter.requests
        assert RequestCounter.from_dict(summary).as_dict() == summary


async def test_no_counter_means_aetcd_stubs(registry: Registry):
    await registry.current_revision()
    assert registry.connection.counter is None
    assert not isinstance(registry.connection.client.kvstub.Txn, _CountedUnary)


async def test_snapshot_cache_follows_changes(registry: Registry):
    await registry.create_units([unit(f"u{i}.service") for i in range(5)])
    lease = await registry.grant_lease(10)
    await registry.register_machine(Machine(MID_A, metadata={"role": "web"}), lease)
    first = await registry.snapshot()
    second = await registry.snapshot()
    assert first == second
    assert all(second.units[n] is first.units[n] for n in first.units)  # decoded once

    await registry.set_desired_state(["u1.service"], DesiredState.INACTIVE)
    await registry.destroy_units(["u2.service"])
    await registry.set_machine_metadata(MID_A, "role", "db")
    await registry.campaign(MID_A, lease)
    await registry.apply_schedule(fence_machine_id=MID_A, place=[
        Placement("u0.service", MID_A, first.units["u0.service"].hash, DesiredState.LAUNCHED)])
    third = await registry.snapshot()
    assert third.units["u1.service"].desired_state is DesiredState.INACTIVE
    assert "u2.service" not in third.units
    assert third.units["u3.service"] is first.units["u3.service"]
    assert third.machines[MID_A].metadata == {"role": "db"}
    assert set(third.placements) == {"u0.service"}
    await registry.revoke_lease(lease)
    assert (await registry.snapshot()).machines == {}


async def test_machine_view_is_one_transaction(etcd_settings):
    counter = RequestCounter()
    async with await Registry.connect(etcd_settings, counter=counter) as reg:
        lease = await reg.grant_lease(10)
        await reg.register_machine(Machine(MID_A, metadata={"role": "web"}), lease)
        await reg.set_machine_metadata(MID_A, "disk", "ssd")
        await reg.campaign(MID_A, lease)
        g = unit("g.service", extra="[X-Fleet]\nGlobal=true\n")
        await reg.apply_schedule(
            fence_machine_id=MID_A,
            place=[Placement("a.service", MID_A, "h1", DesiredState.LOADED),
                   Placement("b.service", MID_B, "h2", DesiredState.LAUNCHED)],
            publish_globals=[("g.service", g.hash, DesiredState.LAUNCHED)],
        )
        before = counter.copy()
        view = await reg.machine_view(MID_A)
        assert (counter - before).requests == 1
        assert view.placements == {"a.service": Placement("a.service", MID_A, "h1", DesiredState.LOADED)}
        assert view.globals == {"g.service": (g.hash, DesiredState.LAUNCHED)}
        assert view.machine.metadata == {"role": "web", "disk": "ssd"}
        assert view.revision == await reg.current_revision()
        assert (await reg.machine_view(MID_B)).machine is None


async def test_large_schedule_write_removes_before_it_adds(registry: Registry):
    count = MAX_TXN_OPS + 30  # several transactions per phase
    lease = await registry.grant_lease(10)
    await registry.campaign(MID_A, lease)
    old = [Placement(f"u{i:03d}.service", MID_A, "h", DesiredState.LAUNCHED) for i in range(count)]
    await registry.apply_schedule(fence_machine_id=MID_A, place=old)
    revision = await registry.current_revision()
    moved = [Placement(p.name, MID_B, "h", DesiredState.LAUNCHED) for p in old]
    txns = await registry.apply_schedule(
        fence_machine_id=MID_A, unplace=[(p.name, MID_A) for p in old], place=moved)
    assert txns == 4
    deletes, puts = [], []

    async def collect():
        async for event in registry.watch([registry.keys.schedule], revision + 1):
            (puts if event.value is not None else deletes).append(event.revision)
            if len(deletes) + len(puts) == 2 * count:
                return

    await asyncio.wait_for(collect(), 10)
    assert max(deletes) < min(puts)
    placements = await registry.placements()
    assert {p.machine_id for p in placements.values()} == {MID_B} and len(placements) == count
    with pytest.raises(NotLeader):
        await registry.apply_schedule(fence_machine_id=MID_B, place=old)


async def test_engine_skips_only_unchanged_idle_inputs(registry: Registry):
    lease = await registry.grant_lease(10)
    await registry.register_machine(Machine(MID_A), lease)
    await registry.campaign(MID_A, lease)
    engine = Engine(registry, MID_A, interval=1.0)
    await registry.create_units([unit("a.service")])
    await engine.reconcile(await registry.snapshot())  # places a.service
    assert engine.stats.placements == 1
    await engine.reconcile(await registry.snapshot())  # the write changed the input: runs
    await engine.reconcile(await registry.snapshot())  # same input as an idle pass: no reconcile()
    # (answered by the incremental planner, whose base is the idle pass, or skipped)
    assert (engine.stats.passes, engine.stats.skipped_passes + engine.stats.planned_passes) == (2, 1)
    await registry.create_units([unit("b.service")])
    await engine.reconcile(await registry.snapshot())
    assert engine.stats.placements == 2
    assert set(await registry.placements()) == {"a.service", "b.service"}


async def test_engine_view_takes_new_bodies_from_its_watch_without_reading_them(etcd_settings):
    """A new unit's body and job come in one transaction; the engine's view watches both, so
    its pass finds the body in the registry's cache and reads nothing from etcd for it."""
    from fleetd.engine.view import ClusterView

    counter = RequestCounter()
    async with await Registry.connect(etcd_settings, counter=counter) as reg, \
            await Registry.connect(etcd_settings) as client:
        view = ClusterView(reg)
        snap = await view.load()
        events: list = []
        await client.create_units([unit("new.service"), unit("other.service", extra="Environment=X=1\n")])
        target = await client.current_revision()
        async for event in reg.watch(view.prefixes, snap.revision + 1):
            events.append(event)
            if event.revision >= target and len(events) == 4:  # 2 bodies + 2 jobs
                break
        assert sorted(e.key.rsplit("/", 2)[-2] for e in events) == ["job", "job", "unit", "unit"]
        before = counter.copy()
        await view.apply(events)
        assert _reads(counter - before) == {}
        assert view.snapshot().units == (await reg.snapshot()).units
        assert set(view.units) == {"new.service", "other.service"}

        # without the body's event (e.g. it arrives later), the body is read: same result
        await client.create_units([unit("late.service")])
        target = await client.current_revision()
        jobs_only = [e async for e in _until(reg.watch([reg.keys.jobs], target), target)]
        before = counter.copy()
        await view.apply(jobs_only)
        assert _reads(counter - before) == {"KV/Txn": 1}
        assert view.units["late.service"] == unit("late.service")

        # a deleted body key withdraws its offer: the unit is then ignored, as a full read does
        reg.offer_body("f" * 40, b"[Service]\nExecStart=/bin/true\n")
        reg.offer_body("f" * 40, None)
        assert await reg.bodies(["f" * 40]) == {}


def _reads(delta: RequestCounter) -> dict[str, int]:
    return {method: n for method, n in delta.calls.items() if method.startswith("KV/") and n}


async def _until(events, revision: int):
    async for event in events:
        yield event
        if event.revision >= revision:
            return


async def test_machine_view_prefetches_the_bodies_its_watch_named(etcd_settings):
    """An agent woken by schedule events reads its view and the new units' bodies in one
    transaction (`prefetch`, hashes from `target_hashes`); bodies() then reads nothing."""
    counter = RequestCounter()
    async with await Registry.connect(etcd_settings, counter=counter) as reg, \
            await Registry.connect(etcd_settings) as engine:
        lease = await engine.grant_lease(10)
        await engine.register_machine(Machine(MID_A), lease)
        await engine.campaign(MID_A, lease)
        units = [unit(f"p{i}.service") for i in range(3)]
        await engine.create_units(units)
        start = await reg.current_revision() + 1
        await engine.apply_schedule(fence_machine_id=MID_A,
                                    place=[Placement(u.name, MID_A, u.hash, DesiredState.LAUNCHED) for u in units])
        events = []
        async for event in reg.watch([reg.keys.machine_schedule(MID_A), reg.keys.globals], start):
            events.append(event)
            if len(events) == 3:
                break
        hashes = reg.target_hashes(events + [type(events[0])(reg.keys.job("x.service"), b"{}", 1)])
        assert sorted(hashes) == sorted(u.hash for u in units)  # job/ events are not targets
        before = counter.copy()
        view = await reg.machine_view(MID_A, prefetch=hashes + ["0" * 40])  # an unknown hash: absent
        bodies = await reg.bodies([p.hash for p in view.placements.values()])
        first = counter - before
        assert first.calls["KV/Txn"] == 1  # (the watch's cancel may be counted too)
        assert {h: f.serialize() for h, f in bodies.items()} == {u.hash: u.file.serialize() for u in units}
        before = counter.copy()
        await reg.machine_view(MID_A, prefetch=hashes)  # known now: not read again
        again = counter - before
        assert again.sent_bytes["KV/Txn"] < first.sent_bytes["KV/Txn"] - 3 * len(reg.keys.body(units[0].hash))
