"""aetcd's internals the registry depends on (fleetd/registry/_aetcd_compat.py) still exist.

Fails loudly on an aetcd upgrade that renames or removes any of them: then read the new
aetcd, adapt _aetcd_compat.py (the only module that touches them) and the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import aetcd

from fleetd.config import EtcdSettings
from fleetd.registry._aetcd_compat import AETCD_INTERNALS, AETCD_TESTED_VERSION, AetcdClientBase
from fleetd.registry.connection import Connection


def test_aetcd_is_the_tested_minor_version():
    installed = version("aetcd")
    assert installed.split(".")[:2] == AETCD_TESTED_VERSION.split("."), (
        f"aetcd {installed} installed, fleetd/registry/_aetcd_compat.py was written for {AETCD_TESTED_VERSION}.x")


def test_aetcd_internals_exist():
    client = aetcd.Client(timeout=3.0, options={"grpc.keepalive_time_ms": 1})
    missing = []
    for kind, name in AETCD_INTERNALS:
        if kind == "method":
            if not callable(getattr(aetcd.Client, name, None)):
                missing.append(f"aetcd.Client.{name}()")
        elif not hasattr(client, name):
            missing.append(f"aetcd.Client().{name}")
    assert not missing, "aetcd internals gone (adapt fleetd/registry/_aetcd_compat.py): " + ", ".join(missing)
    assert isinstance(client._connected, asyncio.Event)
    assert client._timeout == 3.0 and client._options == {"grpc.keepalive_time_ms": 1}
    assert list(inspect.signature(aetcd.Client._ops_to_requests).parameters) == ["self", "ops"]


def test_compat_accessors_on_a_client_not_connected():
    client = Connection(EtcdSettings(endpoints=("http://127.0.0.1:1",), request_timeout=2.5)).client
    assert isinstance(client, AetcdClientBase)
    assert client.request_timeout == 2.5 and not client.is_connected
    assert dict(client.channel_options)["grpc.keepalive_timeout_ms"] == 5_000
    assert client.credentials_user == (None, None) and client.current_watcher is None
    tx = client.transactions
    requests = client.ops_to_requests([tx.put(b"k", b"v"), tx.get(b"k")])
    assert [r.WhichOneof("request") for r in requests] == ["request_put", "request_range"]
    client.drop_channel()
    assert not client.is_connected and client.channel is None
