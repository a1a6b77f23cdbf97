"""Presence asks its peers before it fences (see test_presence_peers.py): the peer endpoint
answers; one machine cut off from etcd fences no later than its lease deadline whether its
peers reach etcd or are silent; the quiet endpoint tells how long a machine has reached etcd."""

from __future__ import annotations

import asyncio
import time

import pytest

from _peer_cluster import TTL, cut, heal, peer_cluster
from fleetd.disruption import PeerAnswer


@pytest.fixture
async def cluster(etcd_server, tmp_path):
    """On the worker's etcd (nothing here pauses it)."""
    async with peer_cluster(etcd_server, tmp_path) as nodes:
        yield nodes


async def test_peer_endpoint_answers(cluster):
    client = cluster[0].presence.peer_client
    peers = {n.presence.machine.id: n.presence.machine.public_ip for n in cluster[1:]}
    assert await client.ask(peers) == {m: PeerAnswer.REACHES_ETCD for m in peers}
    wrong = {"ff" * 16: cluster[1].presence.machine.public_ip}  # another machine answers there
    assert await client.ask(wrong) == {"ff" * 16: PeerAnswer.UNREACHABLE}


async def test_an_isolated_machine_fences_by_its_deadline(cluster):
    p = cluster[0].presence
    cut(p.registry)
    try:
        started = time.monotonic()
        deadline = p.expires_at
        await asyncio.wait_for(p.lost.wait(), TTL * 3)
        assert time.monotonic() <= deadline + 0.1, "fenced after the lease's deadline"
        assert time.monotonic() - started <= TTL + 0.1
        assert p.verdict is not None and p.verdict[1].fence and "reaches etcd" in p.verdict[1].reason
    finally:
        heal(p.registry)
    assert not any(n.presence.lost.is_set() for n in cluster[1:])


async def test_a_machine_that_reaches_nobody_fences(cluster):
    for node in cluster[1:]:
        await node.api.stop()  # the peers are silent
    p = cluster[0].presence
    cut(p.registry)
    try:
        deadline = p.expires_at
        await asyncio.wait_for(p.lost.wait(), TTL * 3)
        assert time.monotonic() <= deadline + 0.1
    finally:
        heal(p.registry)


async def test_quiet_endpoint_tells_how_long_a_machine_has_reached_etcd(cluster):
    """`GET /peer/v1/quiet` (what the engine asks before it moves a lone lost machine's units at
    once, fleetd/engine/hold.py): 0 while a machine's keep-alives go unanswered, then the time
    since they were answered again."""
    client = cluster[0].presence.peer_client
    peers = {n.presence.machine.id: n.presence.machine.public_ip for n in cluster}
    await asyncio.sleep(1.0)
    quiet = await client.quiet(peers)
    assert all(q is not None and q >= 1.0 for q in quiet.values()), quiet
    assert await client.quiet({"ff" * 16: cluster[1].presence.machine.public_ip}) == {"ff" * 16: None}
    target = cluster[1].presence
    cut(target.registry)
    until = time.monotonic() + 5
    while (await client.quiet(peers))[target.machine.id] != 0.0:
        assert time.monotonic() < until, "a machine cut off from etcd says it is quiet"
        await asyncio.sleep(0.1)
    heal(target.registry)
    until = time.monotonic() + 5
    while not (await client.quiet(peers))[target.machine.id]:
        assert time.monotonic() < until, "a machine that reaches etcd again stays at 0"
        await asyncio.sleep(0.1)
    after = await client.quiet(peers)
    assert after[target.machine.id] < 2.0 <= after[cluster[2].presence.machine.id]
