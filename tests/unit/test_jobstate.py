"""fleet's current state of a unit, derived from the placement and the agent's published state."""

import pytest

from fleetd.jobstate import current_state_of, current_states
from fleetd.model import DesiredState, Placement, Unit, UnitState
from fleetd.unit.file import UnitFile

PLAIN = Unit("a.service", UnitFile.parse("[Service]\nExecStart=/bin/sleep 100\n"))
GLOBAL = Unit("g.service", UnitFile.parse("[Service]\nExecStart=/bin/sleep 100\n[X-Fleet]\nGlobal=true\n"))
M = "m" * 32
L, D = DesiredState.LAUNCHED, DesiredState.LOADED


def state(active: str, applied: str = "", machine: str = M, unit_hash: str = PLAIN.hash) -> UnitState:
    return UnitState("a.service", machine, unit_hash, "loaded", active, "running" if active == "active" else "dead", applied)


@pytest.mark.parametrize(
    "desired,reported,expected",
    [
        (L, state("active", "launched"), "launched"),
        (L, state("activating", "loaded"), "launched"),  # coming up: systemd already works on it
        (L, state("inactive", "loaded"), "loaded"),
        (L, state("failed", "launched"), "loaded"),
        (D, state("active", "launched"), "launched"),  # asked to stop, not stopped yet
        (D, state("deactivating", "launched"), "launched"),
        (D, state("inactive", "loaded"), "loaded"),
        (D, state("active", "loaded"), "loaded"),  # a WantedBy= sidekick systemd started
        (D, state("active"), "launched"),  # a record without `applied`: systemd alone decides
        (D, state("inactive"), "loaded"),
        (L, state("active", machine="x" * 32), "inactive"),  # reported by another machine
        (L, state("active", unit_hash="0" * 40), "inactive"),  # for an older body
    ],
)
def test_current_state(desired, reported, expected):
    placement = Placement("a.service", M, PLAIN.hash, desired)
    assert current_state_of(PLAIN, placement, [reported]) == (expected, M)


def test_unscheduled_and_global():
    assert current_state_of(PLAIN, None, []) == ("inactive", "")
    assert current_state_of(PLAIN, Placement("a.service", M, PLAIN.hash, L), []) == ("inactive", M)
    assert current_state_of(GLOBAL, None, []) == ("", "")


def test_current_states_of_the_whole_cluster():
    other = Unit("b.service", PLAIN.file, DesiredState.LAUNCHED)
    placements = {"a.service": Placement("a.service", M, PLAIN.hash, L)}
    found = current_states([PLAIN, GLOBAL, other], placements,
                           [state("active", "launched"), state("active", "launched", machine="n" * 32)])
    assert found == [(PLAIN, "launched", M), (GLOBAL, "", ""), (other, "inactive", "")]
