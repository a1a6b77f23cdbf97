"""Group commit of unit creations in the API (fleetd/api/batching.py)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, strategies as st

from fleetd.api.batching import CreateBatcher, take_batch
from fleetd.errors import RegistryError
from fleetd.model import Unit
from fleetd.unit.file import UnitFile

FILE = UnitFile.parse("[Service]\nExecStart=/bin/true\n")


def unit(name: str) -> Unit:
    return Unit(name, FILE)


class FakeRegistry:
    """create_units as the registry's: creates the absent ones, returns their names; each call
    takes one loop round trip (as an etcd transaction would take a while)."""

    def __init__(self, fail: bool = False):
        self.existing: set[str] = set()
        self.calls: list[list[str]] = []
        self.fail = fail
        self.in_flight = asyncio.Event()  # set while a call runs

    async def create_units(self, units):
        self.calls.append([u.name for u in units])
        self.in_flight.set()
        await asyncio.sleep(0.01)
        if self.fail:
            raise RegistryError("etcd unavailable")
        created = [u.name for u in units if u.name not in self.existing]
        self.existing.update(created)
        return created


@pytest.mark.parametrize("names, first, rest", [
    ([], [], []),
    (["a", "b"], ["a", "b"], []),
    (["a", "a", "b", "a"], ["a", "b"], ["a", "a"]),
])
def test_take_batch(names, first, rest):
    queue = [(unit(f"{n}.service"), i) for i, n in enumerate(names)]
    batch, left = take_batch(queue)
    assert [u.name for u, _ in batch] == [f"{n}.service" for n in first]
    assert [u.name for u, _ in left] == [f"{n}.service" for n in rest]


@given(st.lists(st.sampled_from("abcd"), max_size=12))
def test_take_batch_keeps_every_request_once_and_names_unique(names):
    queue = [(unit(f"{n}.service"), i) for i, n in enumerate(names)]
    batch, left = take_batch(queue)
    assert sorted(i for _, i in batch + left) == list(range(len(names)))
    assert len({u.name for u, _ in batch}) == len(batch)
    assert {u.name for u, _ in batch} == {u.name for u, _ in queue}
    assert [i for _, i in batch] == sorted(i for _, i in batch)  # arrival order kept


def test_a_lone_create_is_written_at_once_and_concurrent_ones_share_a_transaction():
    async def main():
        reg = FakeRegistry()
        batcher = CreateBatcher(reg.create_units)
        assert await batcher.create(unit("lone.service")) is True
        assert reg.calls == [["lone.service"]]
        results = await asyncio.gather(*(batcher.create(unit(f"u{i}.service")) for i in range(30)))
        assert results == [True] * 30
        assert len(reg.calls) == 2 and len(reg.calls[1]) == 30
        # created already: False, as Registry.create_unit
        assert await batcher.create(unit("u3.service")) is False

    asyncio.run(main())


def test_requests_arriving_during_a_flush_form_the_next_one():
    async def main():
        reg = FakeRegistry()
        batcher = CreateBatcher(reg.create_units)
        first = asyncio.ensure_future(batcher.create(unit("a.service")))
        # the first transaction is in flight (a 1 ms sleep here could end within the flush's
        # first loop rounds on a loaded machine: then all six went in one transaction)
        await reg.in_flight.wait()
        later = [asyncio.ensure_future(batcher.create(unit(f"b{i}.service"))) for i in range(5)]
        assert await first and all(await asyncio.gather(*later))
        assert reg.calls == [["a.service"], [f"b{i}.service" for i in range(5)]]

    asyncio.run(main())


def test_the_same_name_twice_is_created_once():
    async def main():
        reg = FakeRegistry()
        batcher = CreateBatcher(reg.create_units)
        results = await asyncio.gather(*(batcher.create(unit("same.service")) for _ in range(3)))
        assert sorted(results) == [False, False, True]
        assert all(len(set(call)) == len(call) for call in reg.calls)

    asyncio.run(main())


def test_an_etcd_error_reaches_every_waiter_of_the_batch_and_the_next_batch_is_tried():
    async def main():
        reg = FakeRegistry(fail=True)
        batcher = CreateBatcher(reg.create_units)
        results = await asyncio.gather(*(batcher.create(unit(f"e{i}.service")) for i in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, RegistryError) for r in results)
        reg.fail = False
        assert await batcher.create(unit("e0.service")) is True

    asyncio.run(main())
