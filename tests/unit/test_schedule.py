"""tests/_schedule.py: the slow tests first for pytest-xdist, and its list names real tests."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from _schedule import SLOW, expected_seconds, slow_first

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
    for nodeid in SLOW:
        path, _, name = nodeid.partition("::")
        tree = ast.parse((ROOT / path).read_text(), path)
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        defined |= {alias.asname or alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    for alias in n.names}  # tests collected again from another module
        assert name in defined, f"tests/_schedule.py names {nodeid}: no such test"
