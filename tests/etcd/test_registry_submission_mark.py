"""Registry.create_units marks the end of a submission of a full transaction or more (the
`submitted` key, written after every batch has been answered, so at a revision after all of the
submission's jobs; fleetd/engine/leader.py ends its burst wait on it); smaller submissions
write no mark. Real etcd and the in-memory registry alike."""

from __future__ import annotations

import asyncio

import pytest

from _any_registry import any_registry, revision_of  # noqa: F401  (a fixture)
from fleetd.model import DesiredState, Unit
from fleetd.registry import Registry
from fleetd.registry.core import MAX_TXN_OPS
from fleetd.unit.file import UnitFile

FULL = MAX_TXN_OPS // 2  # units in one of create_units' transactions


def unit(i: int) -> Unit:
    return Unit(f"sub-{i:04d}.service", UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {i}\n"), DesiredState.LAUNCHED)


async def events_until_mark(reg, start: int, jobs: int) -> list:
    """The watch's events from `start` until a mark and `jobs` job events have come (a watch of
    several prefixes need not bring them in revision order across the prefixes)."""
    events = []

    async def collect() -> None:
        async for event in reg.watch([reg.keys.jobs, reg.keys.submitted], start):
            events.append(event)
            if (any(e.key == reg.keys.submitted for e in events)
                    and sum(e.key.startswith(reg.keys.jobs) for e in events) >= jobs):
                return

    await asyncio.wait_for(collect(), 10)
    return events


async def test_a_large_submission_marks_its_end_after_all_its_jobs(any_registry):
    reg = any_registry
    start = await revision_of(reg) + 1
    await reg.create_units([unit(i) for i in range(FULL - 1)])  # below a full transaction: no mark
    await reg.create_units([unit(i) for i in range(1000, 1000 + 2 * FULL + 10)])  # three transactions
    events = await events_until_mark(reg, start, 3 * FULL + 9)
    jobs = [e for e in events if e.key.startswith(reg.keys.jobs)]
    marks = [e for e in events if e.key == reg.keys.submitted]
    assert len(jobs) == 3 * FULL + 9  # both submissions' jobs, one mark (for the large one)
    assert len(marks) == 1 and marks[0].value == str(2 * FULL + 10).encode()
    assert marks[0].revision > max(e.revision for e in jobs)


async def test_a_submission_that_created_nothing_marks_nothing(any_registry):
    reg = any_registry
    units = [unit(i) for i in range(FULL)]
    await reg.create_units(units)
    again = await revision_of(reg)
    assert await reg.create_units(units) == []  # all exist already
    assert await revision_of(reg) == again


@pytest.mark.parametrize("transport", ["gateway", "grpc"])
async def test_fleetctls_fast_path_marks_the_end_as_the_registry_does(etcd_settings, transport):
    """UnitGateway.create_units (fleetctl's etcd fast path) writes the same mark."""
    from fleetd.registry.gateway import Gateway, UnitGateway
    from fleetd.registry.grpc_lite import GrpcTransport

    make = Gateway if transport == "gateway" else GrpcTransport
    gateway = UnitGateway(make(etcd_settings.endpoints[0], 5.0), etcd_settings.key_prefix)
    units = [unit(i) for i in range(FULL + 5)]
    async with await Registry.connect(etcd_settings) as reg:
        start = await reg.current_revision() + 1
        small = [(u.name, u.hash, u.file.serialize()) for u in units[:3]]
        large = [(u.name, u.hash, u.file.serialize()) for u in units[3:]]
        await asyncio.to_thread(gateway.create_units, small)  # no mark
        await asyncio.to_thread(gateway.create_units, large)
        events = await events_until_mark(reg, start, FULL + 5)
    marks = [e for e in events if e.key == reg.keys.submitted]
    jobs = [e for e in events if e.key.startswith(reg.keys.jobs)]
    assert len(jobs) == FULL + 5
    assert len(marks) == 1 and marks[0].revision > max(e.revision for e in jobs)
    assert len(marks) == 1 and marks[0].value == str(FULL + 2).encode()


async def test_setting_the_desired_state_of_many_units_marks_its_end(any_registry):
    """`fleetctl start` of many units creates them inactive, then launches them: the launch is
    the engine's burst, its end marked too; a change of fewer units, or none, is not."""
    reg = any_registry
    units = [Unit(u.name, u.file, DesiredState.INACTIVE) for u in (unit(i) for i in range(FULL + 3))]
    await reg.create_units(units)
    start = await revision_of(reg) + 1
    await reg.set_desired_state([u.name for u in units[:FULL - 1]], DesiredState.LOADED)  # no mark
    await reg.set_desired_state([u.name for u in units], DesiredState.LAUNCHED)
    events = await events_until_mark(reg, start, FULL - 1 + FULL + 3)
    marks = [e for e in events if e.key == reg.keys.submitted]
    jobs = [e for e in events if e.key.startswith(reg.keys.jobs)]
    assert len(marks) == 1 and marks[0].value == str(FULL + 3).encode()
    assert marks[0].revision > max(e.revision for e in jobs)
    again = await revision_of(reg)
    await reg.set_desired_state([u.name for u in units], DesiredState.LAUNCHED)  # nothing to change
    assert await revision_of(reg) == again


async def test_fleetctls_fast_path_marks_the_end_of_a_launch(etcd_settings):
    from fleetd.registry.gateway import Gateway, UnitGateway

    gateway = UnitGateway(Gateway(etcd_settings.endpoints[0], 5.0), etcd_settings.key_prefix)
    units = [(u.name, u.hash, u.file.serialize()) for u in (unit(i) for i in range(FULL))]
    async with await Registry.connect(etcd_settings) as reg:
        created = await asyncio.to_thread(gateway.create_units, units)  # inactive; marked
        start = await reg.current_revision() + 1
        await asyncio.to_thread(gateway.set_desired_state, [n for n, _, _ in units], "launched", created)
        events = await events_until_mark(reg, start, FULL)
    marks = [e for e in events if e.key == reg.keys.submitted]
    assert len(marks) == 1 and marks[0].revision > max(e.revision for e in events if e.key.startswith(reg.keys.jobs))
