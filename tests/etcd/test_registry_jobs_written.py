"""Registry.jobs_written_after(revision): whether a job record was created or changed after a
revision (the engine asks it when a large submission's watch news pauses, fleetd/engine/
leader.py); real etcd and the in-memory registry answer alike."""

from __future__ import annotations

from _any_registry import any_registry, revision_of  # noqa: F401  (a fixture)
from fleetd.model import DesiredState, Machine, Unit, UnitState
from fleetd.unit.file import UnitFile

MID = "c" * 32


def unit(name: str) -> Unit:
    return Unit(name, UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {len(name)}\n"), DesiredState.LAUNCHED)


async def test_jobs_written_after(any_registry):
    reg = any_registry
    empty = await revision_of(reg)
    assert not await reg.jobs_written_after(empty)  # no job at all

    await reg.create_units([unit("a.service"), unit("b.service")])
    created = await revision_of(reg)
    assert await reg.jobs_written_after(empty)
    assert not await reg.jobs_written_after(created)

    # writes outside job/ are no job news
    lease = await reg.grant_lease(30)
    await reg.register_machine(Machine(MID, "10.0.0.1"), lease)
    await reg.publish_states([UnitState("a.service", MID, unit("a.service").hash, "loaded", "active",
                                        "running", "launched")], lease)
    assert not await reg.jobs_written_after(created)

    await reg.set_desired_state(["b.service"], DesiredState.LOADED)  # a changed job
    changed = await revision_of(reg)
    assert await reg.jobs_written_after(created)
    assert not await reg.jobs_written_after(changed)

    await reg.destroy_units(["a.service"])  # a job gone is not a job written
    assert not await reg.jobs_written_after(changed)
    await reg.revoke_lease(lease)
