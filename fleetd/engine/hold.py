"""No stampede: when the engine holds the units of vanished machines where they are. Pure, no I/O.

`HoldState.step(present, placed_on, now, policy)` is called before each reconcile pass with the
machines registered now and the machines the schedule names; it returns the next state and a
`Hold`:

- a machine that vanishes is *held* for `settle` seconds: its units stay scheduled on it (a
  machine crash moves its units that much later) so that machines vanishing a few moments apart
  (their leases expire within one keep-alive interval of each other) are seen together;
- while more than DISRUPTED_FRACTION of the known machines are vanished (fleetd/disruption.py,
  Kubernetes' unhealthy-zone rule) every vanished machine is held, and for `settle` seconds
  after the disruption ends: an etcd outage, or a partition that cuts off most machines, moves
  nothing (those machines' agents keep their units running, see fleetd/disruption.py);
- for `grace` seconds after the engine gains leadership (or comes back to etcd) no unit is
  placed or moved at all, unless every machine the schedule names is registered: machines get
  the time to register again after an etcd outage before anything is decided;
- a held machine that registers again simply carries on: its units never left it.

`restrain(decisions, snapshot, hold)` then removes from a pass's decisions whatever would move
a unit off a held machine, and (in grace) every placement that is not a rewrite in place.
`with_ghosts(snapshot, hold)` adds the held machines to the snapshot as draining machines, so
that the scheduler keeps their units' placements, counts their load and Conflicts, and puts
nothing new on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Iterable, Mapping

from fleetd.disruption import disrupted, settle_seconds
from fleetd.engine.decisions import Decisions
from fleetd.model import ClusterSnapshot, DesiredState, Machine


@dataclass(frozen=True)
class HoldPolicy:
    grace: float  # seconds after gaining leadership before anything is placed
    settle: float  # seconds a vanished machine's units stay before they may move


def policy_for(machine_ttl: float) -> HoldPolicy:
    """Grace: two machine TTLs (an agent whose lease expired registers again within about one
    keep-alive interval plus a registration). Settle: fleetd/disruption.py's settle_seconds."""
    return HoldPolicy(grace=2.0 * machine_ttl, settle=settle_seconds(machine_ttl))


@dataclass(frozen=True)
class Hold:
    held: frozenset[str] = frozenset()  # vanished machines whose units stay where they are
    ghosts: Mapping[str, Machine] = field(default_factory=dict)  # their last known records
    in_grace: bool = False  # place nothing new, move nothing
    disrupted: bool = False
    wake_at: float | None = None  # when the hold changes by itself (re-run the pass then)
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ghosts", MappingProxyType(dict(self.ghosts)))

    @property
    def key(self) -> tuple:
        """What of the hold a pass's result depends on."""
        return (self.held, self.in_grace)


@dataclass(frozen=True)
class HoldState:
    known: Mapping[str, Machine] = field(default_factory=dict)  # seen registered, not released
    vanished_at: Mapping[str, float] = field(default_factory=dict)
    grace_until: float = 0.0
    disrupted_until: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", MappingProxyType(dict(self.known)))
        object.__setattr__(self, "vanished_at", MappingProxyType(dict(self.vanished_at)))

    def gained_leadership(self, now: float, policy: HoldPolicy) -> "HoldState":
        return replace(self, grace_until=now + policy.grace)

    def step(self, present: Mapping[str, Machine], placed_on: Iterable[str], now: float,
             policy: HoldPolicy) -> tuple["HoldState", Hold]:
        known = dict(self.known)
        known.update(present)
        vanished_at = {m: t for m, t in self.vanished_at.items() if m not in present}
        in_grace = now < self.grace_until
        if in_grace:  # machines the schedule names that this engine never saw: held as well
            for machine_id in placed_on:
                if machine_id not in known:
                    known[machine_id] = Machine(machine_id)
        vanished = [m for m in known if m not in present]
        for machine_id in vanished:
            vanished_at.setdefault(machine_id, now)
        is_disrupted = disrupted(len(vanished), len(known))
        disrupted_until = now + policy.settle if is_disrupted else self.disrupted_until
        if in_grace and not vanished:
            in_grace = False  # everybody is back: no reason to wait
        wakes: list[float] = []
        if is_disrupted or in_grace or now < disrupted_until:
            held = set(vanished)
            if not is_disrupted and now < disrupted_until:
                wakes.append(disrupted_until)
            if in_grace:
                wakes.append(self.grace_until)
        else:
            held = {m for m in vanished if now < vanished_at[m] + policy.settle}
            wakes.extend(vanished_at[m] + policy.settle for m in held)
        released = [m for m in vanished if m not in held]
        for machine_id in released:
            known.pop(machine_id, None)
            vanished_at.pop(machine_id, None)
        if is_disrupted:
            reason = (f"{len(vanished)} of {len(known)} machines vanished at once: "
                      "holding their units where they are")
        elif in_grace:
            reason = f"grace period: waiting for {len(vanished)} machine(s) to register again"
        elif held:
            reason = f"{len(held)} machine(s) vanished: their units move {policy.settle:.1f}s after"
        else:
            reason = ""
        state = HoldState(known=known, vanished_at=vanished_at, grace_until=self.grace_until,
                          disrupted_until=disrupted_until)
        hold = Hold(held=frozenset(held), ghosts={m: known[m] for m in held}, in_grace=in_grace,
                    disrupted=is_disrupted, wake_at=min(wakes) if wakes else None, reason=reason)
        return state, hold


def with_ghosts(snapshot: ClusterSnapshot, hold: Hold) -> ClusterSnapshot:
    """The snapshot the scheduler sees: held machines present, draining (nothing new on them)."""
    if not hold.ghosts:
        return snapshot
    machines = dict(snapshot.machines)
    for machine_id, machine in hold.ghosts.items():
        machines.setdefault(machine_id, replace(machine, draining=True))
    return ClusterSnapshot(snapshot.revision, snapshot.units, machines, snapshot.placements)


def restrain(decisions: Decisions, snapshot: ClusterSnapshot, hold: Hold) -> Decisions:
    """The decisions without the moves the hold forbids.

    - a unit placed on a held machine stays there (its Unplace and its new Place are dropped),
      unless the user destroyed it or made it inactive;
    - in grace, a unit is neither placed anew nor moved: only rewrites in place and
      unplacements that are not part of a move remain.
    """
    if not hold.held and not hold.in_grace:
        return decisions
    frozen: set[str] = set()
    for unplace in decisions.unplaces:
        unit = snapshot.units.get(unplace.name)
        if unplace.machine_id in hold.held and unit is not None and unit.desired_state is not DesiredState.INACTIVE:
            frozen.add(unplace.name)
    waiting: dict[str, str] = {}
    for place in decisions.places:
        p = place.placement
        current = snapshot.placements.get(p.name)
        if current is not None and current.machine_id == p.machine_id:
            continue  # a rewrite in place
        if p.machine_id in hold.held or (current is not None and current.machine_id in hold.held):
            frozen.add(p.name)
        elif hold.in_grace:
            frozen.add(p.name)
            if current is None:
                waiting[p.name] = hold.reason or "grace period after the engine gained leadership"
    unplaces = [u for u in decisions.unplaces if u.name not in frozen]
    places = [p for p in decisions.places if p.placement.name not in frozen]
    unschedulable = dict(decisions.unschedulable)
    unschedulable.update(waiting)
    return Decisions(unplaces=unplaces, places=places, unschedulable=dict(sorted(unschedulable.items())))
