"""pytest fixtures that boot real labs. In a test module:

    pytest_plugins = ["fleetlab.pytest_plugin"]
    pytestmark = pytest.mark.lab(nodes=3)          # options of the module's `lab`

    def test_something(lab):                       # one lab per module, 3 nodes
        assert lab.node(1).exec("hostname").stdout.strip() == lab.node(1).name

    def test_other(lab_factory):                   # more labs, torn down at session end
        small = lab_factory(nodes=1, fleetd=False)

Lab names are unique per test session (`t<4 hex>-<k>`). Every lab is torn down even when a
test fails (fixture finalizers, and atexit as a last resort). Tests marked `lab` (and every
test using these fixtures) are skipped with the reason when the host cannot run a lab.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import secrets

import pytest

from .lab import Lab, host_problem

log = logging.getLogger("fleetlab")


class LabFactory:
    """Boots labs with unique names and remembers them for teardown."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"t{secrets.token_hex(2)}"
        self._serial = itertools.count(1)
        self.labs: list[Lab] = []

    def new_name(self) -> str:
        return f"{self.prefix}-{next(self._serial)}"

    def __call__(self, nodes: int = 3, *, wait_fleetd: bool = False, **options) -> Lab:
        lab = Lab(self.new_name(), nodes=nodes, **options)
        self.labs.append(lab)
        return lab.up(wait_fleetd=wait_fleetd)

    def down_all(self) -> list[str]:
        warnings = []
        for lab in reversed(self.labs):
            try:
                warnings += lab.down()
            except Exception as exc:  # keep tearing down the others
                warnings.append(f"lab {lab.name}: {exc}")
        self.labs.clear()
        for warning in warnings:
            log.error("%s", warning)
        return warnings


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        problem = host_problem()
        if problem:
            pytest.skip(f"lab test: {problem}")


@pytest.fixture(scope="session")
def lab_factory():
    problem = host_problem()
    if problem:
        pytest.skip(f"lab test: {problem}")
    factory = LabFactory()
    atexit.register(factory.down_all)
    try:
        yield factory
    finally:
        warnings = factory.down_all()
        atexit.unregister(factory.down_all)
    assert not warnings, f"lab teardown left things behind: {warnings}"


@pytest.fixture(scope="module")
def lab(request, lab_factory):
    """A lab for the whole module; options from the module's `pytest.mark.lab(...)` (default 3 nodes)."""
    options = {}
    for marker in request.node.iter_markers("lab"):
        options = {**marker.kwargs, **options}
    instance = lab_factory(**options)
    try:
        yield instance
    finally:
        warnings = instance.down()
    assert not warnings, f"lab {instance.name} teardown left things behind: {warnings}"
