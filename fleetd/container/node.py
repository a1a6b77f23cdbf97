"""Container units on the node: resolve and fetch images, render units, publish the image list.

The agent owns one `NodeContainers`. Each reconcile pass it

1. answers image imports asked of this machine (`process_imports`),
2. turns the desired units into the texts to write (`texts`): a container unit's image is
   looked up in the local store; a missing one is fetched from a machine that publishes it
   (``P/images/<ID>``, from its image server, checked against its digest) *before* the unit
   is loaded; then the unit is rendered (fleetd/container/render.py). A unit whose image
   exists nowhere, or whose command is not in the image, is rendered as a unit that fails
   saying so;
3. publishes what this machine holds (`publish`), when that changed or the lease is new.

Blocking store work (imports, exports, directory scans) runs in threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import aiohttp

from fleetd.container.render import CannotRun, ImageInfo, NodeFacts, render_or_explain
from fleetd.unit.container import ContainerSpec, container_spec, is_container_unit
from fleetd.errors import FleetError, ImageError, ImageNotFound, InvalidUnitOptions
from fleetd.images.oci import ImageConfig
from fleetd.images.rootpath import resolve_in_root
from fleetd.images.store import Image, ImageStore
from fleetd.unit.file import UnitFile

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGES_API = "/fleet/images/v1/images"
CONFIG_HEADER = "X-Fleet-Image-Config"
FETCH_RETRY_AFTER = 5.0  # seconds before a failed fetch of the same image is tried again


@dataclass(frozen=True)
class Holder:
    machine_id: str
    url: str


def image_info(ref: str, image: Image) -> ImageInfo:
    cfg = image.config
    return ImageInfo(ref=ref, digest=image.digest, rootfs=str(image.rootfs), env=tuple(cfg.env),
                     entrypoint=tuple(cfg.entrypoint), cmd=tuple(cfg.cmd), workdir=cfg.workdir,
                     user=cfg.user)


def command_problem(spec: ContainerSpec, info: ImageInfo) -> str | None:
    """Why the container's command cannot start in the image (None: it can, as far as the
    files tell). Checks the executable (PATH lookup inside the image) and, for nspawn with
    User=, that the image has getent (nspawn resolves users with it)."""
    from fleetd.container.render import effective_command, effective_environment

    command = effective_command(spec, info)
    if not command:
        return None  # rendered as CannotRun by render_unit with its own message
    env = dict(effective_environment(spec, info))
    path = env.get("PATH", DEFAULT_PATH)

    def find(program: str) -> Path | None:
        candidates = [program] if "/" in program else [f"{d}/{program}" for d in path.split(":") if d]
        for candidate in candidates:
            if not candidate.startswith("/"):
                candidate = os.path.join(spec.workdir or info.workdir or "/", candidate)
            try:
                host = resolve_in_root(info.rootfs, candidate)
            except OSError:
                continue
            if host.is_file() and os.access(host, os.X_OK):
                return host
        return None

    if find(command[0]) is None:
        return (f'command "{command[0]}" not found in image "{spec.image}" ({info.digest[:19]})'
                + ("" if "/" in command[0] else f" (PATH={path})"))
    user = spec.user or info.user
    if spec.runtime == "nspawn" and user and user not in ("root", "0", "0:0") and find("getent") is None:
        return (f'User={user} with Runtime=nspawn needs getent in image "{spec.image}" '
                "(systemd-nspawn resolves users with it); use Runtime=launcher")
    return None


class NodeContainers:
    """Image resolution, fetching, rendering and publication for one machine."""

    def __init__(self, store: ImageStore, facts: NodeFacts, machine_id: str, *,
                 directory=None, server_url: str = "", fetch_timeout: float = 600.0, client_ssl=None):
        self.store = store
        # TLS to other machines' image servers (our certificate, the cluster CA); None: default
        self.client_ssl = client_ssl
        self.facts = facts
        self.machine_id = machine_id
        self.directory = directory  # fleetd.registry.images.ImageDirectory, None: no fetching
        self.server_url = server_url
        self.fetch_timeout = fetch_timeout
        self._failed: dict[str, tuple[float, CannotRun]] = {}
        self._published: tuple[int | None, object] | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ rendering

    async def texts(self, units: Mapping[str, UnitFile]) -> dict[str, str]:
        """The text to write for each unit (plain units unchanged)."""
        out: dict[str, str] = {}
        specs: dict[str, ContainerSpec] = {}
        for name, unit in units.items():
            if not is_container_unit(unit):
                out[name] = unit.serialize()
                continue
            try:
                specs[name] = container_spec(unit, name)
            except InvalidUnitOptions:
                out[name] = render_or_explain(name, unit, self.facts, None)
        images: dict[str, ImageInfo | CannotRun] = {}
        for ref in sorted({s.image for s in specs.values()}):
            images[ref] = await self.image(ref)
        for name, spec in specs.items():
            image = images[spec.image]
            if isinstance(image, ImageInfo):
                problem = await asyncio.to_thread(command_problem, spec, image)
                if problem:
                    image = CannotRun(problem)
            out[name] = render_or_explain(name, units[name], self.facts, image)
        return out

    async def image(self, ref: str) -> ImageInfo | CannotRun:
        """The image `ref` in the local store, fetched from another machine if need be."""
        async with self._lock:
            try:
                return image_info(ref, await asyncio.to_thread(self.store.get, ref))
            except ImageNotFound:
                pass
            except ImageError as exc:  # e.g. an ambiguous digest prefix
                return CannotRun(str(exc))
            failed = self._failed.get(ref)
            if failed is not None and time.monotonic() - failed[0] < FETCH_RETRY_AFTER:
                return failed[1]
            result = await self._fetch(ref)
            if isinstance(result, CannotRun):
                self._failed[ref] = (time.monotonic(), result)
                log.warning("containers: %s", result.message)
                return result
            self._failed.pop(ref, None)
            return image_info(ref, result)

    async def _holders(self, ref: str) -> tuple[str | None, list[Holder]]:
        """The digest `ref` stands for among other machines, and who serves it."""
        if self.directory is None:
            return None, []
        records = [r for r in await self.directory.list() if r.machine_id != self.machine_id and r.url]
        found: dict[str, list[Holder]] = {}
        for record in records:
            for image in record.find(ref):
                found.setdefault(image.digest, []).append(Holder(record.machine_id, record.url))
        if not found:
            return None, []
        counts = Counter({d: len(h) for d, h in found.items()})
        digest = sorted(counts, key=lambda d: (-counts[d], d))[0]
        if len(found) > 1:
            log.warning('containers: image "%s" means %d different images on other machines; using %s '
                        "(held by the most machines)", ref, len(found), digest)
        return digest, found[digest]

    async def _fetch(self, ref: str) -> Image | CannotRun:
        try:
            digest, holders = await self._holders(ref)
        except FleetError as exc:
            return CannotRun(f'image "{ref}" is not on this machine and the registry could not be '
                             f"asked who has it: {exc}")
        if digest is None:
            return CannotRun(f'image "{ref}" not found on this machine ({self.machine_id[:8]}) nor on '
                             "any other machine (see fleetctl images; import it with fleetctl image import)")
        name = None if ref.startswith("sha256:") else ref
        errors = []
        for holder in holders:
            started = time.monotonic()
            try:
                image = await self._download(holder, digest, name)
            except (FleetError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                errors.append(f"from {holder.machine_id[:8]}: {exc or type(exc).__name__}")
                continue
            log.info('containers: fetched image "%s" (%s, %d bytes) from machine %s in %.2fs', ref,
                     digest, image.size, holder.machine_id[:8], time.monotonic() - started)
            return image
        return CannotRun(f'image "{ref}" ({digest[:19]}) could not be fetched: {"; ".join(errors)}')

    async def _download(self, holder: Holder, digest: str, name: str | None) -> Image:
        url = f"{holder.url.rstrip('/')}{IMAGES_API}/{digest}"
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout, sock_connect=5, sock_read=60)
        self.store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.store.root) as spool:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                ssl_arg = self.client_ssl if (self.client_ssl is not None and url.startswith("https:")) else True
                async with session.get(url, ssl=ssl_arg) as response:
                    if response.status != 200:
                        text = (await response.text())[:200]
                        raise ImageError(f"GET {url}: HTTP {response.status}: {text.strip()}")
                    config = ImageConfig.from_store(_json_header(response.headers.get(CONFIG_HEADER)))
                    async for chunk in response.content.iter_chunked(1 << 20):
                        spool.write(chunk)
            spool.seek(0)
            return await asyncio.to_thread(self.store.import_stream, spool, name,
                                           expected_digest=digest, config=config)

    # ------------------------------------------------------------------ imports asked by fleetctl

    async def process_imports(self) -> int:
        """Answer pending `fleetctl image import` requests for this machine; how many."""
        if self.directory is None:
            return 0
        done = 0
        for request in await self.directory.import_requests(self.machine_id):
            if request.state != "pending":
                continue
            try:
                image = await self._import_from(request.url, request.sha256, request.name or None)
                answer = type(request)(**{**request.to_json(), "state": "done", "digest": image.digest})
                log.info("containers: imported %s as %s (%s)", request.url, request.name or "-", image.digest)
            except (FleetError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                answer = type(request)(**{**request.to_json(), "state": "failed",
                                          "error": str(exc) or type(exc).__name__})
                log.warning("containers: image import %s failed: %s", request.url, answer.error)
            await self.directory.answer_import(self.machine_id, answer)
            done += 1
        return done

    async def _import_from(self, url: str, sha256: str, name: str | None) -> Image:
        if not url.startswith("http://") and not url.startswith("https://"):
            raise ImageError(f"import URL {url!r}: only http(s) is supported")
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout, sock_connect=5, sock_read=60)
        self.store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.store.root, prefix=".import-", suffix=".tar") as spool:
            digest = hashlib.sha256()
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(url) as response:
                    if response.status != 200:
                        raise ImageError(f"GET {url}: HTTP {response.status}")
                    async for chunk in response.content.iter_chunked(1 << 20):
                        digest.update(chunk)
                        spool.write(chunk)
            spool.flush()
            if sha256 and digest.hexdigest() != sha256:
                raise ImageError(f"download from {url} has sha256 {digest.hexdigest()}, expected {sha256}")
            return await asyncio.to_thread(self.store.import_path, spool.name, name)

    # ------------------------------------------------------------------ publication

    def record(self):
        from fleetd.registry.images import ImageRecord, MachineImages

        images = tuple(ImageRecord(i.digest, tuple(sorted(i.names)), i.size, str(i.rootfs), i.config.to_json())
                       for i in self.store.list())
        return MachineImages(self.machine_id, self.server_url, self.facts.to_json(), images)

    async def publish(self, lease_id: int | None) -> bool:
        """Publish this machine's images if they (or the lease) changed; whether it wrote."""
        if self.directory is None or lease_id is None:
            return False
        try:
            record = await asyncio.to_thread(self.record)
        except (ImageError, OSError) as exc:
            log.warning("containers: cannot list the image store: %s", exc)
            return False
        state = (lease_id, record.to_json())
        if self._published == state:
            return False
        await self.directory.publish(record, lease_id)
        self._published = state
        return True


def _json_header(value: str | None) -> dict:
    import json

    if not value:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def local_facts(images_dir: str | Path) -> NodeFacts:
    """This machine's facts: fleet-run next to the running interpreter, systemd-nspawn from PATH."""
    import shutil
    import sys

    fleet_run = Path(sys.executable).parent / "fleet-run"
    nspawn = shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn"
    try:
        userns = int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        userns = False
    return NodeFacts(fleet_run=str(fleet_run), nspawn=nspawn, images_dir=str(images_dir), userns=userns)
