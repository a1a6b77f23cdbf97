"""Shared fixtures (a real etcd server per test session, a fresh key prefix per test) and the
markers of the test folders, arranged by what their tests need:

    tests/unit/        neither etcd nor a lab (some need root for namespaces, and skip without)
    tests/etcd/        a real etcd server, started by the session fixture  -> marker `etcd`
    tests/lab/         a local nspawn lab (root, systemd-nspawn)            -> marker `lab`
    tests/functional/  fleet's functional tests on a lab                    -> marker `lab`
    tests/vm/          Vagrant VMs (vagrant-libvirt; docs/vagrant.md)       -> marker `vm`

so `scripts/test.sh -m "not lab"` is the fast loop and `-m "not lab and not etcd"` needs nothing.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from fleetd.config import EtcdSettings
from fleetlab.testing.etcd import EtcdServer

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"etcd": "etcd", "lab": "lab", "functional": "lab", "vm": "vm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None and item.get_closest_marker(marker) is None:  # keep lab(nodes=...) options
            item.add_marker(marker)


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
