"""fleetlab/conformance.py: which reference outcomes are fleet's own wait time-outs (issue 18's
differential test runs such a reference again instead of comparing against it)."""

from fleetlab.conformance import Outcome, timed_out_steps

# what fleet v1.0.0's fleetctl printed in a CI run on a loaded machine
FLEET_GAVE_UP = (
    "Error waiting for units: Failed to find an active unit hello.service within 2s, err: "
    "Failed to fetch states within 2s\nError waiting for systemd unit states, err: Failed to "
    "find an active unit hello.service within 2s, err: Failed to fetch states within 2s\n"
)


def test_fleets_own_wait_time_out_is_found():
    run = {
        "start": Outcome("", FLEET_GAVE_UP, 1),
        "units": Outcome("UNIT\tMACHINE\tACTIVE\tSUB\n", "", 0),
        "late-states": Outcome("", "Failed to fetch states within 10s\n", 1),
    }
    assert timed_out_steps(run) == ["start", "late-states"]


def test_ordinary_errors_are_not_time_outs():
    run = {
        "start-unknown": Outcome("", "Error creating units: unable to find unit nope.service\n", 1),
        "bad-field": Outcome("", "Invalid field: bogus\n", 1),
        "ok": Outcome("Unit hello.service launched\n", "", 0),
    }
    assert timed_out_steps(run) == []
