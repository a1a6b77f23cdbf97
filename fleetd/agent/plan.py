"""The agent's reconciliation plan: a pure function from desired and observed state to tasks.

No I/O here. Input:
- `desired`: the units this machine should have, by name (`DesiredUnit`; only `loaded` and
  `launched` count, an `inactive` entry is the same as no entry);
- `observed`: the unit files found in the units directory with their systemd state
  (`ObservedUnit`; `hash` is the fleet hash of the file on disk, None if unreadable; for a
  container unit rendered on the node, the hash of the *stored* unit recorded in its first
  line `# fleet-hash: <sha1>`, see fleetd/container/marker.py);
- `launched`: the agent's memory, name -> hash of the incarnation it has already started
  (or adopted) while the unit was desired `launched`. Empty after a fleetd restart.

Output: a `Plan` whose tasks are ordered like fleet's agent (reference §3.3):
UNLOAD < LOAD < STOP < START, by name within a kind. A daemon-reload is implied once per
LOAD or UNLOAD batch (the executor loads and unloads in batches).

Rules, per unit name in desired ∪ observed:
- observed but not desired -> UNLOAD (stops it first if needed).
- desired, no file on disk -> LOAD (+ START if launched).
- desired, file with another hash (e.g. after `--replace`) -> UNLOAD, LOAD (+ START if launched).
- desired, file with the desired hash but systemd does not know the unit (`not-found`,
  e.g. a crash between writing and reloading) -> LOAD again (+ START if launched).
- desired `loaded`, unit active/activating/reloading, and `launched[name]` is set (this agent
  started or adopted it while it was `launched`) -> STOP. Without a memory entry the unit was
  started by someone else, typically systemd pulling in an `[Install] WantedBy=` sidekick of
  a launched unit: it is left alone (fleet stops a unit only on the launched -> loaded
  transition, and its functional TestInstallUnit needs the sidekick to keep running).
- desired `launched`, unit active/activating/reloading -> nothing: this ADOPTS a unit that was
  running before fleetd restarted (same file hash) without stopping or restarting it.
- desired `launched`, unit not active (inactive, failed, deactivating, ...) -> START, unless
  `launched[name]` already records this hash.

Decision on failed units: like fleet, the agent starts a unit once per transition to
`launched`, not once per pass (and stops it once per transition back to `loaded`). A transition is a new desired state (the unit left `launched`
and came back: its memory entry is dropped while it is not `launched`), a new hash, or a new
file on disk. A launched unit that later fails or exits is left to systemd (`Restart=`); it
is not restarted every reconcile pass, which would turn a broken unit into a start loop.
An adopted unit counts as started. After a fleetd restart the memory is empty, so a unit
that is `failed` at that moment gets one more start attempt (fleet, whose cache is empty after
a restart, starts every launched unit again); a unit that is running while desired `loaded`
at that moment is left running, as fleet does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Protocol

from fleetd.container.marker import stored_hash_of
from fleetd.errors import UnitFileError
from fleetd.model import RUNNING_STATES, DesiredState
from fleetd.unit.file import UnitFile



class TaskKind(enum.IntEnum):
    """Task kinds in execution order (fleet: Unload < Load < ReloadUnitFiles < Stop < Start)."""

    UNLOAD = 0
    LOAD = 1
    STOP = 2
    START = 3


@dataclass(frozen=True)
class DesiredUnit:
    name: str
    hash: str
    text: str
    desired: DesiredState


@dataclass(frozen=True)
class ObservedUnit:
    """A unit file found in the units directory, and what systemd says about the unit."""

    name: str
    hash: str | None
    active_state: str
    sub_state: str
    load_state: str


@dataclass(frozen=True, order=True)
class Task:
    kind: TaskKind
    name: str
    unit: DesiredUnit | None = field(default=None, compare=False)  # LOAD: what to write
    reason: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.kind.name.lower()} {self.name}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Plan:
    tasks: tuple[Task, ...]
    #: the `launched` memory once every task has run: name -> hash
    launched: Mapping[str, str] = field(default_factory=dict)
    #: the memory entries of the units this plan STOPs, kept until the STOP is attempted
    stopping: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "launched", MappingProxyType(dict(self.launched)))
        object.__setattr__(self, "stopping", MappingProxyType(dict(self.stopping)))

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def launched_after(self, attempted: Iterable[Task], completed: Iterable[Task] | None = None) -> dict[str, str]:
        """The memory after a partial run: a START that was never attempted is not recorded,
        and a STOP that did not complete keeps its entry (so the next pass stops the unit).

        `attempted` holds the tasks that ran, successfully or not: a failed start counts as
        an attempt, so that it is not retried every pass. `completed` (default: `attempted`)
        holds the tasks that succeeded.
        """
        tried = {(t.kind, t.name) for t in attempted}
        done = tried if completed is None else {(t.kind, t.name) for t in completed}
        memory = dict(self.launched)
        for task in self.tasks:
            if task.kind == TaskKind.START and (task.kind, task.name) not in tried:
                memory.pop(task.name, None)
            elif task.kind == TaskKind.STOP and (task.kind, task.name) not in done:
                memory[task.name] = self.stopping[task.name]
        return memory


def plan(desired: Mapping[str, DesiredUnit], observed: Mapping[str, ObservedUnit],
         launched: Mapping[str, str] | None = None) -> Plan:
    """The tasks that take `observed` to `desired` (see the module docstring)."""
    launched = launched or {}
    tasks: list[Task] = []
    memory: dict[str, str] = {}
    stopping: dict[str, str] = {}
    wanted = {n: d for n, d in desired.items() if d.desired != DesiredState.INACTIVE}
    for name in sorted(set(wanted) | set(observed)):
        d = wanted.get(name)
        o = observed.get(name)
        if d is None:
            tasks.append(Task(TaskKind.UNLOAD, name, reason="not desired on this machine"))
            continue
        if d.name != name:
            raise ValueError(f"desired unit {d.name!r} filed under the name {name!r}")
        unloading = o is not None and o.hash != d.hash
        if unloading:
            tasks.append(Task(TaskKind.UNLOAD, name, reason="unit file changed"))
        loading = o is None or unloading or o.load_state == "not-found"
        if loading:
            why = ("unit file changed" if unloading else
                   "not loaded" if o is None else "systemd does not know it")
            tasks.append(Task(TaskKind.LOAD, name, unit=d, reason=why))
        running = o is not None and not unloading and o.active_state in RUNNING_STATES
        if d.desired == DesiredState.LAUNCHED:
            if loading:
                tasks.append(Task(TaskKind.START, name, reason="launched, newly loaded"))
            elif running:
                pass  # adopted or already started
            elif launched.get(name) != d.hash:
                tasks.append(Task(TaskKind.START, name, reason=f"launched but {o.active_state}"))
            memory[name] = d.hash
        elif running and name in launched:  # desired loaded, and it was launched by us
            tasks.append(Task(TaskKind.STOP, name, reason=f"loaded but {o.active_state}"))
            stopping[name] = launched[name]
    return Plan(tuple(sorted(tasks)), memory, stopping)


class _State(Protocol):
    load_state: str
    active_state: str
    sub_state: str


def observe(installed: Mapping[str, str], states: Mapping[str, _State],
            hash_of: Callable[[str, str], str | None] | None = None) -> dict[str, ObservedUnit]:
    """Observed units from the files on disk (name -> text) and systemd's states.

    `hash_of(name, text)` defaults to the fleet hash of the parsed file; a file that does not
    parse gets hash None, so that the plan replaces it.
    """
    hash_of = hash_of or file_hash
    out: dict[str, ObservedUnit] = {}
    for name, text in installed.items():
        st = states.get(name)
        out[name] = ObservedUnit(
            name=name,
            hash=hash_of(name, text),
            active_state=st.active_state if st else "inactive",
            sub_state=st.sub_state if st else "dead",
            load_state=st.load_state if st else "not-found",
        )
    return out


def desired_aware_hash(desired: Mapping[str, DesiredUnit]) -> Callable[[str, str], str | None]:
    """`hash_of` for observe(): a file whose text is exactly what the agent would write now
    has the desired hash; a rendered container unit of the desired stored unit that was
    rendered *differently* (its image arrived since it was rendered as failing, the image
    store or a template changed) gets None, so that the plan writes it again and restarts it.
    Everything else gets file_hash()."""

    def hash_of(name: str, text: str) -> str | None:
        wanted = desired.get(name)
        if wanted is not None and text == wanted.text:
            return wanted.hash
        found = file_hash(name, text)
        if wanted is not None and found == wanted.hash and stored_hash_of(text) is not None:
            return None
        return found

    return hash_of


def file_hash(name: str, text: str) -> str | None:
    """fleet's hash of the unit a file on disk was written for (None when it does not parse):
    the stored unit's hash recorded in a rendered container unit, else the file's own hash."""
    stored = stored_hash_of(text)
    if stored is not None:
        return stored
    try:
        return UnitFile.parse(text, source=name).hash
    except UnitFileError:
        return None
