"""Presence asks its peers before it fences (fleetd/disruption.py, fleetd/api/peer.py), against
a real etcd and real peer endpoints (fleetd's API server on loopback addresses):

- etcd frozen for everybody (SIGSTOP) for longer than the TTL: nobody fences, every presence
  holds on and carries on once etcd is back;
- one machine cut off while the others reach etcd: it fences no later than its lease deadline;
- one machine cut off and its peers silent: it fences, as it always did;
- holding on through an outage, peers silent for a moment change nothing; silent for longer
  than `settle - STOP_MARGIN` after the last round that said hold, the machine fences.

One module per group of these (tests/etcd/_peer_cluster.py has the nodes): this one the total
outage; test_presence_peers_cutoff.py the peer endpoints and one machine cut off (on the
worker's etcd: nothing there pauses it); test_presence_peers_silent.py peers silent during an
outage.
"""

from __future__ import annotations

import asyncio
import time

from _peer_cluster import cluster  # noqa: F401  (a fixture)
from _peer_cluster import TTL


async def test_total_etcd_outage_fences_nobody(cluster, own_etcd):
    fenced = []
    for node in cluster:
        original = node.presence._set_lost
        node.presence._set_lost = lambda p=node.presence, f=original: (fenced.append(p.machine.id), f())
    own_etcd.pause()
    await asyncio.sleep(TTL * 2.5)
    for node in cluster:
        p = node.presence
        assert not p.lost.is_set(), f"{p.machine.id[:8]} fenced during a total etcd outage"
        assert p.holding, f"{p.machine.id[:8]} is not holding on"
        assert p.verdict is not None and not p.verdict[1].fence
    own_etcd.resume()
    until = time.monotonic() + 15
    while any(n.presence.holding or not n.presence.registered.is_set() for n in cluster):
        assert time.monotonic() < until, "did not carry on after etcd came back"
        await asyncio.sleep(0.05)
    assert not any(n.presence.lost.is_set() for n in cluster)
    # etcd (one member, leader through the freeze) expired the leases on resuming: every
    # machine registered again without fencing, whatever its peers answered meanwhile
    assert fenced == []
