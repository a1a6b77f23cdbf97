"""tests/_schedule.py: pytest-xdist hands out whole modules, the slowest first; its table names
real test modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from _schedule import MODULE_SECONDS, WAITING_MODULES, next_module, scheduler, slowest_modules_first

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
    missing = [m for m in [*MODULE_SECONDS, *WAITING_MODULES] if not (ROOT / m).is_file()]
    assert not missing, f"tests/_schedule.py names test modules that do not exist: {missing}"


A, B, C = "tests/unit/test_a.py", "tests/unit/test_b.py", "tests/unit/test_c.py"
W1, W2 = HOLD, PEERS  # modules that mostly wait


def test_next_module_keeps_as_many_cpu_bound_modules_running_as_cores():
    queued = [A, W1, B, W2, C]
    assert next_module(queued, [], cores=2) == A
    assert next_module(queued, [W1, W2, f"{B}::Class"], cores=2) == A  # one CPU-bound running: another
    assert next_module(queued, [A, B], cores=2) == W1  # both cores busy: one that waits beside them
    assert next_module(queued, [A, B, W1], cores=2) == W1
    assert next_module([A, B], [A, C], cores=2) == A  # no waiting module left: the first
    assert next_module([W1, W2], [W1], cores=2) == W1  # no CPU-bound module left: the first
    assert next_module([f"{W2}::Class", A], [A, B], cores=2) == f"{W2}::Class"  # a class scope of a waiting module


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


def test_more_workers_than_cores_get_a_waiting_module_beside_the_busy_ones():
    chosen = scheduler(Config(), log=None, cores=2)
    workers = [Worker("gw0"), Worker("gw1"), Worker("gw2")]
    collection = [f"{m}::test_{i}" for m in ("tests/unit/test_a.py", "tests/unit/test_b.py", "tests/unit/test_c.py", HOLD)
                  for i in range(4)]
    for w in workers:
        chosen.add_node(w)
        chosen.add_node_collection(w, collection)
    chosen.schedule()
    got = [{collection[i].split("::")[0] for i in w.received} for w in workers]
    assert got == [{"tests/unit/test_a.py"}, {"tests/unit/test_b.py"}, {HOLD}]  # not test_c.py, next in order
    # as many workers as cores: the order alone
    chosen = scheduler(Config(), log=None, cores=3)
    workers = [Worker("gw0"), Worker("gw1"), Worker("gw2")]
    for w in workers:
        chosen.add_node(w)
        chosen.add_node_collection(w, collection)
    chosen.schedule()
    assert [{collection[i].split("::")[0] for i in w.received} for w in workers] == [
        {"tests/unit/test_a.py"}, {"tests/unit/test_b.py"}, {"tests/unit/test_c.py"}]
