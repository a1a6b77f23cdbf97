"""Service discovery on a real lab: how fast an endpoint appears in and leaves DNS, how fast
fleetd's DNS answers with many endpoints, what they cost in memory, and the classic sidekick.

* publish: `runs` units with `[X-Service]` (no check: a plain `sleep` service), started one at
  a time. Timed from the unit's active state in etcd (stamped by this process's watch) to its
  endpoint record in etcd and to the first DNS answer that holds it (node 1's fleetd is asked
  every 2 ms, UDP, dnslib-encoded), then from the stop request to the record's deletion and to
  the first DNS answer without it.
* sidekick: the same with `units/web-sidekick@.service`'s way (BindsTo= + a lease-bound SkyDNS
  key written by etcdctl): from the stop request to the key's deletion, and what is left when
  the machine dies (the key's TTL, against the machine lease's agent_ttl).
* dns: `endpoints` endpoint records written straight into etcd (5 per service, under a lease of
  this process), then node 1's fleetd is asked sequentially (latency) and by `concurrency`
  outstanding queries for `qps_seconds` (throughput; the client shares the 2 cores), and its
  RSS is read before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

from dnslib import QTYPE, DNSRecord

from fleetd.errors import BenchmarkError
from fleetd.model import DesiredState, Unit
from fleetd.registry.services import Endpoint, ServiceRecords
from fleetd.unit.file import UnitFile

from ..lab import Lab
from .common import (
    Client, EventLog, Log, bench_lab, blocking, cleanup, conditions, fleetd_pid, is_active_state, new_tag, quiet,
    settings_for, summary,
)

DOMAIN = "fleet.local"


class DnsClient:
    """Many outstanding UDP queries on one socket, matched by ID."""

    def __init__(self, host: str, port: int = 53):
        self.addr = (host, port)
        self.pending: dict[int, asyncio.Future] = {}
        self.transport = None
        self._ids = iter(range(1, 1 << 30))

    async def __aenter__(self) -> "DnsClient":
        loop = asyncio.get_running_loop()
        client = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                fut = client.pending.pop(int.from_bytes(data[:2], "big"), None)
                if fut is not None and not fut.done():
                    fut.set_result(data)

        self.transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=self.addr)
        return self

    async def __aexit__(self, *exc) -> None:
        self.transport.close()

    def packet(self, name: str, qtype: str = "A") -> bytearray:
        return DNSRecord.question(name, qtype).pack()

    async def ask(self, packet: bytes, timeout: float = 1.0) -> bytes | None:
        qid = next(self._ids) & 0xFFFF
        data = qid.to_bytes(2, "big") + bytes(packet[2:])
        fut = asyncio.get_running_loop().create_future()
        self.pending[qid] = fut
        self.transport.sendto(data)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.pending.pop(qid, None)
            return None

    async def addresses(self, name: str) -> set[str]:
        reply = await self.ask(self.packet(name))
        if reply is None:
            return set()
        return {str(rr.rdata) for rr in DNSRecord.parse(reply).rr if rr.rtype == QTYPE.A}


def discovery(runs: int = 20, endpoints: int = 10000, qps_seconds: float = 5.0, concurrency: int = 64,
              nodes: int = 3, agent_ttl: str = "5s", keep_lab: str | None = None, log: Log = quiet) -> dict[str, Any]:
    if runs < 0 or endpoints < 0:
        raise BenchmarkError("discovery: --runs and --endpoints must be >= 0 (0 skips that part)")
    result: dict[str, Any] = {"benchmark": "discovery", "before": conditions()}
    with bench_lab("discovery", nodes=nodes, agent_ttl=agent_ttl, keep_lab=keep_lab, log=log) as lab:
        result["lab"] = {"name": lab.name, "nodes": len(lab.nodes), "agent_ttl": lab.agent_ttl}
        result.update(asyncio.run(_discovery(lab, runs, endpoints, qps_seconds, concurrency, log)))
    result["after"] = conditions()
    return result


async def _wait(predicate, timeout: float, what: str, interval: float = 0.002) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise BenchmarkError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic()


def _unit(service: str, port: int) -> UnitFile:
    return UnitFile.parse(f"[Service]\nExecStart=/bin/sleep infinity\n\n[X-Service]\nName={service}\nPort={port}\n")


async def _discovery(lab: Lab, runs: int, count: int, qps_seconds: float, concurrency: int, log: Log) -> dict:
    out: dict[str, Any] = {}
    node1 = lab.node(1)
    tag = new_tag("ds")
    service = tag.replace("-", "")
    names = [f"{tag}-{i}.service" for i in range(runs)]
    async with Client(settings_for(lab)) as client, DnsClient(node1.ip) as dns, \
            cleanup(lambda: client.destroy(names, timeout=120)):
        reg = client.reg
        records = ServiceRecords(reg)
        async with EventLog(reg, [reg.keys.states, records.base]) as events:
            if not runs:
                names = []
            publish = {"active_to_record": [], "active_to_dns": [], "stop_to_record_gone": [], "stop_to_dns_gone": []}
            for i, name in enumerate(names):
                label = f"{tag}-{i}"
                fqdn = f"{label}.{service}.{DOMAIN}"
                t0 = time.monotonic()
                await client.fleet.create_units([Unit(name, _unit(service, 20000 + i), DesiredState.LAUNCHED)])
                t_dns = await _wait(lambda: _has(dns, fqdn), 30, f"{name} in DNS")
                await asyncio.sleep(0.05)
                active = events.first(t0, is_active_state(reg.keys, name))
                record = events.first(t0, lambda ev: ev.key.endswith(f"/{name}") and ev.key.startswith(records.base)
                                      and ev.value is not None)
                if active is None or record is None:
                    raise BenchmarkError(f"{name}: no active state or record event seen")
                publish["active_to_record"].append(record - active)
                publish["active_to_dns"].append(t_dns - t0 - active)
                t1 = time.monotonic()
                await client.fleet.set_desired_state([name], DesiredState.LOADED)
                t_gone = await _wait(lambda: _lacks(dns, fqdn), 30, f"{name} gone from DNS")
                await asyncio.sleep(0.05)
                deleted = events.first(t1, lambda ev: ev.key.startswith(records.base) and ev.key.endswith(f"/{name}")
                                       and ev.value is None)
                if deleted is None:
                    raise BenchmarkError(f"{name}: no deletion of its record seen")
                publish["stop_to_record_gone"].append(deleted)
                publish["stop_to_dns_gone"].append(t_gone - t1)
            if runs:
                out["publish"] = {k: summary(v) for k, v in publish.items()}
                log(f"publish: {out['publish']}")

        if runs:
            out["sidekick"] = await _sidekick(lab, client, log)

        if count:
            out["dns"] = await _dns_load(lab, client, records, dns, count, qps_seconds, concurrency, log)
    return out


async def _has(dns: DnsClient, name: str) -> bool:
    return bool(await dns.addresses(name))


async def _lacks(dns: DnsClient, name: str) -> bool:
    reply = await dns.ask(dns.packet(name))
    return reply is not None and not DNSRecord.parse(reply).rr


SIDEKICK = """\
[Unit]
BindsTo={main}
After={main}

