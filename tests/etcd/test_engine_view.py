"""The engine's watch-fed view equals a full re-read, after random operations on a real etcd."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _depth import examples
from fleetd.engine.view import ClusterView
from fleetd.errors import UnitNotFound
from fleetd.model import DesiredState, Machine, Placement
from fleetd.registry import Registry
from tests.unit.test_scheduler import unit

NAMES = [f"v{i}.service" for i in range(6)]
MACHINES = [f"{i:032x}" for i in range(1, 4)]

ops = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES), st.integers(0, 2)),      # body variant
    st.tuples(st.just("desired"), st.sampled_from(NAMES), st.sampled_from(list(DesiredState))),
    st.tuples(st.just("destroy"), st.sampled_from(NAMES)),
    st.tuples(st.just("place"), st.sampled_from(NAMES), st.sampled_from(MACHINES)),
    st.tuples(st.just("unplace"), st.sampled_from(NAMES), st.sampled_from(MACHINES)),
    st.tuples(st.just("metadata"), st.sampled_from(MACHINES), st.sampled_from(["a", "b", None])),
    st.tuples(st.just("drain"), st.sampled_from(MACHINES), st.booleans()),
)


async def _run(reg: Registry, sequence) -> None:
    lease = await reg.grant_lease(30)
    for mid in MACHINES:
        await reg.register_machine(Machine(mid), lease)
    assert await reg.campaign(MACHINES[0], lease)
    view = ClusterView(reg)
    snap = await view.load()
    assert view.take_changes() is None  # after a whole read: everything is news
    events: list = []
    got_some = asyncio.Event()

    async def watch() -> None:
        async for event in reg.watch(view.prefixes, snap.revision + 1):
            events.append(event)
            got_some.set()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.05)
        for op in sequence:
            kind = op[0]
            if kind == "create":
                await reg.destroy_units([op[1]])
                await reg.create_units([unit(op[1], service=f"Environment=V={op[2]}\n")])
            elif kind == "desired":
                try:
                    await reg.set_desired_state([op[1]], op[2])
                except UnitNotFound:
                    pass
            elif kind == "destroy":
                await reg.destroy_units([op[1]])
            elif kind == "place":
                u = unit(op[1])
                await reg.apply_schedule(fence_machine_id=MACHINES[0],
                                         place=[Placement(op[1], op[2], u.hash, DesiredState.LAUNCHED)])
            elif kind == "unplace":
                await reg.apply_schedule(fence_machine_id=MACHINES[0], unplace=[(op[1], op[2])])
            elif kind == "metadata":
                await reg.set_machine_metadata(op[1], "role", op[2])
            elif kind == "drain":
                await reg.set_draining(op[1], op[2])
        # one last write below every watched prefix: each prefix has a watch stream of its own
        # (delivered in order, but not in order with the others), so everything was delivered
        # once every stream has shown its last write
        sentinel = unit("zz-sentinel.service", service="Environment=SENTINEL=1\n")
        await reg.create_units([sentinel])
        last = {reg.keys.jobs: await reg.current_revision()}
        last[reg.keys.bodies] = last[reg.keys.jobs]
        await reg.apply_schedule(fence_machine_id=MACHINES[0], place=[
            Placement(sentinel.name, MACHINES[0], sentinel.hash, DesiredState.LAUNCHED)])
        last[reg.keys.schedule] = await reg.current_revision()
        await reg.set_machine_metadata(MACHINES[0], "sentinel", "1")
        last[reg.keys.machines] = await reg.current_revision()
        assert set(last) == set(view.prefixes)
        for _ in range(250):
            if all(any(e.key.startswith(p) and e.revision >= rev for e in events) for p, rev in last.items()):
                break
            await asyncio.sleep(0.02)
        before = view.snapshot()
        await view.apply(list(events))
        full = await reg.snapshot()
        # what it noted as changed covers every difference (the incremental planner's input)
        changes = view.take_changes()
        for old, new, noted in ((before.units, full.units, changes.units),
                                (before.placements, full.placements, changes.placements)):
            assert {n for n in old.keys() | new.keys() if old.get(n) != new.get(n)} <= noted
        assert changes.machines or before.machines == full.machines
        assert view.snapshot().units == full.units
        assert view.snapshot().placements == full.placements
        assert view.snapshot().machines == full.machines
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await reg.revoke_lease(lease)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(ops, max_size=15))
def test_view_equals_a_full_read(etcd_settings, sequence):
    import uuid
    from dataclasses import replace

    async def main() -> None:
        reg = await Registry.connect(replace(etcd_settings, key_prefix=f"/fleet-test/{uuid.uuid4().hex[:12]}/"))
        try:
            await _run(reg, sequence)
        finally:
            await reg.close()

    asyncio.run(main())
