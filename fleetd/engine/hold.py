"""No stampede: when the engine holds the units of vanished machines where they are. Pure, no I/O.

`HoldState.step(present, placed_on, now, policy)` is called before each reconcile pass with the
machines registered now and the machines the schedule names; it returns the next state and a
`Hold`:

- a machine that vanishes is *held* for `settle` seconds: its units stay scheduled on it (a
  machine crash moves its units that much later) so that machines vanishing a few moments apart
  (their leases expire within one keep-alive interval of each other) are seen together; unless
  it vanished alone and evidence (`Liveness`, gathered by the engine after it vanished: every
  other machine's lease as etcd has it and what its agent says) proves that no other machine
  was cut off with it and that it cannot be holding on: then its units may move STOP_MARGIN
  after it vanished (`lone_loss_proven`; `Hold.ask` names the machine whose evidence the engine should gather);
- while more than DISRUPTED_FRACTION of the known machines are vanished (fleetd/disruption.py,
  Kubernetes' unhealthy-zone rule) every vanished machine is held, and for `settle` seconds
  after the disruption ends: an etcd outage, or a partition that cuts off most machines, moves
  nothing (those machines' agents keep their units running, see fleetd/disruption.py);
- for `grace` seconds after the engine gains leadership (or comes back to etcd) no unit is
  placed or moved at all, unless every machine the schedule names is registered, or the only
  one missing is proven lost as above (the old leader's crashed machine, say): machines get
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

from fleetd.disruption import STOP_MARGIN, disrupted, quiet_seconds, settle_seconds
from fleetd.engine.decisions import Decisions
from fleetd.model import ClusterSnapshot, DesiredState, Machine


EVIDENCE_MARGIN = 0.5  # seconds: keep-alive jitter and machines cut off "at once" a moment apart


@dataclass(frozen=True)
class HoldPolicy:
    grace: float  # seconds after gaining leadership before anything is placed
    settle: float  # seconds a vanished machine's units stay before they may move
    # early release of a lone vanished machine (0: never, the settle always applies)
    lease_ttl: int = 0  # whole seconds the machines' leases are granted with
    interval: float = 0.0  # seconds between two keep-alives of such a lease
    quiet: float = 0.0  # seconds every other machine must have been in touch with etcd


def policy_for(machine_ttl: float) -> HoldPolicy:
    """Grace: two machine TTLs (an agent whose lease expired registers again within about one
    keep-alive interval plus a registration). Settle: fleetd/disruption.py's settle_seconds.
    Quiet: fleetd/disruption.py's quiet_seconds."""
    from fleetd.lease_timing import keepalive_interval, lease_ttl_seconds

    ttl = lease_ttl_seconds(machine_ttl)
    return HoldPolicy(grace=2.0 * machine_ttl, settle=settle_seconds(machine_ttl), lease_ttl=ttl,
                      interval=keepalive_interval(float(ttl)), quiet=quiet_seconds(ttl))


@dataclass(frozen=True)
class Liveness:
    """What the engine learnt of one registered machine, asking after another one vanished."""
    asked_at: float  # the engine's monotonic clock, before the questions were sent
    lease_left: int | None = None  # etcd's LeaseTimeToLive: whole seconds left, rounded down
    lease_granted: int | None = None  # the TTL the lease was granted with
    quiet_for: float | None = None  # its agent: seconds since it was last cut off from etcd


def lone_loss_proven(lost_at: float, others: Iterable[str], evidence: Mapping[str, Liveness],
                     policy: HoldPolicy) -> bool:
    """True when the units of a machine that vanished alone (the engine saw it gone at
    `lost_at`; `others`: every machine registered now) may move without waiting for
    `settle` (HoldState.step moves them STOP_MARGIN after `lost_at`).

    - Nobody was cut off with it. Its lease expired at E <= lost_at, so it last renewed it at
      E - TTL and would have renewed it again by E - TTL + interval: a machine cut off at the
      same moment last renewed before that and its lease expires before E + interval. A lease
      read at `asked_at` with `lease_left` whole seconds left (etcd rounds down) lasts until
      asked_at + lease_left at least: past lost_at + interval + EVIDENCE_MARGIN, that machine
      was not cut off with it. (A lease granted another TTL proves nothing: no release; nor
      does one etcd no longer has, whose TTL it answers as -1: that machine vanished too.)
    - It cannot be holding on (fleetd/disruption.py): it keeps its units past its lease only
      while peers tell it that they are cut off too, and for `quiet_seconds` at most after
      the last of them was; a machine whose agent has been in touch with etcd for that long
      told nobody so. A machine whose lease or agent gave no answer proves nothing.
    """
    if policy.lease_ttl <= 0:
        return False
    for machine_id in others:
        e = evidence.get(machine_id)
        if e is None or e.lease_left is None or e.quiet_for is None or e.asked_at < lost_at:
            return False
        if e.lease_granted != policy.lease_ttl or e.lease_left < 0:
            return False  # another TTL, or no lease at all (etcd's -1: expired, it vanished too)
        if e.asked_at + e.lease_left <= lost_at + policy.interval + EVIDENCE_MARGIN:
            return False
        if e.quiet_for < policy.quiet:
            return False
    return True


