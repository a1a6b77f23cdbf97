"""Run a reconciliation plan against systemd, batch by batch, stopping at the first failure.

Batches follow the plan's order: all UNLOADs (one daemon-reload), all LOADs (one
daemon-reload), all STOPs, all STARTs. Like fleet's agent, execution stops at the first
batch that fails; within a batch every unit is tried (concurrently, in the adapter), and
SystemdUnitError tells which units failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

from fleetd.agent.plan import Plan, Task, TaskKind
from fleetd.errors import FleetError, SystemdUnitError


class UnitManager(Protocol):
    """What the executor needs from fleetd.agent.systemd.SystemdManager."""

    async def load(self, units: Mapping[str, str], *, known: Mapping | None = None) -> None: ...
    async def unload(self, names: Iterable[str]) -> None: ...
    async def stop(self, names: Iterable[str]) -> None: ...
    async def start(self, names: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class ExecutionResult:
    completed: tuple[Task, ...]
    failed: tuple[Task, ...]
    skipped: tuple[Task, ...]
    error: FleetError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def attempted(self) -> tuple[Task, ...]:
        """Tasks that ran, successfully or not (feed to Plan.launched_after)."""
        return self.completed + self.failed


async def execute(plan: Plan | Sequence[Task], manager: UnitManager, *,
                  known: Mapping | None = None) -> ExecutionResult:
    """`known`: the units' systemd states the plan was made from (read in the same pass), handed
    to the LOAD batch so that it need not ask systemd for them again."""
    tasks = tuple(plan.tasks if isinstance(plan, Plan) else sorted(plan))
    completed: list[Task] = []
    for kind in TaskKind:
        batch = [t for t in tasks if t.kind == kind]
        if not batch:
            continue
        try:
            await _run_batch(kind, batch, manager, known)
        except FleetError as exc:
            if isinstance(exc, SystemdUnitError):
                failed = [t for t in batch if t.name in exc.failures]
                completed += [t for t in batch if t.name not in exc.failures]
            else:
                failed = batch  # the batch as a whole failed (e.g. the reload, the bus)
            done = {id(t) for t in completed} | {id(t) for t in failed}
            return ExecutionResult(tuple(completed), tuple(failed),
                                   tuple(t for t in tasks if id(t) not in done), exc)
        completed += batch
    return ExecutionResult(tuple(completed), (), ())


async def _run_batch(kind: TaskKind, batch: list[Task], manager: UnitManager, known: Mapping | None) -> None:
    names = [t.name for t in batch]
    if kind == TaskKind.UNLOAD:
        await manager.unload(names)
    elif kind == TaskKind.LOAD:
        units = {}
        for t in batch:
            if t.unit is None:
                raise ValueError(f"load task for {t.name} carries no unit file")
            units[t.name] = t.unit.text
        if known is not None and all(n in known for n in units):
            await manager.load(units, known={n: known[n] for n in units})
        else:
            await manager.load(units)
    elif kind == TaskKind.STOP:
        await manager.stop(names)
    else:
        await manager.start(names)
