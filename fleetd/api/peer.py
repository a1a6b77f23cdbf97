"""The peer channel: fleetds asking each other whether they reach etcd (fleetd/disruption.py).

Server side: `GET /peer/v1/etcd` on fleetd's API listeners answers
`{"machineID": ..., "answer": "reaches-etcd"|"cut-off"}` from this machine's presence
(`Presence.answer_peer`: at most one keep-alive per PEER_POLL, with half of PEER_TIMEOUT to be
answered, so the answer is as of now and comes in time while etcd is out). Client side: `PeerClient` asks every peer at the
address it last saw in `machines/` (public_ip) on this fleetd's own API TCP port, in parallel,
with a short timeout.

The channel is the API's TCP listener, so it is exactly as authenticated as the API: with
api_cafile/api_certfile/api_keyfile set, both sides present certificates signed by the
cluster CA (mTLS) and the client checks the server's; with api_insecure_tcp (labs) it is plain
HTTP on the lab's private subnet. An answer whose machine ID is not the one asked for counts as
no answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Mapping

import aiohttp
from aiohttp import web

from fleetd.config import FleetConfig
from fleetd.disruption import PEER_TIMEOUT, PeerAnswer

log = logging.getLogger(__name__)

PEER_PATH = "/peer/v1/etcd"
QUIET_PATH = "/peer/v1/quiet"  # {"machineID": ..., "quietFor": seconds}: Presence.quiet_for, no etcd call


def _presence_of(request: web.Request):
    """This fleetd's Presence for a GET of a peer route; 405 for other methods, 404 if none."""
    from fleetd.api.context import HttpError, ctx_of

    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    presence = ctx_of(request).extras.get("presence")
    if presence is None:
        raise HttpError(404, "no presence on this fleetd")
    return presence


async def peer_handler(request: web.Request) -> web.Response:
    presence = _presence_of(request)
    answer = await presence.answer_peer()
    return web.json_response({"machineID": presence.machine.id, "answer": answer.value})


async def quiet_handler(request: web.Request) -> web.Response:
    presence = _presence_of(request)
    return web.json_response({"machineID": presence.machine.id, "quietFor": presence.quiet_for()})


def _port_of(address: str) -> int | None:
    from fleetd.api.listeners import parse_hostport

    try:
        return parse_hostport(address)[1]
    except Exception:
        return None


class PeerClient:
    """Asks peers `GET /peer/v1/etcd` on `port` (the cluster's API TCP port)."""

    def __init__(self, port: int, ssl_context: ssl.SSLContext | None = None, timeout: float = PEER_TIMEOUT):
        self.port = port
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: FleetConfig) -> "PeerClient | None":
        """None without an API TCP listener (then no peer can be asked: cut off means fence)."""
        port = _port_of(config.api_tcp) if config.api_tcp else None
        if not port:
            return None
        ctx = None
        if config.api_cafile and config.api_certfile and config.api_keyfile:
            from fleetd.wire import client_ssl_context

            ctx = client_ssl_context(config.api_cafile, config.api_certfile, config.api_keyfile)
        return cls(port, ctx)

    def _url(self, ip: str, path: str = PEER_PATH) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}{path}"

    async def _get(self, machine_id: str, ip: str, path: str) -> dict[str, Any] | None:
        """The peer's JSON answer, None if none came in time or it names another machine."""
        if not ip:
            return None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context else False, force_close=True))
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.get(self._url(ip, path)) as response:
                    if response.status != 200:
                        return None
                    body = await response.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.debug("peer %s at %s: %s", machine_id[:8], ip, exc or type(exc).__name__)
            return None
        if not isinstance(body, dict) or body.get("machineID") != machine_id:
            return None
        return body

    async def ask_one(self, machine_id: str, ip: str) -> PeerAnswer:
        body = await self._get(machine_id, ip, PEER_PATH)
        if body is None:
            return PeerAnswer.UNREACHABLE
        try:
            return PeerAnswer(body.get("answer"))
        except ValueError:
            return PeerAnswer.UNREACHABLE

    async def ask(self, peers: Mapping[str, str]) -> dict[str, PeerAnswer]:
        """Every peer's answer, by machine ID; `peers` maps machine IDs to their public IPs."""
        ids = sorted(peers)
        answers = await asyncio.gather(*(self.ask_one(m, peers[m]) for m in ids))
        return dict(zip(ids, answers))

    async def quiet(self, peers: Mapping[str, str]) -> dict[str, float | None]:
        """How long each peer has been in touch with etcd without a gap (Presence.quiet_for),
        by machine ID; None where no answer came in time."""
        ids = sorted(peers)
        bodies = await asyncio.gather(*(self._get(m, peers[m], QUIET_PATH) for m in ids))
        quiet: dict[str, float | None] = {}
        for machine_id, body in zip(ids, bodies):
            value = body.get("quietFor") if body is not None else None
            quiet[machine_id] = float(value) if isinstance(value, (int, float)) and value >= 0 else None
        return quiet

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