@dataclass(frozen=True)
class Hold:
    held: frozenset[str] = frozenset()  # vanished machines whose units stay where they are
    ghosts: Mapping[str, Machine] = field(default_factory=dict)  # their last known records
    in_grace: bool = False  # place nothing new, move nothing
    disrupted: bool = False
    wake_at: float | None = None  # when the hold changes by itself (re-run the pass then)
    reason: str = ""
    ask: str | None = None  # a lone vanished machine: evidence (Liveness) may release it sooner

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
    early: Mapping[str, float] = field(default_factory=dict)  # lone losses proven: when they may move

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", MappingProxyType(dict(self.known)))
        object.__setattr__(self, "vanished_at", MappingProxyType(dict(self.vanished_at)))
        object.__setattr__(self, "early", MappingProxyType(dict(self.early)))

    def gained_leadership(self, now: float, policy: HoldPolicy) -> "HoldState":
        return replace(self, grace_until=now + policy.grace)

    def step(self, present: Mapping[str, Machine], placed_on: Iterable[str], now: float,
             policy: HoldPolicy, evidence: Mapping[str, Liveness] | None = None) -> tuple["HoldState", Hold]:
        """`evidence`: what the engine gathered of the present machines after a lone machine
        vanished (Hold.ask), if it did."""
        known = dict(self.known)
        known.update(present)
        vanished_at = {m: t for m, t in self.vanished_at.items() if m not in present}
        early = {m: t for m, t in self.early.items() if m in vanished_at}
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
        # one machine vanished alone (no disruption now or within settle): evidence may let its
        # units move STOP_MARGIN after it vanished (a machine cut off starts stopping its units
        # at its lease deadline, which is before etcd expired the lease)
        lone = vanished[0] if len(vanished) == 1 and not is_disrupted and now >= disrupted_until else None
        if lone is not None and lone not in early and evidence is not None \
                and lone_loss_proven(vanished_at[lone], present, evidence, policy):
            early[lone] = vanished_at[lone] + STOP_MARGIN
        if in_grace and (not vanished or lone in early):
            in_grace = False  # everybody is back, or the one missing is lost: no reason to wait
        wakes: list[float] = []
        if is_disrupted or in_grace or now < disrupted_until:
            held = set(vanished)
            if not is_disrupted and now < disrupted_until:
                wakes.append(disrupted_until)
            if in_grace:
                wakes.append(self.grace_until)
        else:
            release = {m: vanished_at[m] + policy.settle for m in vanished}
            if lone in early:
                release[lone] = min(release[lone], early[lone])
            held = {m for m in vanished if now < release[m]}
            wakes.extend(release[m] for m in held)
        released = [m for m in vanished if m not in held]
        for machine_id in released:
            known.pop(machine_id, None)
            vanished_at.pop(machine_id, None)
            early.pop(machine_id, None)
        if is_disrupted:
            reason = (f"{len(vanished)} of {len(known)} machines vanished at once: "
                      "holding their units where they are")
        elif in_grace:
            reason = f"grace period: waiting for {len(vanished)} machine(s) to register again"
        elif held and set(held) <= set(early):
            reason = (f"{len(held)} machine(s) vanished alone, no other was cut off with it: "
                      f"its units move {STOP_MARGIN:.1f}s after")
        elif held:
            reason = f"{len(held)} machine(s) vanished: their units move {policy.settle:.1f}s after"
        else:
            reason = ""
        ask = lone if lone in held and lone not in early and policy.lease_ttl > 0 else None
        state = HoldState(known=known, vanished_at=vanished_at, grace_until=self.grace_until,
                          disrupted_until=disrupted_until, early=early)
        hold = Hold(held=frozenset(held), ghosts={m: known[m] for m in held}, in_grace=in_grace,
                    disrupted=is_disrupted, wake_at=min(wakes) if wakes else None, reason=reason,
                    ask=ask)
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
