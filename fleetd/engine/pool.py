"""Machines kept in least-loaded order, (load, machine ID) ascending, updated in place."""

from __future__ import annotations

import bisect
from typing import Iterator


class LoadOrder:
    """A set of machine IDs ordered by (load, ID).

    Loads are small integers, so machines sit in one sorted bucket per load: moving a machine
    after a placement is a bisect in two short lists, and walking the order costs nothing for
    the machines that are not looked at.
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}

    def add(self, machine_id: str, load: int) -> None:
        bisect.insort(self._buckets.setdefault(load, []), machine_id)

    def remove(self, machine_id: str, load: int) -> None:
        bucket = self._buckets[load]
        index = bisect.bisect_left(bucket, machine_id)
        if index == len(bucket) or bucket[index] != machine_id:
            raise KeyError(f"machine {machine_id} is not in the load order at load {load}")
        del bucket[index]
        if not bucket:
            del self._buckets[load]

    def move(self, machine_id: str, old_load: int, new_load: int) -> None:
        self.remove(machine_id, old_load)
        self.add(machine_id, new_load)

    def first(self) -> str:
        """The least loaded machine (ties: the lowest ID); IndexError when there is none."""
        if not self._buckets:
            raise IndexError("no machine in the load order")
        return self._buckets[min(self._buckets)][0]

    def __iter__(self) -> Iterator[str]:
        """Machine IDs, least loaded first. Do not change the order while iterating."""
        for load in sorted(self._buckets):
            yield from self._buckets[load]

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())
