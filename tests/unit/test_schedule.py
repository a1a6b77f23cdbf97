"""tests/_schedule.py: pytest-xdist hands out whole modules, the slowest first; its table names
real test modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from _schedule import MODULE_SECONDS, scheduler, slowest_modules_first

ROOT = Path(__file__).resolve().parents[2]
HOLD, PEERS = "tests/etcd/test_engine_hold.py", "tests/etcd/test_presence_peers.py"


@dataclass
class Item:
    nodeid: str


def test_slowest_modules_first_each_in_its_own_order():
    ids = ["tests/unit/test_a.py::test_one", f"{HOLD}::test_b", "tests/unit/test_a.py::test_two",
           f"{PEERS}::test_z", f"{HOLD}::test_a[1]", f"{PEERS}::test_y"]
    ordered = [i.nodeid for i in slowest_modules_first([Item(i) for i in ids])]
    assert ordered == [f"{HOLD}::test_b", f"{HOLD}::test_a[1]", f"{PEERS}::test_z", f"{PEERS}::test_y",
                       "tests/unit/test_a.py::test_one", "tests/unit/test_a.py::test_two"]
    assert MODULE_SECONDS[HOLD] > MODULE_SECONDS[PEERS]  # what the expectation above assumes


def test_every_listed_module_exists():
    """A module renamed or removed would silently lose its place at the front."""
    missing = [m for m in MODULE_SECONDS if not (ROOT / m).is_file()]
    assert not missing, f"tests/_schedule.py names test modules that do not exist: {missing}"


class Config:
    def __init__(self, dist: str = "load"):
        self.values = {"dist": dist, "tx": ["3*popen"]}
        self.option = SimpleNamespace(loadscopereorder=True)

    def getvalue(self, name):
        return self.values[name]


class Worker:
    def __init__(self, name: str):
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.received: list[int] = []

    def send_runtest_some(self, indices):
        self.received.extend(indices)

    def shutdown(self):
        self.shutting_down = True


def test_whole_modules_in_the_collections_order():
    chosen = scheduler(Config(), log=None)
    workers = [Worker("gw0"), Worker("gw1"), Worker("gw2")]
    # one small module of 4 tests first, then bigger ones: loadscope's own reordering (by number
    # of tests) would hand out the 9-test module first
    collection = [f"tests/unit/test_{m}.py::test_{i}" for m, n in (("a", 4), ("b", 9), ("c", 5), ("d", 2))
                  for i in range(n)]
    for w in workers:
        chosen.add_node(w)
        chosen.add_node_collection(w, collection)
    chosen.schedule()
    got = [{collection[i].split("::")[0] for i in w.received} for w in workers]
    assert got == [{"tests/unit/test_a.py"}, {"tests/unit/test_b.py"}, {"tests/unit/test_c.py"}]
    assert sorted(workers[0].received) == [0, 1, 2, 3]  # all of the module
    assert scheduler(Config(dist="loadfile"), log=None) is None  # xdist's own scheduler
