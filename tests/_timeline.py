"""Where the fast loop's time goes, measured: an opt-in record and its summary.

    FLEET_TEST_TIMELINE=/tmp/tl.jsonl ./scripts/test.sh -m "not lab" -n 4 -q
    .venv/bin/python tests/_timeline.py /tmp/tl.jsonl

With FLEET_TEST_TIMELINE set, tests/conftest.py registers `Recorder` in every pytest process
(the controller and each xdist worker): each appends JSON lines to the file (the process's start,
the end of its collection, each test module's start and end on a worker with the CPU seconds of
the worker and of its child processes, etcd's among them, and the worker's end). The summary
prints, per worker, a line of one character a second (c: starting and collecting, W: a module
that waits, C: one that works the CPU, -: nothing), the modules with their wall and CPU seconds,
and where tests/_schedule.py disagrees with the measurement: a module of a second or more that
is not listed, one listed at less than half or more than twice what it took, and one whose kind
(WAITING_MODULES or not) is not what its CPU share says (`waits`). The figures are the table's
source: copy them into tests/_schedule.py after a run on the quiet machine.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

#: a module waits when its worker (with the worker's children) used less than this share of a
#: core over the module's wall time: the waiting modules measured 2-10 % in the fast loop at
#: load 4-12 (session 10), the others 13 % and more (pure CPU ones 40-100 % on a quiet machine)
WAITING_SHARE = 0.11
#: shorter modules are left out of the kinds: their share is mostly start-up noise
KIND_MIN_SECONDS = 1.5

_TICK = os.sysconf("SC_CLK_TCK")


def _children_cpu(pid: int) -> float:
    """CPU seconds of the live descendants of `pid` (reaped ones are in RUSAGE_CHILDREN)."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(f) for f in fields[11:15]) / _TICK + _children_cpu(int(child))
    return total


def process_cpu() -> float:
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + _children_cpu(os.getpid())


def _process_start() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + int(fields[19]) / _TICK


class Recorder:
    """The pytest plugin writing the record (tests/conftest.py registers it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.who = os.environ.get("PYTEST_XDIST_WORKER", "controller")
        self.module: str | None = None
        self.last_end = (time.time(), 0.0)
        self._write("process", t=_process_start())

    def _write(self, event: str, **fields) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps({"who": self.who, "event": event, "t": time.time()} | fields) + "\n")

    def pytest_collection_finish(self, session) -> None:
        self._write("collected", cpu=process_cpu())

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        if self.who == "controller":  # the workers' reports, relayed
            return
        module = nodeid.split("::", 1)[0]
        if module != self.module:
            self._end_module()
            self.module = module
            self._write("module", module=module, cpu=process_cpu())

    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:
        if self.who != "controller":  # the module's end so far: its last test's
            self.last_end = (time.time(), process_cpu())

    def _end_module(self) -> None:
        if self.module is not None:
            t, cpu = self.last_end
            self._write("module_end", module=self.module, cpu=cpu, t=t)
            self.module = None

    def pytest_sessionfinish(self, session) -> None:
        self._end_module()
        self._write("finished", cpu=process_cpu())


def waits(wall: float, cpu: float) -> bool | None:
    """Whether a module with these figures mostly waits; None when it is too short to tell."""
    if wall < KIND_MIN_SECONDS:
        return None
    return cpu < WAITING_SHARE * wall


def module_figures(records: list[dict]) -> dict[str, tuple[float, float]]:
    """module -> (wall, CPU) seconds, from a record's module and module_end lines."""
    started: dict[tuple[str, str], dict] = {}
    figures: dict[str, tuple[float, float]] = {}
    for r in records:
        if r["event"] == "module":
            started[r["who"], r["module"]] = r
        elif r["event"] == "module_end" and (r["who"], r["module"]) in started:
            s = started.pop((r["who"], r["module"]))
            wall, cpu = figures.get(r["module"], (0.0, 0.0))
            figures[r["module"]] = (wall + r["t"] - s["t"], cpu + r["cpu"] - s["cpu"])
    return figures


def disagreements(figures: dict[str, tuple[float, float]], seconds: dict[str, float],
                  waiting: frozenset[str] | set[str]) -> list[str]:
    """Where the schedule's table (`seconds`, `waiting`) disagrees with measured figures."""
    found = []
    for module, (wall, cpu) in sorted(figures.items(), key=lambda kv: -kv[1][0]):
        listed = seconds.get(module)
        if listed is None and wall >= 1.0:
            found.append(f"{module}: {wall:.1f} s, not in MODULE_SECONDS")
        elif listed is not None and not listed / 2 <= wall <= listed * 2:
            found.append(f"{module}: {wall:.1f} s, listed at {listed}")
        kind = waits(wall, cpu)
        if kind is not None and kind != (module in waiting):
            what = "waits" if kind else "works the CPU"
            found.append(f"{module}: {what} ({cpu:.1f} CPU-s in {wall:.1f} s), "
                         f"{'not ' if kind else ''}in WAITING_MODULES")
    return found


def chart(records: list[dict], waiting: frozenset[str] | set[str]) -> list[str]:
    """One line a worker, one character a second from the controller's start."""
    start = min(r["t"] for r in records if r["event"] == "process")
    end = max(r["t"] for r in records)
    lines = []
    workers = sorted({r["who"] for r in records} - {"controller"})
    for who in workers:
        row = ["-"] * (int(end - start) + 1)
        mine = [r for r in records if r["who"] == who]

        def paint(a: float, b: float, char: str) -> None:
            for i in range(int(a - start), min(len(row), int(b - start) + 1)):
                row[i] = char

        born = next((r["t"] for r in mine if r["event"] == "process"), start)
        collected = next((r["t"] for r in mine if r["event"] == "collected"), born)
        paint(born, collected, "c")
        opened: dict[str, float] = {}
        for r in mine:
            if r["event"] == "module":
                opened[r["module"]] = r["t"]
            elif r["event"] == "module_end" and r["module"] in opened:
                paint(opened.pop(r["module"]), r["t"], "W" if r["module"] in waiting else "C")
        lines.append(f"{who:>5} {''.join(row)}")
    return lines


def main(path: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _schedule import MODULE_SECONDS, WAITING_MODULES

    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    print("\n".join(chart(records, WAITING_MODULES)))
    figures = module_figures(records)
    per_worker: dict[str, float] = defaultdict(float)
    for r in records:
        if r["event"] == "finished" and r["who"] != "controller":
            per_worker[r["who"]] = r["cpu"]
    print(f"\nworkers' CPU: {sum(per_worker.values()):.1f} s; modules (wall s, CPU s, kind):")
    for module, (wall, cpu) in sorted(figures.items(), key=lambda kv: -kv[1][0]):
        if wall >= 1.0:
            kind = {True: "waits", False: "CPU", None: ""}[waits(wall, cpu)]
            print(f"  {wall:6.1f} {cpu:6.1f}  {kind:5}  {module}")
    print("\ntests/_schedule.py against this run:")
    print("\n".join(f"  {line}" for line in disagreements(figures, MODULE_SECONDS, WAITING_MODULES)) or "  agrees")


if __name__ == "__main__":
    main(sys.argv[1])
