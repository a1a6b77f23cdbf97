"""fleetd's garbage-collector settings after start-up (fleetd/gc_tuning.py): fleetd's daemon
freezes start-up and keeps Python's thresholds (`settle_fleetd`); the benchmark's fleetd
stand-ins (fleetlab/bench/child.py) also raise the young generation's threshold
(`settle_after_startup`)."""

from __future__ import annotations

import ast
import gc
import inspect
import textwrap
import weakref

import pytest

from fleetd import daemon, gc_tuning
from fleetlab.bench import child


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    enabled = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if not enabled:
        gc.disable()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def left_behind() -> weakref.ref:
    """A cycle dropped: garbage that only a collection frees."""
    return weakref.ref(Cycle())


def survivors(n: int) -> list:
    """n container objects that stay alive (each one counts towards the young generation)."""
    return [[] for _ in range(n)]


def test_start_up_is_collected_frozen_and_young_collections_come_less_often(restored_gc):
    gc.set_threshold(700, 9, 8)
    gone = left_behind()  # start-up garbage (a cycle): collected, not frozen
    before = gc.get_freeze_count()
    gc_tuning.settle_after_startup(young=12_345)
    assert gc.get_threshold() == (12_345, 9, 8)
    assert gc.get_freeze_count() > before
    assert gone() is None


def test_fleetd_freezes_start_up_and_keeps_the_thresholds(restored_gc):
    gc.set_threshold(700, 9, 8)
    gone = left_behind()
    before = gc.get_freeze_count()
    gc_tuning.settle_fleetd()
    assert gc.get_threshold() == (700, 9, 8)
    assert gc.get_freeze_count() > before
    assert gone() is None


@pytest.mark.parametrize("settle, collected", [
    (gc_tuning.settle_fleetd, True),
    (lambda: gc_tuning.settle_after_startup(young=20_000), False),
])
def test_a_bursts_garbage_goes_at_idle_only_with_fleetds_setting(restored_gc, settle, collected):
    """After a burst, an idle process allocates little: its cyclic garbage goes at the next
    young collection, i.e. after 700 allocations with fleetd's setting; with 20,000 it stays
    (the +1 MB of idle RSS after a 100-unit start, docs/performance.md session 10)."""
    gc.set_threshold(700, 10, 10)
    settle()
    garbage = left_behind()
    kept = survivors(2_000)  # an idle while's allocations: well above 700, well below 20,000
    assert (garbage() is None) is collected
    del kept


def _calls_in(function) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}


def test_fleetd_and_the_benchmarks_stand_ins_apply_theirs():
    assert "settle_fleetd" in _calls_in(daemon.Daemon.run)
    assert "settle_after_startup" not in _calls_in(daemon.Daemon.run)
    assert "settle_after_startup" in _calls_in(child.agents)
    assert "settle_after_startup" in _calls_in(child.engine)
