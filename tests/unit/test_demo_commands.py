"""The demo's command runner (fleetlab/demo.py): it prints each command as a user types it
(`fleetctl ...`, not the checkout's path), runs the checkout's fleetctl with the user's
environment (`fleet-lab env`), prints the output, and a failing command ends the demo with one
line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.errors import LabError
from fleetlab.demo import Demo


class FakeLab:
    checkout = Path(__file__).resolve().parents[2]

    def user_env(self) -> dict[str, str]:
        return {"FLEETCTL_DRIVER": "api", "FLEETCTL_ENDPOINT": "https://10.0.0.1:54728"}

    def fleetctl_command(self) -> list[str]:
        return ["sh", "-c", 'echo "real fleetctl $FLEETCTL_DRIVER $FLEETCTL_ENDPOINT: $*"', "fleetctl"]


def test_fleetctl_is_shown_as_typed_and_run_with_the_user_environment():
    lines: list[str] = []
    out = Demo(FakeLab(), lines.append).run(["fleetctl", "list-units", "--full"])
    assert lines == ["$ fleetctl list-units --full",
                     "real fleetctl api https://10.0.0.1:54728: list-units --full"]
    assert out == lines[1] + "\n"


def test_a_failing_command_is_one_error_line_after_its_output():
    lines: list[str] = []
    with pytest.raises(LabError) as info:
        Demo(FakeLab(), lines.append).run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert lines == ["$ sh -c 'echo out; echo err >&2; exit 3'", "out", "err"]
    assert str(info.value) == "demo: `sh -c 'echo out; echo err >&2; exit 3'` failed with exit status 3 (output above)"
