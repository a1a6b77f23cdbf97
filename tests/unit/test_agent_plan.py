"""The agent's pure reconciliation plan (and the executor's batching), fast, no systemd."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _depth import examples
from fleetd.agent.executor import execute
from fleetd.agent.plan import (
    RUNNING_STATES, DesiredUnit, ObservedUnit, Plan, Task, TaskKind, file_hash, observe, plan,
)
from fleetd.errors import SystemdError, SystemdUnitError
from fleetd.model import DesiredState
from fleetd.unit.file import UnitFile

LOADED, LAUNCHED, INACTIVE = DesiredState.LOADED, DesiredState.LAUNCHED, DesiredState.INACTIVE
U, L, S, T = TaskKind.UNLOAD, TaskKind.LOAD, TaskKind.STOP, TaskKind.START


def want(name: str, h: str = "h1", state: DesiredState = LAUNCHED) -> DesiredUnit:
    return DesiredUnit(name, h, f"[Service]\nExecStart=/bin/true {h}\n", state)


def seen(name: str, h: str | None = "h1", active: str = "active",
         load: str = "loaded") -> ObservedUnit:
    sub = {"active": "running", "failed": "failed"}.get(active, "dead")
    return ObservedUnit(name, h, active, sub, load)


def kinds(p: Plan) -> list[tuple[TaskKind, str]]:
    return [(t.kind, t.name) for t in p.tasks]


# --- tables ------------------------------------------------------------------------------------

CASES = [
    # (id, desired, observed, launched memory, expected tasks)
    ("nothing", [], [], {}, []),
    ("new launched", [want("a")], [], {}, [(L, "a"), (T, "a")]),
    ("new loaded", [want("a", state=LOADED)], [], {}, [(L, "a")]),
    ("inactive is absent", [want("a", state=INACTIVE)], [], {}, []),
    ("inactive but on disk", [want("a", state=INACTIVE)], [seen("a")], {}, [(U, "a")]),
    ("not desired", [], [seen("a", active="inactive")], {}, [(U, "a")]),
    ("adopt running", [want("a")], [seen("a")], {}, []),
    ("adopt activating", [want("a")], [seen("a", active="activating")], {}, []),
    ("launched, inactive", [want("a")], [seen("a", active="inactive")], {}, [(T, "a")]),
    ("launched, failed, not tried", [want("a")], [seen("a", active="failed")], {}, [(T, "a")]),
    ("launched, failed, tried", [want("a")], [seen("a", active="failed")], {"a": "h1"}, []),
    ("launched, failed, tried old hash", [want("a", "h2")], [seen("a", "h2", active="failed")],
     {"a": "h1"}, [(T, "a")]),
    ("loaded but running, launched by us", [want("a", state=LOADED)], [seen("a")], {"a": "h1"},
     [(S, "a")]),
    ("loaded but running, started by systemd (WantedBy sidekick)", [want("a", state=LOADED)],
     [seen("a")], {}, []),
    ("loaded, failed", [want("a", state=LOADED)], [seen("a", active="failed")], {}, []),
    ("loaded, deactivating", [want("a", state=LOADED)], [seen("a", active="deactivating")],
     {}, []),
    ("replace launched", [want("a", "h2")], [seen("a", "h1")], {"a": "h1"},
     [(U, "a"), (L, "a"), (T, "a")]),
    ("replace loaded", [want("a", "h2", LOADED)], [seen("a", "h1")], {}, [(U, "a"), (L, "a")]),
    ("unreadable file", [want("a")], [seen("a", None)], {}, [(U, "a"), (L, "a"), (T, "a")]),
    ("file but systemd lost it", [want("a")], [seen("a", active="inactive", load="not-found")],
     {"a": "h1"}, [(L, "a"), (T, "a")]),
    ("order", [want("b"), want("c", state=LOADED), want("d", "h2")],
     [seen("a"), seen("c"), seen("d", "h1")], {"c": "h1"},
     [(U, "a"), (U, "d"), (L, "b"), (L, "d"), (S, "c"), (T, "b"), (T, "d")]),
]


@pytest.mark.parametrize("desired,observed,memory,expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_table(desired, observed, memory, expected):
    p = plan({d.name: d for d in desired}, {o.name: o for o in observed}, memory)
    assert kinds(p) == expected
    for task in p.tasks:
        if task.kind == L:
            assert task.unit is not None and task.unit.name == task.name
        assert task.reason, task


def test_plan_memory_records_started_and_adopted_units_only():
    p = plan({"a": want("a"), "b": want("b"), "c": want("c", state=LOADED)},
             {"a": seen("a"), "c": seen("c", active="inactive")}, {"gone": "h9"})
    assert dict(p.launched) == {"a": "h1", "b": "h1"}


def test_failed_start_is_not_retried_but_a_new_transition_is():
    desired = {"a": want("a")}
    first = plan(desired, {"a": seen("a", active="inactive")}, {})
    assert kinds(first) == [(T, "a")]
    memory = first.launched_after(first.tasks)  # the start ran and failed
    failed = {"a": seen("a", active="failed")}
    assert not plan(desired, failed, memory)
    # the user stops it (desired loaded): the memory forgets it ...
    off = plan({"a": want("a", state=LOADED)}, failed, memory)
    assert kinds(off) == [] and "a" not in off.launched
    # ... and starting it again is a new transition
    assert kinds(plan(desired, failed, off.launched)) == [(T, "a")]


def test_stop_once_per_transition_and_again_after_a_failed_stop():
    desired = {"a": want("a", state=LOADED)}
    running = {"a": seen("a")}
    p = plan(desired, running, {"a": "h1"})  # launched by this agent, now desired loaded
    assert kinds(p) == [(S, "a")]
    failed = p.launched_after(p.tasks, completed=[])
    assert failed == {"a": "h1"} and kinds(plan(desired, running, failed)) == [(S, "a")]
    stopped = p.launched_after(p.tasks)
    assert stopped == {}
    # running again without this agent starting it (systemd pulled it in): left alone
    assert kinds(plan(desired, running, stopped)) == []


def test_launched_after_drops_starts_that_never_ran():
    p = plan({"a": want("a"), "b": want("b"), "c": want("c")}, {"c": seen("c")}, {})
    assert dict(p.launched) == {"a": "h1", "b": "h1", "c": "h1"}
    loads = [t for t in p.tasks if t.kind == L]
    start_a = [t for t in p.tasks if t.kind == T and t.name == "a"]
    assert p.launched_after(loads + start_a) == {"a": "h1", "c": "h1"}


def test_desired_name_mismatch_is_refused():
    with pytest.raises(ValueError, match="'b'.*'a'"):
        plan({"a": want("b")}, {}, {})


def test_observe_hashes_the_file_with_the_fleet_hash():
    text = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/sleep 1\n"
    class St:
        load_state, active_state, sub_state = "loaded", "active", "running"
    obs = observe({"x.service": text, "y.service": "garbage before a section\n"},
                  {"x.service": St()})
    assert obs["x.service"] == ObservedUnit("x.service", UnitFile.parse(text).hash,
                                            "active", "running", "loaded")
    assert obs["y.service"].hash is None and obs["y.service"].load_state == "not-found"
    assert file_hash("x.service", text) == UnitFile.parse(text).hash


# --- a simulated systemd, for the properties -----------------------------------------------------


class SimSystemd:
    """Unit files plus active states, applying tasks the way the executor + systemd do."""

    def __init__(self, observed: dict[str, ObservedUnit], failing: set[str]) -> None:
        self.files = {n: o.hash for n, o in observed.items()}
        self.load = {n: o.load_state for n, o in observed.items()}
        self.active = {n: o.active_state for n, o in observed.items()}
        self.failing = failing
        self.started: set[str] = set()

    def apply(self, task: Task) -> None:
        n = task.name
        if task.kind == U:
            assert n in self.files, f"unload of {n} which has no file"
            del self.files[n], self.load[n]
            self.active[n] = "inactive"
        elif task.kind == L:
            assert task.unit is not None
            self.files[n] = task.unit.hash
            self.load[n] = "loaded"
            self.active.setdefault(n, "inactive")
        elif task.kind == S:
            assert self.load.get(n) == "loaded", f"stop of {n} which is not loaded"
            self.active[n] = "inactive"
        else:
            assert self.load.get(n) == "loaded", f"start of {n} which is not loaded"
            self.active[n] = "failed" if n in self.failing else "active"
            self.started.add(n)

    def observed(self) -> dict[str, ObservedUnit]:
        return {n: ObservedUnit(n, h, self.active[n], "x", self.load[n])
                for n, h in self.files.items()}


NAMES = st.sampled_from(["a.service", "b.service", "c.service", "d.service", "e.service"])
HASHES = st.sampled_from(["h1", "h2", "h3"])
ACTIVE = st.sampled_from(["active", "activating", "reloading", "inactive", "failed",
                          "deactivating"])


@st.composite
def worlds(draw):
    desired = {n: DesiredUnit(n, h, f"text {h}", s) for n, (h, s) in draw(st.dictionaries(
        NAMES, st.tuples(HASHES, st.sampled_from(list(DesiredState))))).items()}
    observed = {n: ObservedUnit(n, h, a, "x", ld) for n, (h, a, ld) in draw(st.dictionaries(
        NAMES, st.tuples(st.one_of(st.none(), HASHES), ACTIVE,
                         st.sampled_from(["loaded", "loaded", "not-found"])))).items()}
    memory = draw(st.dictionaries(NAMES, HASHES))
    failing = draw(st.sets(NAMES))
    return desired, observed, memory, failing


@settings(max_examples=examples(400), deadline=None)
@given(worlds())
def test_one_pass_reaches_the_desired_state(world):
    desired, observed, memory, failing = world
    p = plan(desired, observed, memory)

    # shape: sorted by kind then name, one task per (kind, unit), within desired ∪ observed
    assert list(p.tasks) == sorted(p.tasks)
    assert len({(t.kind, t.name) for t in p.tasks}) == len(p.tasks)
    assert {t.name for t in p.tasks} <= set(desired) | set(observed)

    sim = SimSystemd(observed, failing)
    for task in p.tasks:
        sim.apply(task)

    wanted = {n: d for n, d in desired.items() if d.desired != INACTIVE}
    assert sim.files == {n: d.hash for n, d in wanted.items()}
    assert all(sim.load[n] == "loaded" for n in wanted)
    for n, d in wanted.items():
        if d.desired == LAUNCHED:
            if n in sim.started:
                assert sim.active[n] == ("failed" if n in failing else "active")
            else:  # adopted, or already attempted for this very hash
                o = observed[n]
                assert o.active_state in RUNNING_STATES or memory.get(n) == d.hash
        else:
            assert n not in sim.started
            # stopped, unless it runs without this agent having launched it (a sidekick)
            left_alone = n in observed and observed[n].hash == d.hash and n not in memory
            assert sim.active[n] not in RUNNING_STATES or left_alone

    # a second pass, with the memory the executor keeps, has nothing left to do
    again = plan(desired, sim.observed(), p.launched_after(p.tasks))
    assert not again, again.tasks


@settings(max_examples=examples(300), deadline=None)
@given(worlds())
def test_partial_execution_converges_on_the_next_pass(world):
    """Execution stops at the first failing batch; the next pass picks up the rest."""
    desired, observed, memory, failing = world
    p = plan(desired, observed, memory)
    if not p.tasks:
        return
    first_kind = p.tasks[0].kind  # pretend the first batch failed as a whole (not applied)
    ran = [t for t in p.tasks if t.kind == first_kind]
    memory2 = p.launched_after(ran, completed=[])
    sim = SimSystemd(observed, failing)
    p2 = plan(desired, sim.observed(), memory2)
    # nothing changed on disk: the same work is planned again, except the starts that were
    # attempted (a failed start is not retried before the next transition to launched)
    assert p2.tasks == tuple(t for t in p.tasks if not (t.kind == T and t in ran))


@settings(max_examples=examples(300), deadline=None)
@given(st.dictionaries(NAMES, st.tuples(HASHES, st.sampled_from([LOADED, LAUNCHED]))),
       st.dictionaries(NAMES, HASHES), st.data())
def test_plan_is_empty_when_observed_matches_desired(spec, memory, data):
    desired = {n: DesiredUnit(n, h, "t", s) for n, (h, s) in spec.items()}
    observed = {}
    for n, d in desired.items():
        if d.desired == LAUNCHED:
            active = data.draw(st.sampled_from(sorted(RUNNING_STATES)))
        else:
            active = data.draw(st.sampled_from(["inactive", "failed", "deactivating"]))
        observed[n] = ObservedUnit(n, d.hash, active, "x", "loaded")
    p = plan(desired, observed, memory)
    assert p.tasks == ()
    # adoption: every launched unit is remembered as started, with its current hash
    assert dict(p.launched) == {n: d.hash for n, d in desired.items() if d.desired == LAUNCHED}


# --- the executor's batching (against a recording manager; real systemd in the lab test) ---------


class RecordingManager:
    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail = fail or {}

    async def _do(self, op: str, names) -> None:
        self.calls.append((op, tuple(names)))
        if op in self.fail:
            raise self.fail[op]

    async def load(self, units, known=None):
        self.known = known
        await self._do("load", units)

    async def unload(self, names):
        await self._do("unload", names)

    async def stop(self, names):
        await self._do("stop", names)

    async def start(self, names):
        await self._do("start", names)


ORDER_PLAN = plan({"b": want("b"), "c": want("c", state=LOADED), "d": want("d", "h2"),
                   "e": want("e")},
                  {"a": seen("a"), "c": seen("c"), "d": seen("d", "h1")}, {"c": "h1"})


async def test_executor_runs_one_batch_per_kind_in_order():
    mgr = RecordingManager()
    result = await execute(ORDER_PLAN, mgr)
    assert mgr.calls == [("unload", ("a", "d")), ("load", ("b", "d", "e")), ("stop", ("c",)),
                         ("start", ("b", "d", "e"))]
    assert result.ok and result.completed == ORDER_PLAN.tasks and not result.skipped


async def test_executor_hands_the_pass_states_to_the_load_batch():
    from fleetd.agent.systemd import UnitSystemdState

    states = {n: UnitSystemdState(n, "not-found", "inactive", "dead") for n in "abcde"}
    mgr = RecordingManager()
    assert (await execute(ORDER_PLAN, mgr, known=states)).ok
    assert mgr.known == {n: states[n] for n in ("b", "d", "e")}
    # a state missing for one unit of the batch: the manager reads them itself
    mgr = RecordingManager()
    assert (await execute(ORDER_PLAN, mgr, known={"b": states["b"]})).ok
    assert mgr.known is None


async def test_executor_stops_at_the_first_failing_batch():
    mgr = RecordingManager({"unload": SystemdUnitError("unload", {"d": "job result: failed"})})
    result = await execute(ORDER_PLAN, mgr)
    assert mgr.calls == [("unload", ("a", "d"))]
    assert [t.name for t in result.completed] == ["a"]
    assert [t.name for t in result.failed] == ["d"]
    assert [t.kind for t in result.skipped] == [L, L, L, S, T, T, T]
    assert "d (job result: failed)" in str(result.error)
    # the starts never ran: they are not remembered, the next pass tries again; the stop
    # never ran either: c stays remembered as launched, so the next pass stops it
    assert ORDER_PLAN.launched_after(result.attempted, result.completed) == {"c": "h1"}


async def test_executor_failed_start_counts_as_attempted():
    mgr = RecordingManager({"start": SystemdUnitError("start", {"e": "job result: failed"})})
    result = await execute(ORDER_PLAN, mgr)
    assert not result.ok and [t.name for t in result.failed] == ["e"]
    assert ORDER_PLAN.launched_after(result.attempted) == {"b": "h1", "d": "h2", "e": "h1"}


async def test_executor_whole_batch_failure():
    mgr = RecordingManager({"load": SystemdError("systemd Reload: connection closed")})
    result = await execute(ORDER_PLAN, mgr)
    assert [t.kind for t in result.failed] == [L, L, L]
    assert [t.kind for t in result.skipped] == [S, T, T, T]
