"""fleetd's image server: other machines fetch images from here, by digest. Read-only.

    GET /fleet/images/v1/images            this machine's record as in P/images/<ID>:
                                           {"machineID","url","facts","images":[{"digest",
                                           "names","size","rootfs","config"}, ...]}
    GET /fleet/images/v1/images/<digest>   the image's rootfs as an uncompressed tar
                                           (ImageStore.export); headers X-Fleet-Image-Digest and
                                           X-Fleet-Image-Config (the OCI runtime defaults, JSON)

A separate small aiohttp app (the fleet API server has no hook for extra routes), started by
the daemon on `<public_ip>:<image_port>` (fleet.conf `image_port`, default 7380; 0 disables).
Only full `sha256:<64 hex>` digests are served, no names; nothing can be written through it.
With `ssl_context` (the daemon passes one built from api_cafile/certfile/keyfile) it speaks
https and requires a client certificate signed by the cluster CA: only the cluster's machines
(and holders of its client certificates) read images. Without one (labs with --insecure, no TLS
configured) whoever reaches the port reads every image, so images must not carry secrets either
way (mount them with Bind= instead).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket

from aiohttp import web

from fleetd.errors import ImageError, ImageNotFound
from fleetd.images.store import ImageStore

log = logging.getLogger(__name__)

API = "/fleet/images/v1/images"
DEFAULT_PORT = 7380
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_BATCH = 1 << 20

STORE: web.AppKey[ImageStore] = web.AppKey("fleet_image_store", ImageStore)
INFO: web.AppKey[dict] = web.AppKey("fleet_image_server_info", dict)


def _next_batch(chunks) -> bytes:
    """Up to ~1 MiB of the export (tar headers come as many small chunks)."""
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) >= _BATCH:
            break
    return bytes(out)


async def list_images(request: web.Request) -> web.Response:
    store = request.app[STORE]
    images = await asyncio.to_thread(store.list)
    info = request.app[INFO]
    return web.json_response({
        "machineID": info.get("machineID", ""), "url": info.get("url", ""), "facts": info.get("facts", {}),
        "images": [{"digest": i.digest, "names": sorted(i.names), "size": i.size, "rootfs": str(i.rootfs),
                    "config": i.config.to_json()} for i in images],
    })


async def export_image(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    digest = request.match_info["digest"]
    if not _DIGEST_RE.match(digest):
        return web.json_response({"error": f"{digest!r} is not a full sha256:<64 hex> digest"}, status=400)
    try:
        image = await asyncio.to_thread(store.get, digest)
        chunks = iter(await asyncio.to_thread(store.export, digest))
    except ImageNotFound:
        return web.json_response({"error": f"image {digest} not found"}, status=404)
    except ImageError as exc:
        return web.json_response({"error": str(exc)}, status=500)
    response = web.StreamResponse(headers={
        "Content-Type": "application/x-tar",
        "X-Fleet-Image-Digest": image.digest,
        "X-Fleet-Image-Config": json.dumps(image.config.to_json(), separators=(",", ":")),
    })
    await response.prepare(request)
    while True:
        data = await asyncio.to_thread(_next_batch, chunks)
        if not data:
            break
        await response.write(data)
    await response.write_eof()
    return response


def build_app(store: ImageStore, info: dict | None = None) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app[INFO] = dict(info or {})
    app.router.add_get(API, list_images)
    app.router.add_get(API + "/{digest}", export_image)
    return app


class ImageServer:
    """`ImageServer(store, host, port, machine_id=, facts=)`; `await start()`, `url`, `await stop()`."""

    def __init__(self, store: ImageStore, host: str, port: int = DEFAULT_PORT, *, machine_id: str = "",
                 facts: dict | None = None, ssl_context=None):
        self.ssl_context = ssl_context
        self.store = store
        self.host = host
        self.port = port
        self.machine_id = machine_id
        self.facts = dict(facts or {})
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context is not None else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ImageError(f"image server: cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        self.port = sock.getsockname()[1]
        info = {"machineID": self.machine_id, "url": self.url, "facts": self.facts}
        self._runner = web.AppRunner(build_app(self.store, info), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()
        log.info("image server listening on %s%s", self.url,
                 " (TLS, client certificates required)" if self.ssl_context is not None else
                 " (no TLS: anyone who reaches it reads every image)")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "ImageServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
