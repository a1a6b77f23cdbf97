"""tests/_timeline.py: the fast loop's record of where its time goes, and what it says about the
schedule's table (tests/_schedule.py)."""

from __future__ import annotations

import json

from _schedule import MODULE_SECONDS, WAITING_MODULES
from _timeline import Recorder, chart, disagreements, module_figures, waits

HOLD = "tests/etcd/test_engine_hold.py"


def test_a_module_waits_below_its_cpu_share():
    assert waits(10.0, 0.5) is True
    assert waits(10.0, 3.0) is False
    assert waits(1.0, 0.0) is None  # too short to tell


def test_the_table_agrees_with_its_own_kinds():
    """Every listed waiting module is also listed with its seconds (the order's key), and the
    ones that wait are long enough for `waits` to tell."""
    assert WAITING_MODULES <= set(MODULE_SECONDS)


def test_a_new_waiting_module_is_reported_with_its_kind():
    figures = {"tests/etcd/test_new_wait.py": (6.0, 0.2), "tests/unit/test_new_cpu.py": (0.4, 0.4),
               HOLD: (9.0, 0.5), "tests/unit/test_busy.py": (3.0, 2.5)}
    found = disagreements(figures, {HOLD: 10.0, "tests/unit/test_busy.py": 3.0}, {HOLD, "tests/unit/test_busy.py"})
    assert found == [
        "tests/etcd/test_new_wait.py: 6.0 s, not in MODULE_SECONDS",
        "tests/etcd/test_new_wait.py: waits (0.2 CPU-s in 6.0 s), not in WAITING_MODULES",
        "tests/unit/test_busy.py: works the CPU (2.5 CPU-s in 3.0 s), in WAITING_MODULES",
    ]
    assert disagreements({HOLD: (21.0, 0.5)}, {HOLD: 10.0}, {HOLD}) == [f"{HOLD}: 21.0 s, listed at 10.0"]


def test_the_recorder_writes_each_modules_wall_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    path = tmp_path / "tl.jsonl"
    rec = Recorder(str(path))
    rec.pytest_collection_finish(None)
    for nodeid in ("tests/unit/test_a.py::test_1", "tests/unit/test_a.py::test_2", f"{HOLD}::test_3"):
        rec.pytest_runtest_logstart(nodeid, None)
        sum(range(200_000))  # some CPU
        rec.pytest_runtest_logfinish(nodeid, None)
    rec.pytest_sessionfinish(None)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["process", "collected", "module", "module_end", "module",
                                             "module_end", "finished"]
    figures = module_figures(records)
    assert set(figures) == {"tests/unit/test_a.py", HOLD}
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in figures.values())
    (line,) = chart(records, {HOLD})
    assert line.startswith("  gw1 c") and set(line.split()[1]) <= set("cCW-")
