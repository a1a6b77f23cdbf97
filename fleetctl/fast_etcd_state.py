"""What fleetctl's etcd fast path (fleetctl/fast_etcd.py) knows of units in the registry: their
current state as fleetd.jobstate computes it, and the blocking wait of the full CLI's etcd driver
(unitops.wait_for_states with EtcdFleetClient.wait and its change feed), on the standard library
and fleetd/registry/gateway.py."""

from __future__ import annotations

import sys
import time

from fleetctl.fast_units import announce_reached, finish_wait
from fleetctl.progress import Progress
from fleetctl.quickunit import quick_options, unit_hash

WATCH_POLL = 0.25  # the full CLI's poll beside its change feed (FleetClient.wait)
#: fleetd.model.ACTIVE_STATES (systemd's active states that count as running)
ACTIVE_STATES = frozenset({"active", "activating", "reloading", "deactivating"})


def say(text: str) -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def is_global(options: list[tuple[str, str, str]]) -> bool:
    """Unit.is_global: [X-Fleet] Global= (rare here: the fast path leaves units with [X-Fleet]
    to the full CLI, so only a unit replaced during a wait gets here; then fleetd.unit's rule)."""
    if not any(s == "X-Fleet" and n == "Global" for s, n, _ in options):
        return False
    from fleetd.unit.file import UnitFile
    from fleetd.unit.requirements import requirements_of

    from fleetctl.quickunit import serialize

    return requirements_of(UnitFile.parse(serialize(options).encode()), "unit.service").is_global


def current_state(unit_hash: str, placement: tuple[str, dict] | None, states: list[dict]) -> tuple[str, str]:
    """fleetd.jobstate.current_state_of for a unit that is not global: (current state, machine)."""
    if placement is None:
        return "inactive", ""
    machine_id, target = placement
    reported = next((s for s in states if s.get("machineID") == machine_id and s.get("hash", "") == unit_hash), None)
    if reported is None:
        return "inactive", machine_id
    active = reported.get("activeState", "") in ACTIVE_STATES
    applied = reported.get("applied", "")
    if target["desiredState"] == "launched" or not applied:
        return ("launched" if active else "loaded"), machine_id
    return ("loaded" if applied == "loaded" else "launched"), machine_id


class Units:
    """The registry's units as the etcd driver's client sees them (units_named), with the
    bodies read once per hash."""

    def __init__(self, registry):
        self.registry = registry
        self.options: dict[str, list | None] = {}  # unit hash -> options (None: unreadable)
        self.unreadable: set[str] = set()  # units of the last read whose body it cannot read

    def learn(self, unit_hash: str, options: list) -> None:
        self.options[unit_hash] = options

    def named(self, names: list[str], machines: dict | None = None) -> tuple[int, dict[str, dict]]:
        """(revision of the read, {name: {"desired", "hash", "options", "current", "machine"}}) of
        the named units that exist with a readable body (EtcdFleetClient.units_named with
        exact_machine=False; the current state is the same with True)."""
        revision, jobs, states, listed = self.registry.read_units(names, machines is not None)
        if listed is not None:  # the machines' list in the same read (a wait's legends)
            machines.update(listed)
        missing = [j["hash"] for j in jobs.values() if j["hash"] not in self.options]
        if missing:
            bodies = self.registry.bodies(missing)
            for h in missing:
                self.options[h] = quick_options(bodies[h]) if h in bodies else None
        found = {}
        records = {n: j for n, j in jobs.items() if self.options.get(j["hash"])}
        self.unreadable = set(jobs) - set(records)
        pairs = [(n, s["machineID"]) for n in records for s in states[n]]
        placements = self.registry.placements(pairs) if pairs else {}
        for name, job in records.items():
            options = self.options[job["hash"]]
            real_hash = unit_hash(options)
            if is_global(options):
                current, machine = "", ""
            else:
                current, machine = current_state(real_hash, placements.get(name), states[name])
            found[name] = {"desired": job["desiredState"], "hash": real_hash, "options": options,
                           "current": current, "machine": machine}
        return revision, found


def wait_for_states(units: Units, names: list[str], state: str, action: str, no_block: bool, attempts: int) -> int:
    """unitops.wait_for_states with EtcdFleetClient.wait (launched or loaded)."""
    if not names:
        return 0
    if no_block:
        for name in names:
            say(f"Triggered unit {name} {action}")
        return 0
    pending = list(names)
    machines: dict[str, tuple[str, str]] = {}
    progress = Progress(len(pending), state)
    revisions: list[int] = []

    def legend(machine_id: str) -> str | None:
        if machine_id not in machines:  # MachineLegends: read again for a machine not seen yet
            machines.update(units.registry.machines())
        if machine_id not in machines:
            return None
        mid, ip = machines[machine_id]
        return f"{mid[:8]}.../{ip}" if ip else f"{mid[:8]}..."

    def check() -> bool:  # the machines' list read with the first check, not after the first unit got there
        revision, infos = units.named(pending, None if revisions else machines)
        revisions.append(revision)
        for name in list(pending):
            info = infos.get(name)
            if info is not None and info["current"] == state:
                pending.remove(name)
                announce_reached(name, state, info["machine"], legend, progress, say)
        if pending:
            progress.update(len(names) - len(pending))
        return not pending

    return finish_wait(lambda timeout: _wait(units, check, timeout, revisions), pending, state, attempts,
                       progress, warn)


def _wait(units: Units, check, timeout: float | None, revisions: list[int]) -> bool:
    """FleetClient.wait with the etcd driver's change feed: check; then wait for a change (a
    watch from the revision the first check read) or WATCH_POLL seconds, and check again."""
    from fleetd.errors import RegistryError  # the gateway's GatewayError among them

    deadline = None if timeout is None else time.monotonic() + timeout
    watch = None
    watching = True
    try:
        while True:
            if check():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait_for = WATCH_POLL if remaining is None else min(WATCH_POLL, remaining)
            if watching and watch is None:
                try:
                    watch = units.registry.watch_units(revisions[0] + 1)
                except RegistryError:  # as the full CLI's feed: without one, the poll
                    watching = False
            if watch is not None:
                try:
                    watch.wait(wait_for)
                    continue
                except RegistryError:
                    watch.close()
                    watch, watching = None, False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    wait_for = WATCH_POLL if remaining is None else max(0.0, min(WATCH_POLL, remaining))
            time.sleep(wait_for)
    finally:
        if watch is not None:
            watch.close()
