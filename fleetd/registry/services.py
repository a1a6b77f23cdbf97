"""Service endpoints in etcd: fleet's records and the same endpoints in SkyDNS's format.

Keys (documented in docs/registry.md):

* ``P/services/<service>/<machineID>/<unit>``: an `Endpoint` as JSON, written by the agent of
  the machine running the unit, under that machine's lease (a dead machine's endpoints vanish
  with its lease). Present while the unit is active; `health` says whether its check passes
  (``passing``) or not (``critical``).
* ``<skydns prefix><reversed domain>/<service>/<unit label>`` (default prefix ``/skydns/``):
  ``{"host","port","priority","weight","ttl"}``, only while the endpoint is healthy, under the
  same lease; what CoreDNS's etcd plugin (or SkyDNS) serves as ``<service>.<domain>``.

A record that is not valid JSON, or not an endpoint of the key it sits under (someone else
wrote it), is skipped with one log line per key and revision.
"""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator, Iterable, Sequence

from fleetd.errors import RegistryError
from fleetd.registry.connection import enc, prefix_end
from fleetd.model import CRITICAL, PASSING, Endpoint  # noqa: F401  (data classes of the model layer)
from fleetd.registry.core import WatchCompacted, chunks
from fleetd.registry.registry import Registry

log = logging.getLogger(__name__)

from fleetd.config import DEFAULT_SKYDNS_PREFIX  # noqa: E402,F401  (one definition)


def skydns_path(domain: str) -> str:
    """`fleet.local` -> `local/fleet/` (SkyDNS keys are the domain's labels reversed)."""
    labels = [label for label in domain.strip(".").lower().split(".") if label]
    return "".join(f"{label}/" for label in reversed(labels))


def decode_endpoint(key: str, value: bytes, base: str) -> Endpoint:
    """An endpoint from its key and value; ValueError when it is not one of ours."""
    parts = key[len(base):].split("/")
    if len(parts) != 3:
        raise ValueError("key is not services/<service>/<machine>/<unit>")
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("value is not valid JSON") from None
    try:
        endpoint = Endpoint.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an endpoint record ({exc})") from None
    if endpoint.key_parts != tuple(parts):
        raise ValueError("record does not match its key (written by someone else?)")
    return endpoint


class ServiceRecords:
    """Endpoint records of one registry: publishing (agents) and reading (everyone)."""

    def __init__(self, registry: Registry, *, domain: str = "fleet.local",
                 skydns_prefix: str = DEFAULT_SKYDNS_PREFIX, ttl: int = 5):
        self.registry = registry
        self.core = registry.core  # the registry's public core: requests, transactions, watches
        self.base = f"{registry.keys.prefix}services/"
        self.domain = domain
        self.skydns_base = (skydns_prefix.rstrip("/") + "/" + skydns_path(domain)) if skydns_prefix else ""
        self.ttl = ttl
        self._complained: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ keys

    def key(self, endpoint: Endpoint) -> str:
        return f"{self.base}{endpoint.service}/{endpoint.machine_id}/{endpoint.unit}"

    def service_prefix(self, service: str | None = None) -> str:
        return f"{self.base}{service}/" if service else self.base

    def skydns_key(self, endpoint: Endpoint) -> str:
        return f"{self.skydns_base}{endpoint.service}/{endpoint.label or 'unit'}"

    def skydns_value(self, endpoint: Endpoint) -> bytes:
        return json.dumps({"host": endpoint.host, "port": endpoint.port, "priority": endpoint.priority,
                           "weight": endpoint.weight, "ttl": self.ttl}).encode()

    # ------------------------------------------------------------------ writing (the agent)

    async def publish(self, endpoints: Sequence[Endpoint], lease_id: int) -> None:
        """Write each endpoint's record (and its SkyDNS key while healthy) under the lease."""
        tx = self.core.tx
        ops = []
        for ep in endpoints:
            ops.append(tx.put(enc(self.key(ep)), json.dumps(ep.to_json()).encode(), lease=lease_id))
            if self.skydns_base:
                if ep.healthy:
                    ops.append(tx.put(enc(self.skydns_key(ep)), self.skydns_value(ep), lease=lease_id))
                else:
                    ops.append(tx.delete(enc(self.skydns_key(ep))))
        for chunk in chunks(ops):
            await self.core.txn([], list(chunk))

    async def withdraw(self, endpoints: Iterable[Endpoint]) -> None:
        tx = self.core.tx
        ops = []
        for ep in endpoints:
            ops.append(tx.delete(enc(self.key(ep))))
            if self.skydns_base:
                ops.append(tx.delete(enc(self.skydns_key(ep))))
        for chunk in chunks(ops):
            await self.core.txn([], list(chunk))

    # ------------------------------------------------------------------ reading

    def _decode(self, key: str, value: bytes, revision: int) -> Endpoint | None:
        try:
            return decode_endpoint(key, value, self.base)
        except ValueError as exc:
            if (key, revision) not in self._complained:
                self._complained.add((key, revision))
                log.warning("etcd key %s: %s; skipped", key, exc)
            return None

    async def read(self, service: str | None = None) -> tuple[dict[str, Endpoint], int]:
        """Every endpoint (of one service, or of all) by key, and the revision it was read at."""
        tx = self.core.tx
        prefix = enc(self.service_prefix(service))
        _, (kvs,), revision = await self.core.txn_at([], [tx.get(prefix, prefix_end(prefix))])
        endpoints = {}
        for kv in kvs:
            key = kv.key.decode(errors="replace")
            ep = self._decode(key, kv.value, kv.mod_revision)
            if ep is not None:
                endpoints[key] = ep
        return endpoints, revision

    async def endpoints(self, service: str | None = None) -> list[Endpoint]:
        found, _ = await self.read(service)
        return sorted(found.values(), key=lambda e: (e.service, e.unit, e.machine_id))

    async def changes(self, service: str | None = None) -> AsyncIterator[dict[str, Endpoint]]:
        """The endpoints (by key) now, then again after every change, until cancelled (one dict,
        updated in place: copy it to keep a version).

        Fed by one watch from the read's revision; a compacted watch reads afresh. Raises
        RegistryUnavailable when etcd is lost (the caller decides to retry)."""
        current, revision = await self.read(service)
        yield current
        prefix = self.service_prefix(service)
        while True:
            try:
                async for event in self.core.watch([prefix], revision + 1):
                    revision = event.revision
                    if event.value is None:
                        if current.pop(event.key, None) is None:
                            continue
                    else:
                        ep = self._decode(event.key, event.value, event.revision)
                        if ep is None:
                            if current.pop(event.key, None) is None:
                                continue
                        elif current.get(event.key) == ep:
                            continue
                        else:
                            current[event.key] = ep
                    yield current
            except WatchCompacted:
                current, revision = await self.read(service)
                yield current
                continue
            raise RegistryError("service watch ended")
