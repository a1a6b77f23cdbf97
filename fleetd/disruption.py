"""Telling an etcd outage from a machine that is cut off: pure decisions, no I/O.

Two parties apply one rule, so that they agree without talking to each other:

- an agent whose lease may have expired asks its peers whether *they* reach etcd
  (`fence_decision`). If one does, this machine is the one cut off: it stops its non-global
  units (the engine may give them to other machines). If more than `DISRUPTED_FRACTION` of the
  machines it knows (itself included, at least two, or all of them if there is only one) say
  they cannot reach etcd, etcd is out (or on the other side of a partition with a minority of
  the machines): it keeps every unit running and waits.
- the engine (fleetd/engine/hold.py) does not reschedule the units of vanished machines while
  more than `DISRUPTED_FRACTION` of the machines it knows have vanished
  (`disrupted(vanished, known)`), Kubernetes' unhealthy-zone rule.

Why no unit runs twice: an agent keeps its units past its lease only when a disrupted
fraction of the machines is cut off from etcd. If etcd is up for the others, those machines'
leases expire within one keep-alive interval of each other, so the engine sees the same
disrupted fraction vanish and holds their units where they are. The agent goes on asking its
peers while it holds on; the first peer that reaches etcd again makes it fence, and the engine
releases a vanished machine's units only after `settle` seconds without disruption, longer
than the agent needs to hear it (docs/architecture.md, "Failure semantics").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Mapping

DISRUPTED_FRACTION = 0.55  # Kubernetes' unhealthyZoneThreshold
PEER_POLL = 0.5  # seconds between two rounds of questions to the peers while holding on
PEER_TIMEOUT = 1.5  # seconds a peer has to answer (it checks etcd in PEER_TIMEOUT / 3)
STOP_MARGIN = 0.5  # seconds a fencing machine keeps to stop its units before they may move


def settle_seconds(machine_ttl: float) -> float:
    """How long the engine keeps a lone vanished machine's units where they are: one
    keep-alive interval plus 2 s (3.67 s at a TTL of 5 s). Machines cut off at one moment
    lose their leases within one keep-alive interval of each other, so by then the engine has
    seen all of them vanish and can tell a disruption from a lost machine (the 2 s cover etcd's
    lag in revoking expired leases, which checks every 0.5 s and grows under load). It is also more than
    a holding agent needs to hear that a peer reaches etcd again (PEER_POLL + PEER_TIMEOUT)
    after a disruption ends, and than a machine whose lease etcd expired during an outage
    needs to register again. The price: failover of a lost machine takes this much longer."""
    from fleetd.lease_timing import keepalive_interval

    return keepalive_interval(float(machine_ttl)) + 2.0


def quiet_seconds(machine_ttl: float) -> float:
    """How long every other machine must have been in touch with etcd before the engine may move
    a lone vanished machine's units without waiting `settle_seconds` (fleetd/engine/hold.py:
    lone_loss_proven). A machine holds on only after a round in which peers said they were cut
    off; it keeps its units `settle_seconds - STOP_MARGIN` after the last such round at most
    (`hold_until`), and if its own keep-alive gets through meanwhile it has `settle_seconds
    - 0.5` more to register again (presence: _register_after_outage). So once the last peer
    that could have said so has been in touch with etcd for twice the settle time (one second
    to spare), no machine holds on because of it (7.3 s at a TTL of 5 s)."""
    return 2.0 * settle_seconds(machine_ttl)


def fence_grace(machine_ttl: float) -> float:
    """How long a holding machine that hears a peer reach etcd again waits for its own
    keep-alive before it fences: etcd may simply be back for everybody (then its keep-alive
    gets through within a few retries and nothing stops). Bounded so that it has stopped
    its units before the engine may move them: the engine releases a vanished machine's units
    `settle_seconds` after the disruption ends, which is after the peer reached etcd; the
    machine hears it PEER_POLL + PEER_TIMEOUT later at most; 0.5 s are left to stop."""
    return max(0.0, settle_seconds(machine_ttl) - PEER_POLL - PEER_TIMEOUT - STOP_MARGIN)


def hold_until(last_hold_asked: float, reach_heard: float | None, machine_ttl: float) -> float:
    """Until when a machine that holds on (its lease may have expired, but etcd is out for a
    disrupted fraction of the machines) keeps its units running, unless its own keep-alive gets
    through first (then it carries on) or a newer round of questions says hold again.

    - `last_hold_asked`: when the last round whose verdict was *hold* was asked. Its peers were
      cut off then, so the engine's disruption had not ended then; it releases the units of a
      vanished machine `settle_seconds` after the disruption ends at the earliest (after the
      machine vanished, if there was no disruption: later still). So the units may keep
      running until `settle_seconds - STOP_MARGIN` after that round was asked, even if no peer
      answers any more: a round in which some peers are merely silent (their fleetd busy, an
      answer that missed PEER_TIMEOUT on a loaded machine) proves nothing and stops nothing.
      A machine that stays silent for that long fences (silence is no evidence of an outage).
    - `reach_heard`: when this machine first heard, while holding, that a peer reaches etcd
      again (None: not yet). etcd may be back for everybody (this machine's keep-alive then gets
      through in a moment), or this machine may be the one left cut off: it waits `fence_grace`.
    """
    until = last_hold_asked + settle_seconds(machine_ttl) - STOP_MARGIN
    if reach_heard is not None:
        until = min(until, reach_heard + fence_grace(machine_ttl))
    return until


def disrupted(affected: int, known: int) -> bool:
    """True when `affected` of `known` machines is a disruption, not a few machines lost: more
    than DISRUPTED_FRACTION of them, and at least two (or all of them, when fewer)."""
    if known <= 0 or affected <= 0:
        return False
    return affected >= min(2, known) and affected > DISRUPTED_FRACTION * known


class PeerAnswer(str, enum.Enum):
    REACHES_ETCD = "reaches-etcd"  # its last keep-alive was answered and none is pending
    CUT_OFF = "cut-off"  # it cannot reach etcd either
    UNREACHABLE = "unreachable"  # no answer (down, partitioned away, refused, timed out)


@dataclass(frozen=True)
class FenceVerdict:
    fence: bool
    reason: str
    peer_reaches: bool = False  # fence because a peer reaches etcd (not for want of answers)


def fence_decision(me: str, known: Iterable[str], answers: Mapping[str, PeerAnswer]) -> FenceVerdict:
    """What a machine whose lease may have expired does: fence (stop its non-global units) or
    keep them running. `known`: the machine IDs it last saw registered; `answers`: its peers'.

    A peer that reaches etcd means this machine is the isolated one. Otherwise the units keep
    running only if a disrupted fraction of the known machines (this one included) is
    positively known to be cut off too; silence is no evidence (a machine that reaches nobody
    fences, as it always did).
    """
    machines = set(known) | {me}
    reaching = sorted(m for m, a in answers.items() if a is PeerAnswer.REACHES_ETCD and m != me)
    if reaching:
        return FenceVerdict(True, f"machine {reaching[0][:8]} reaches etcd: this machine is cut off", True)
    cut_off = {me} | {m for m, a in answers.items() if a is PeerAnswer.CUT_OFF and m in machines}
    if disrupted(len(cut_off), len(machines)):
        return FenceVerdict(False, f"{len(cut_off)} of {len(machines)} machines cannot reach etcd: "
                                   "etcd is out, units keep running")
    unreachable = len(machines) - len(cut_off)
    return FenceVerdict(True, f"only {len(cut_off)} of {len(machines)} machines are known to be cut off from etcd "
                              f"({unreachable} did not answer)")


MIN_CUT = 1.0  # seconds without an answer from etcd before a machine calls itself cut off


def answer_for(cut_off_since: float | None, registered: bool, now: float) -> PeerAnswer:
    """What this machine tells a peer: cut off when it is not registered, or when its keep-alives
    have gone unanswered for MIN_CUT seconds or more; otherwise it reaches etcd. A keep-alive
    that is merely slow counts as reaching etcd: in doubt, the asking machine fences."""
    if not registered:
        return PeerAnswer.CUT_OFF
    if cut_off_since is not None and now - cut_off_since >= MIN_CUT:
        return PeerAnswer.CUT_OFF
    return PeerAnswer.REACHES_ETCD
