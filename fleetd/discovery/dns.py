"""fleetd's DNS responder: UDP and TCP, wire format through dnslib, answers from the view.

Questions inside the service domain are answered from the in-memory view (`view.resolve`),
so a query never waits for etcd and keeps being answered while etcd is down. Other names are
forwarded to the upstream resolvers (UDP, then TCP when the answer is truncated... the reply
is relayed as it comes) or refused, as configured. A packet that does not parse gets FORMERR
when its header can be read and is dropped otherwise; nothing a client sends can stop the
responder (TCP connections are bounded in number and time out when idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from pathlib import Path
from typing import Callable, Sequence

from fleetd.discovery.view import ServiceView

log = logging.getLogger(__name__)

UDP_LIMIT = 512
MAX_TCP_CONNECTIONS = 128
TCP_IDLE = 10.0
MAX_FORWARDS = 256
FORWARD_TIMEOUT = 2.0
REFUSE = "refuse"


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:53`, `[::1]:53` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def system_upstreams(resolv_conf: Path = Path("/etc/resolv.conf"), exclude: Sequence[str] = ()) -> list[tuple[str, int]]:
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] not in exclude:
            out.append((parts[1], 53))
    return out


def _wire():
    """fleetd/discovery/dns_wire.py (dnslib's wire format), imported by the first packet that is
    no cache hit: not at start-up (~0.3 MB of an idle fleetd's RSS, docs/performance.md,
    "fleetd idle RSS, session 10")."""
    from fleetd.discovery import dns_wire

    return dns_wire


def _servfail(data: bytes) -> bytes | None:
    wire = _wire()
    return wire.error_reply(data, wire.RCODE.SERVFAIL)


class DnsResponder:
    def __init__(self, view: Callable[[], ServiceView], *, upstreams: Sequence[tuple[str, int]] | None = None,
                 ttl: int = 5):
        self.view = view
        self.upstreams = list(upstreams or [])  # empty: refuse foreign names
        self.ttl = ttl
        self._udp = None
        self._tcp = None
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self._tcp_slots = MAX_TCP_CONNECTIONS
        self._tasks: set[asyncio.Task] = set()
        self.errors = 0
        # answers from the view by the request's bytes after its ID (flags, question, EDNS):
        # a repeated question costs a dict lookup; emptied whenever the view changes
        self._cache: dict[bytes, bytes] = {}
        self._cache_view: ServiceView | None = None
        self._rrs: dict = {}
        self.cache_hits = 0

    # ------------------------------------------------------------------ the core

    MAX_CACHE = 20000

    def answer_now(self, data: bytes, udp: bool = True) -> tuple[bool, bytes | None]:
        """(True, reply or None to drop) when the packet is answered without waiting;
        (False, None) when it must be forwarded. Never raises."""
        view = self.view()
        if view is not self._cache_view:
            self._cache = {}
            self._rrs = {}
            self._cache_view = view
        key = (b"u" if udp else b"t") + bytes(data[2:])
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return True, bytes(data[:2]) + cached
        wire = _wire()
        try:
            request = wire.DNSRecord.parse(data)
        except Exception:
            self.errors += 1
            return True, wire.error_reply(data, wire.RCODE.FORMERR)
        try:
            if request.header.qr:
                return True, None
            reply = wire.answer_local(request, view, self.ttl, self._rrs)
            if reply is None:
                if self.upstreams:
                    return False, None
                refused = request.reply()
                refused.header.aa = refused.header.ra = 0
                refused.header.rcode = wire.RCODE.REFUSED
                return True, refused.pack()
            limit = UDP_LIMIT
            if udp and request.ar:
                for rr in request.ar:
                    if rr.rtype == wire.QTYPE.OPT:
                        limit = max(UDP_LIMIT, min(int(rr.rclass), 4096))
            packed = wire.truncate(reply, limit) if udp else reply.pack()
            if len(self._cache) >= self.MAX_CACHE:
                self._cache = {}
                self._rrs = {}
            self._cache[key] = bytes(packed[2:])
            return True, packed
        except Exception as exc:  # a bug or a packet dnslib cannot re-pack: answer, do not die
            self.errors += 1
            log.debug("dns: %s", exc)
            return True, wire.error_reply(data, wire.RCODE.SERVFAIL)

    async def handle(self, data: bytes, *, udp: bool = True) -> bytes | None:
        """The reply to one packet (None: drop it). Never raises."""
        done, reply = self.answer_now(data, udp)
        if done:
            return reply
        try:
            return await self.forward(data, udp=udp) or _servfail(data)
        except Exception as exc:  # a bug or a packet dnslib cannot re-pack: answer, do not die
            self.errors += 1
            log.debug("dns: %s", exc)
            return _servfail(data)

    async def forward(self, data: bytes, *, udp: bool) -> bytes | None:
        async with self._forwards:
            for host, port in self.upstreams:
                try:
                    if udp:
                        return await asyncio.wait_for(_udp_exchange(host, port, data), FORWARD_TIMEOUT)
                    return await asyncio.wait_for(_tcp_exchange(host, port, data), FORWARD_TIMEOUT)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    continue
        return None

    # ------------------------------------------------------------------ transports

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        responder = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                done, reply = responder.answer_now(data, udp=True)  # the view: no waiting
                if done:
                    if reply is not None:
                        with contextlib.suppress(OSError):
                            self.transport.sendto(reply, addr)
                    return
                task = asyncio.ensure_future(self._answer(data, addr))  # forwarded upstream
                responder._tasks.add(task)
                task.add_done_callback(responder._tasks.discard)

            async def _answer(self, data, addr):
                reply = await responder.handle(data, udp=True)
                if reply is not None:
                    with contextlib.suppress(OSError):
                        self.transport.sendto(reply, addr)

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
        log.info("dns: answering on %s:%d (udp, tcp)", host, port)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_slots <= 0:
            writer.close()
            return
        self._tcp_slots -= 1
        try:
            while True:
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))[0]
                    data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
                    return
                reply = await self.handle(data, udp=False)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await asyncio.wait_for(writer.drain(), TCP_IDLE)
        except (OSError, asyncio.TimeoutError):
            return
        finally:
            self._tcp_slots += 1
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()


async def _udp_exchange(host: str, port: int, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, reply, addr):
            if not answer.done() and reply[:2] == data[:2]:
                answer.set_result(reply)

        def error_received(self, exc):
            if not answer.done():
                answer.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    try:
        transport.sendto(data)
        return await answer
    finally:
        transport.close()


async def _tcp_exchange(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()
