"""Images in the registry: which machine holds which image, and image imports asked of a machine.

Keys (documented in docs/registry.md):

* ``P/images/<machineID>``: `MachineImages` as JSON, written by that machine's agent under its
  lease (it vanishes with the machine): the URL of its image server, its node facts (where
  fleet-run, systemd-nspawn and the store are, for `fleetctl cat --rendered`) and its images.
* ``P/machines/<machineID>/image-imports/<id>``: an `ImportRequest` written by fleetctl; the
  machine's agent (woken by its watch on ``machines/<ID>/``) downloads the file from the URL,
  checks its sha256, imports it and writes the outcome back into the same key; fleetctl reads
  the outcome and deletes the key.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from fleetd.errors import RegistryError
from fleetd.registry.connection import enc
from fleetd.registry.registry import Registry
from fleetd.model import ImageRecord, MachineImages  # noqa: F401  (data classes of the model layer)


@dataclass(frozen=True)
class ImportRequest:
    """`fleetctl image import`: fetch `url` (sha256 `sha256`) and import it as `name`."""

    id: str
    url: str
    sha256: str
    name: str = ""
    state: str = "pending"  # pending | done | failed
    digest: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "sha256": self.sha256, "name": self.name,
                "state": self.state, "digest": self.digest, "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ImportRequest":
        return cls(**{k: str(data.get(k) or "") for k in ("id", "url", "sha256", "name", "state", "digest", "error")})


def _decode(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{what}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{what}: expected a JSON object")
    return data


class ImageDirectory:
    """The registry's image keys (see the module docstring), over a connected Registry:
    fleetd.registry.stores.ImageRecords in etcd."""

    def __init__(self, registry: "Registry"):
        self.core = registry.core
        self.keys = registry.core.keys

    async def publish(self, record: MachineImages, lease_id: int) -> None:
        payload = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")).encode()
        await self.core.put(self.keys.machine_images(record.machine_id), payload, lease=lease_id)

    async def list(self) -> list[MachineImages]:
        kvs = await self.core.range(self.keys.images)
        out = []
        for kv in kvs:
            key = kv.key.decode()
            try:
                out.append(MachineImages.from_json(_decode(kv.value, key)))
            except (RegistryError, KeyError, TypeError, ValueError):
                continue  # a broken record is as good as none
        return sorted(out, key=lambda m: m.machine_id)

    async def get(self, machine_id: str) -> MachineImages | None:
        kv = await self.core.get(self.keys.machine_images(machine_id))
        if kv is None:
            return None
        return MachineImages.from_json(_decode(kv.value, self.keys.machine_images(machine_id)))

    # ------------------------------------------------------------------ imports

    async def request_import(self, machine_id: str, url: str, sha256: str, name: str = "") -> ImportRequest:
        request = ImportRequest(id=secrets.token_hex(8), url=url, sha256=sha256, name=name)
        await self._put_request(machine_id, request)
        return request

    async def _put_request(self, machine_id: str, request: ImportRequest) -> None:
        await self.core.put(self.keys.image_import(machine_id, request.id), json.dumps(request.to_json()).encode())

    async def import_requests(self, machine_id: str) -> list[ImportRequest]:
        kvs = await self.core.range(self.keys.image_imports(machine_id))
        out = []
        for kv in kvs:
            try:
                out.append(ImportRequest.from_json(_decode(kv.value, kv.key.decode())))
            except RegistryError:
                continue
        return out

    async def answer_import(self, machine_id: str, request: ImportRequest) -> bool:
        """Write the outcome, unless fleetctl gave up and deleted the request meanwhile."""
        tx = self.core.tx
        key = enc(self.keys.image_import(machine_id, request.id))
        ok, _ = await self.core.txn([tx.version(key) > 0], [tx.put(key, json.dumps(request.to_json()).encode())])
        return ok

    async def import_request(self, machine_id: str, request_id: str) -> ImportRequest | None:
        kv = await self.core.get(self.keys.image_import(machine_id, request_id))
        return None if kv is None else ImportRequest.from_json(_decode(kv.value, "image import"))

    async def delete_import(self, machine_id: str, request_id: str) -> None:
        await self.core.delete(self.keys.image_import(machine_id, request_id))
