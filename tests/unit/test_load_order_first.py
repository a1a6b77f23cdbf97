"""LoadOrder.first() (fleetd/engine/pool.py): the least loaded machine, ties to the lowest ID,
i.e. what iterating the order yields first, after any moves."""

from __future__ import annotations

import random

import pytest

from fleetd.engine.pool import LoadOrder


def test_first_is_what_iteration_yields_first():
    rng = random.Random(14)
    order, load = LoadOrder(), {}
    for i in range(50):
        mid = f"{rng.randrange(1 << 32):08x}{i:024x}"
        load[mid] = rng.randrange(4)
        order.add(mid, load[mid])
    for _ in range(500):
        assert order.first() == next(iter(order)) == min(load, key=lambda m: (load[m], m))
        mid = rng.choice(sorted(load))
        new = max(0, load[mid] + rng.choice((-1, 1, 1)))
        order.move(mid, load[mid], new)
        load[mid] = new


def test_first_of_an_empty_order_raises():
    with pytest.raises(IndexError):
        LoadOrder().first()
