"""fleetlab/testing/etcd.py's throw-away servers: their data where $FLEET_ETCD_DATA_PARENT says
(tests/conftest.py: a tmpfs, so that no test waits on fsync), removed with the server."""

from __future__ import annotations

import os
from pathlib import Path

from fleetlab.testing.etcd import DATA_PARENT_ENV, EtcdServer


def test_data_where_the_environment_says_and_removed_with_the_server(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_PARENT_ENV, str(tmp_path))
    with EtcdServer() as server:
        assert server.data_dir.parent == tmp_path and (server.data_dir / "data").is_dir()
    assert not server.data_dir.exists()


def test_the_tests_servers_are_on_a_tmpfs(etcd_server):
    if os.access("/dev/shm", os.W_OK):
        assert etcd_server.data_dir.parent == Path("/dev/shm")
