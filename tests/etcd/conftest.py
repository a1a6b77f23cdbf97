"""Fixtures shared by the real-etcd tests beyond the session's (tests/conftest.py)."""

from __future__ import annotations

import pytest

from fleetlab.testing.etcd import EtcdServer


@pytest.fixture
def own_etcd():
    """An etcd server of the test's own: one it may pause, freeze or stop (the worker's etcd is
    shared by the other tests)."""
    with EtcdServer() as server:
        yield server
