"""fleetd's garbage-collector settings after start-up (fleetd/gc_tuning.py), which fleetd's
daemon and the benchmark's fleetd stand-ins (fleetlab/bench/child.py) both apply."""

from __future__ import annotations

import gc
import inspect
import weakref

import pytest

from fleetd import daemon, gc_tuning
from fleetlab.bench import child


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_is_collected_frozen_and_young_collections_come_less_often(restored_gc):
    gc.set_threshold(700, 9, 8)
    left_behind = Cycle()
    gone = weakref.ref(left_behind)
    del left_behind  # start-up garbage (a cycle): collected, not frozen
    before = gc.get_freeze_count()
    gc_tuning.settle_after_startup(young=12_345)
    assert gc.get_threshold() == (12_345, 9, 8)
    assert gc.get_freeze_count() > before
    assert gone() is None


def test_fleetd_and_the_benchmarks_stand_ins_apply_it():
    assert "settle_after_startup()" in inspect.getsource(daemon.Daemon.run)
    assert "settle_after_startup()" in inspect.getsource(child.agents)
    assert "settle_after_startup()" in inspect.getsource(child.engine)
