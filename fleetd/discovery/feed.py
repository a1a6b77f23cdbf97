"""The in-memory, watch-fed view of every service endpoint (for DNS, the API and the renderer).

`ViewFeed.run()` reads the records once and follows them with one etcd watch, rebuilding the
pure `ServiceView` on each change. When etcd is unreachable the last view stays in place (it is
served stale, `stale` is set) and the feed reconnects with a backoff; a query never waits for
etcd.
"""

from __future__ import annotations

import asyncio
import logging

from fleetd.discovery.view import ServiceView
from fleetd.errors import RegistryError
from fleetd.registry.services import ServiceRecords

log = logging.getLogger(__name__)


class ViewFeed:
    def __init__(self, records: ServiceRecords, domain: str = "fleet.local"):
        self.records = records
        self.domain = domain
        self.view = ServiceView.build((), domain)
        self.stale = True  # until the first read
        self.ready = asyncio.Event()
        self._dirty = asyncio.Event()
        self._current: dict = {}
        self.version = 0  # +1 per new view

    def _set(self, view: ServiceView) -> None:
        self.view = view
        self.version += 1

    async def run(self) -> None:
        """Follow the records; the view is rebuilt by a second task once the events already
        received are all applied (a burst of a thousand writes rebuilds a few times, not a
        thousand), and at once for a single change."""
        builder = asyncio.create_task(self._rebuild())
        try:
            await self._follow()
        finally:
            builder.cancel()
            await asyncio.gather(builder, return_exceptions=True)

    async def _follow(self) -> None:
        delay = 0.5
        while True:
            try:
                async for current in self.records.changes():
                    if self.stale:
                        log.info("service view: following %d endpoints", len(current))
                    self.stale = False
                    delay = 0.5
                    self._current = current
                    self._dirty.set()
            except RegistryError as exc:
                if not self.stale:
                    log.warning("service view: %s; serving the last view (stale) until etcd is back", exc)
                self.stale = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _rebuild(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._set(ServiceView.build(list(self._current.values()), self.domain))
            self.ready.set()
