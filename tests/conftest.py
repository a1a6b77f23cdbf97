"""Shared fixtures: a real etcd server per test session, a fresh key prefix per test."""

from __future__ import annotations

import shutil
import uuid

import pytest

from fleetd.config import EtcdSettings
from fleetlab.testing.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server():
    if shutil.which("etcd") is None:
        pytest.fail("etcd binary not found: run the README's test command (it installs etcd-server)")
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_prefix() -> str:
    return f"/fleet-test/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def etcd_settings(etcd_server, etcd_prefix) -> EtcdSettings:
    return EtcdSettings(endpoints=(etcd_server.endpoint,), key_prefix=etcd_prefix, request_timeout=5.0)


@pytest.fixture
async def registry(etcd_settings):
    from fleetd.registry import Registry

    reg = await Registry.connect(etcd_settings)
    try:
        yield reg
    finally:
        await reg.close()
