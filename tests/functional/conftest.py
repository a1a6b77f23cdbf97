"""Fixtures of the functional lab suite.

Every module boots one lab (`pytest.mark.lab(...)` + the `lab` fixture of
fleetlab.pytest_plugin). The autouse `fleet` fixture hands a test a `Fleet` view of it and,
after the test, makes the lab whole and empty again (nodes up, partitions healed, fleetd running,
no drain, dynamic metadata removed, every unit destroyed and gone from every node), so that the
tests of a module stay independent. When a test fails, the last fleetd log lines of every node
are printed (fleet's functional tests dump the journals too).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _functional import Fleet  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.functional_failed = report.failed


@pytest.fixture(autouse=True)
def fleet(request, lab, tmp_path) -> Fleet:
    view = Fleet(lab, tmp_path)
    view.wait_machines(len(lab.nodes), timeout=60)
    yield view
    if getattr(request.node, "functional_failed", False):
        for node in lab.nodes:
            if node.running:
                print(f"\n----- {node.name} ({node.machine_id[:8]}) fleetd log -----")
                proc = node.exec(["journalctl", "--no-pager", "-u", "fleetd.service", "-n", "80"], check=False)
                print(proc.stdout or proc.stderr)
    view.restore()
