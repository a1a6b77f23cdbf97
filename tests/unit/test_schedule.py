"""tests/_schedule.py: the slow tests first and one at a time for pytest-xdist; its list names real tests."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from _schedule import SLOW, expected_seconds, scheduler, slow_first

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Item:
    nodeid: str


def test_slowest_first_and_the_rest_in_their_order():
    hold, loop = (
        "tests/etcd/test_engine_hold.py::test_three_of_four_machines_vanishing_at_once_move_nothing",
        "tests/etcd/test_engine_loop.py::test_six_units_spread_and_fail_over",
    )
    items = [Item("tests/unit/test_a.py::test_one"), Item(loop), Item("tests/unit/test_a.py::test_two"),
             Item("tests/etcd/test_registry.py::test_machine_expires_with_lease[memory]"), Item(hold)]
    ordered = [i.nodeid for i in slow_first(items)]
    assert ordered == [hold, loop, "tests/etcd/test_registry.py::test_machine_expires_with_lease[memory]",
                       "tests/unit/test_a.py::test_one", "tests/unit/test_a.py::test_two"]


def test_parameters_share_their_tests_figure():
    base = "tests/etcd/test_registry.py::test_machine_expires_with_lease"
    assert expected_seconds(base + "[etcd]") == expected_seconds(base) == SLOW[base] > 0
    assert expected_seconds("tests/unit/test_unknown.py::test_x[1]") == 0.0


def test_every_listed_test_exists():
    """A renamed or removed test would silently lose its place at the front."""
    defined: dict[str, set[str]] = {}
    for nodeid in SLOW:
        path, _, name = nodeid.partition("::")
        if path not in defined:
            tree = ast.parse((ROOT / path).read_text(), path)
            defined[path] = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            defined[path] |= {alias.asname or alias.name for n in tree.body if isinstance(n, ast.ImportFrom)
                              for alias in n.names}  # tests collected again from another module
        assert name in defined[path], f"tests/_schedule.py names {nodeid}: no such test"


class Config:
    def __init__(self, dist: str = "load", maxschedchunk: int | None = None):
        self.values = {"dist": dist, "tx": ["2*popen"], "maxschedchunk": maxschedchunk}

    def getvalue(self, name):
        return self.values[name]

    getoption = getvalue


class Worker:
    def __init__(self, name: str):
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.received: list[int] = []

    def send_runtest_some(self, indices):
        self.received.extend(indices)

    def shutdown(self):
        self.shutting_down = True


def test_load_scheduling_hands_out_one_test_at_a_time():
    chosen = scheduler(Config(), log=None)
    workers = [Worker("gw0"), Worker("gw1")]
    collection = [f"tests/unit/test_a.py::test_{i}" for i in range(100)]
    for w in workers:
        chosen.add_node(w)
        chosen.add_node_collection(w, collection)
    chosen.schedule()
    assert [w.received for w in workers] == [[0, 1], [2, 3]]  # the first (slowest) tests on every worker
    chosen.mark_test_complete(workers[1], 2, duration=5.0)
    assert workers[1].received == [2, 3, 4]  # the next test, not a chunk of the rest
    assert scheduler(Config(maxschedchunk=10), log=None).maxschedchunk == 10  # the command line's choice
    assert scheduler(Config(dist="loadfile"), log=None) is None  # xdist's own scheduler
