"""The HTTP API's behavioural tests of tests/etcd/test_api.py, run again over the registry's stores
in memory (fleetd/registry/memory.py): no etcd, a fast loop for API work. A speed-up, not the
proof: tests/etcd/test_api.py runs the same tests on a real etcd."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from _api_server import ApiHarness
from fleetd.config import EtcdSettings
from fleetd.model import Machine
from fleetd.registry.memory import MemoryRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "etcd"))  # where test_api.py lives

# the tests themselves, collected here with this module's `api` fixture
from test_api import (  # noqa: F401
    MID_A,
    test_current_state_and_machine_of_a_scheduled_unit,
    test_machines_list_and_metadata_patch,
    test_put_rules,
    test_state_list_filters_and_item,
    test_unit_lifecycle,
)


@pytest.fixture
async def api(tmp_path):
    settings = EtcdSettings(endpoints=("http://127.0.0.1:1",))  # never contacted
    async with ApiHarness(settings, tmp_path, Machine(MID_A, "127.0.0.1"), registry=MemoryRegistry()) as harness:
        yield harness
