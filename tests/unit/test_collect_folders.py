"""tests/_folders.py: a test folder whose every test `-m` deselects is not collected at all."""

from __future__ import annotations

import pytest

from _folders import TESTS, deselected_folder, deselects_all


@pytest.mark.parametrize("markexpr, markers, expected", [
    ("not lab", ("lab",), True),
    ("not lab", ("etcd",), False),
    ("not lab and not etcd", ("etcd",), True),
    ("not lab and not slow", ("lab",), True),
    ("not (lab or vm)", ("lab",), True),
    ("not vm", ("vm", "lab"), True),
    ("not vm", ("lab",), False),
    ("lab", ("lab",), False),
    ("etcd or not lab", ("lab",), False),  # a lab test also marked etcd is selected
    ("not lab or slow", ("lab",), False),
    ("not lab(nodes=2)", ("lab",), False),  # arguments: not read, so collected
    ("", ("lab",), False),
    ("not", ("lab",), False),
])
def test_deselects_all(markexpr, markers, expected):
    assert deselects_all(markexpr, markers) is expected


def test_the_fast_loop_leaves_out_the_lab_folders_only():
    assert {p.name for p in TESTS.iterdir() if deselected_folder(p, "not lab")} == {"lab", "functional", "vm"}
    assert not deselected_folder(TESTS / "lab" / "test_lab.py", "not lab")  # folders only
    assert not any(deselected_folder(p, "") for p in TESTS.iterdir())