[Service]
Environment=ETCDCTL_API=3 ETCDCTL_ENDPOINTS={endpoints} TTL=10 KEY={key}
ExecStart=/bin/sh -ec "lease=$$(etcdctl lease grant $${{TTL}} | cut -d' ' -f2); \\
    etcdctl put --lease=$$lease $${{KEY}} '{{\\"host\\":\\"%H\\",\\"port\\":8080,\\"ttl\\":'$${{TTL}}'}}' >/dev/null; \\
    exec etcdctl lease keep-alive $$lease >/dev/null"
ExecStopPost=-/bin/sh -c 'etcdctl del $${{KEY}} >/dev/null'

[X-Fleet]
MachineOf={main}
"""


async def _sidekick(lab: Lab, client: Client, log: Log) -> dict[str, Any]:
    """The fleet-era way, timed the same way: stop the main unit, until its SkyDNS key is gone."""
    tag = new_tag("sk")
    main, side = f"{tag}.service", f"{tag}-sidekick.service"
    key = f"/skydns/local/fleet/{tag}/sidekick"
    reg = client.reg
    side_file = UnitFile.parse(SIDEKICK.format(main=main, endpoints=",".join(lab.etcd_endpoints), key=key))
    main_file = UnitFile.parse("[Service]\nExecStart=/bin/sleep infinity\n")
    times = []
    async with cleanup(lambda: client.destroy([main, side], timeout=60)):
        await client.fleet.create_units([Unit(main, main_file, DesiredState.LOADED),
                                         Unit(side, side_file, DesiredState.LOADED)])
        for _ in range(5):
            async def loaded() -> bool:  # the next launch is a transition the agent acts on
                infos = await client.infos()
                return all(infos[n].current_state == "loaded" for n in (main, side))

            await client.wait(loaded, 60, "the sidekick pair loaded")
            await client.fleet.set_desired_state([main, side], DesiredState.LAUNCHED)

            async def present() -> bool:
                return await reg.core.get(key) is not None

            await _wait(present, 60, "the sidekick's key", interval=0.01)
            value = json.loads((await reg.core.get(key)).value)  # the unit's quoting makes valid JSON
            if sorted(value) != ["host", "port", "ttl"]:
                raise BenchmarkError(f"sidekick wrote {value!r}")
            async with EventLog(reg, [key]) as events:
                t1 = time.monotonic()
                await client.fleet.set_desired_state([main], DesiredState.LOADED)

                async def absent() -> bool:
                    return await reg.core.get(key) is None

                await _wait(absent, 30, "the sidekick's key to go", interval=0.01)
                await asyncio.sleep(0.05)
                gone = events.first(t1, lambda ev: ev.value is None)
                times.append(gone if gone is not None else time.monotonic() - t1)
            await client.fleet.set_desired_state([side], DesiredState.LOADED)
    result = {"stop_to_key_gone": summary(times), "machine_dies_key_gone_after_s": 10,
              "machine_dies_endpoint_gone_after_s": lab.agent_ttl}
    log(f"sidekick: {result}")
    return result


async def _dns_load(lab: Lab, client: Client, records: ServiceRecords, dns: DnsClient, count: int,
                    seconds: float, concurrency: int, log: Log) -> dict[str, Any]:
    node1 = lab.node(1)
    pid = await blocking(fleetd_pid, node1)
    rss_before = await blocking(_rss_kb, node1, pid)
    lease = await client.reg.grant_lease(600)
    services = max(1, count // 5)
    eps = [Endpoint(f"s{i % services}", f"u{i}.service", f"{i % 997:032x}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                    8000 + i % 1000, label=f"u{i}") for i in range(count)]
    try:
        started = time.monotonic()
        await records.publish(eps, lease)
        last = f"s{(count - 1) % services}.{DOMAIN}"
        await _wait(lambda: _has(dns, last), 120, "the last of the endpoints in DNS", interval=0.05)
        log(f"dns: {count} endpoints written and visible in node 1's DNS in {time.monotonic() - started:.1f}s")
        await asyncio.sleep(2.0)
        rss_after = await blocking(_rss_kb, node1, pid)
        packets = [dns.packet(f"s{random.randrange(services)}.{DOMAIN}") for _ in range(256)]
        latencies = []
        lost = 0
        for i in range(2000):
            t = time.perf_counter()
            reply = await dns.ask(packets[i % len(packets)])
            if reply is None:
                lost += 1  # no answer within 1 s (a dropped datagram on the loaded host)
                continue
            latencies.append((time.perf_counter() - t) * 1000)
        if not latencies:
            raise BenchmarkError("no DNS query was answered")
        answered, elapsed = await _throughput(node1.ip, packets, seconds, concurrency)
        # every question different (random letter case, as resolvers' 0x20 does): no answer cache
        unique = [dns.packet("".join(c.upper() if random.random() < 0.5 else c
                                     for c in f"s{random.randrange(services)}.{DOMAIN}")) for _ in range(40000)]
        answered_uncached, elapsed_uncached = await _throughput(node1.ip, unique, seconds, concurrency)
    finally:
        with contextlib.suppress(Exception):
            await client.reg.revoke_lease(lease)
    result = {"endpoints": count, "services": services, "latency_ms": summary(latencies), "unanswered": lost,
              "queries_per_s": round(answered / elapsed), "concurrency": concurrency,
              "queries_per_s_uncached": round(answered_uncached / elapsed_uncached),
              "fleetd_rss_mb_before": round(rss_before / 1024, 1), "fleetd_rss_mb_with_endpoints": round(rss_after / 1024, 1),
              "fleetd_rss_growth_mb": round((rss_after - rss_before) / 1024, 1)}
    log(f"dns: {result}")
    return result


async def _throughput(host: str, packets: list, seconds: float, window: int) -> tuple[int, float]:
    """Answers per second with `window` queries outstanding: each answer sends the next query
    (no task or future per query, so that the client costs little of the shared CPU); queries
    unanswered for 1 s are replaced."""
    loop = asyncio.get_running_loop()
    sent: dict[int, float] = {}
    count = {"answered": 0, "next": 0}
    transport_box = {}

    def send() -> None:
        count["next"] += 1
        qid = count["next"] & 0xFFFF
        packet = packets[count["next"] % len(packets)]
        sent[qid] = time.monotonic()
        transport_box["t"].sendto(qid.to_bytes(2, "big") + bytes(packet[2:]))

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if sent.pop(int.from_bytes(data[:2], "big"), None) is not None:
                count["answered"] += 1
                send()

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(host, 53))
    transport_box["t"] = transport
    try:
        started = time.monotonic()
        for _ in range(window):
            send()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for qid in [q for q, t in sent.items() if now - t > 1.0]:
                del sent[qid]
                send()
        return count["answered"], time.monotonic() - started
    finally:
        transport.close()


def _rss_kb(node, pid: int) -> int:
    status = node.exec(["cat", f"/proc/{pid}/status"]).stdout
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for fleetd pid {pid} on {node.name}")
