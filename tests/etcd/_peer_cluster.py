"""Three fleetd nodes (presence with its peer client, and the API server that answers peers)
on an etcd of their own, for the presence-asks-its-peers tests (tests/etcd/test_presence_peers*.py:
the module was split so that several xdist workers wait through their TTLs at once)."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest

from fleetd.api.peer import PeerClient
from fleetd.api.server import ApiServer
from fleetd.config import EtcdSettings, FleetConfig
from fleetd.disruption import PeerAnswer
from fleetd.model import Machine
from fleetd.presence import Presence
from fleetd.registry import Registry
from fleetlab.testing.etcd import EtcdServer, free_port

TTL = 2.0
STOP_WITHIN = 20.0  # seconds for each step of a node's stop


class Node:
    def __init__(self, registry: Registry, index: int, port: int, tmp_path):
        ip = f"127.0.0.{index + 2}"
        self.presence = Presence(registry, Machine(f"{index:02x}" * 16, ip), TTL, tmp_path / str(index))
        self.presence.peer_client = PeerClient(port, timeout=0.5)
        config = FleetConfig(etcd=registry.settings, api_socket="", api_tcp=f"{ip}:{port}", api_insecure_tcp=True)
        self.api = ApiServer(config, registry, self.presence, metrics=False, use_socket_activation=False)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.presence.register()
        await self.api.start()
        self.task = asyncio.create_task(self.presence.run())

    async def stop(self) -> None:
        # each step bounded: a step that hangs fails the test naming it (instead of the suite's
        # 15-minute timeout with nothing but the event loop's stack)
        if self.task is not None:
            self.task.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=STOP_WITHIN)
            assert done, f"presence.run() of {self.presence.machine.id} still running {STOP_WITHIN}s after cancel"
        await asyncio.wait_for(self.api.stop(), STOP_WITHIN)
        await asyncio.wait_for(self.presence.peer_client.close(), STOP_WITHIN)


@asynccontextmanager
async def peer_cluster(etcd: EtcdServer, tmp_path) -> AsyncIterator[list[Node]]:
    """Three nodes (presence and API server each) on `etcd`, under a key prefix of their own
    (tests that pause etcd give them an etcd of their own; the others the worker's)."""
    settings = EtcdSettings(endpoints=(etcd.endpoint,), key_prefix=f"/fleet-test/{uuid.uuid4().hex[:12]}/",
                            request_timeout=1.0)
    registries, nodes = [], []
    port = free_port()
    try:
        for i in range(3):
            reg = await Registry.connect(settings)
            registries.append(reg)
            nodes.append(Node(reg, i, port, tmp_path))
        for node in nodes:
            await node.start()
        for node in nodes:
            await node.presence.refresh_known()
            assert len(node.presence.known) == 3
        yield nodes
    finally:
        etcd.resume()  # (a no-op unless the test paused it)
        for node in nodes:
            await node.stop()
        for reg in registries:
            await asyncio.wait_for(reg.close(), STOP_WITHIN)


def cut(registry: Registry) -> None:
    """Make this machine's keep-alives hang, as they do when it is cut off from etcd."""
    async def hang(*args, **kwargs):
        await asyncio.sleep(3600)

    registry.keepalive = hang
    registry.keepalive_direct = hang


def heal(registry: Registry) -> None:
    del registry.keepalive, registry.keepalive_direct


def silence(node: Node) -> None:
    """The peer's fleetd stops answering in time (a loaded machine, a slow TLS handshake)."""
    async def hang():
        await asyncio.sleep(2.0)  # past the asking PeerClient's timeout (0.5 s)
        return PeerAnswer.CUT_OFF

    node.presence.answer_peer = hang


def speak(node: Node) -> None:
    del node.presence.answer_peer


async def hold_through_outage(cluster, own_etcd):
    """etcd frozen until the first machine holds on to its units; then its peers fall silent."""
    p = cluster[0].presence
    own_etcd.pause()
    until = time.monotonic() + TTL * 3
    while not p.holding:
        assert time.monotonic() < until, "did not hold on during the outage"
        await asyncio.sleep(0.05)
    for peer in cluster[1:]:
        silence(peer)
    return p


@pytest.fixture
async def cluster(own_etcd, tmp_path):
    """The peer cluster on the test's own etcd (tests/etcd/conftest.py), which its tests pause."""
    async with peer_cluster(own_etcd, tmp_path) as nodes:
        yield nodes
