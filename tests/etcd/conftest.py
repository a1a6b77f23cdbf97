"""Fixtures shared by the real-etcd tests beyond the session's (tests/conftest.py)."""

from __future__ import annotations

import pytest

import _early_etcd as early_etcd
from fleetlab.testing.etcd import EtcdServer


@pytest.fixture
def own_etcd(request):
    """An etcd server of the test's own: one it may pause, freeze or stop (the worker's etcd is
    shared by the other tests). In a pytest-xdist worker it was started before the test (at the
    worker's start or the previous such test's end: tests/_early_etcd.py)."""
    server = early_etcd.take("own") or EtcdServer().start()
    try:
        yield server
    finally:
        server.stop()
        if hasattr(request.config, "workerinput"):
            early_etcd.start("own")  # the next one's, while this worker goes on
