"""Service discovery read routes of the API (docs/api.md), registered by `register(router, prefix)`:

* ``GET /fleet/v1/services``: ``{"services": [{"name", "healthy", "total"}]}``
* ``GET /fleet/v1/endpoints`` and ``GET /fleet/v1/services/<name>/endpoints``:
  ``{"endpoints": [{"service","unit","machineID","host","port","protocol","tags","health",...}]}``
* ``...?watch=true`` on either endpoints route: a stream (``application/x-ndjson``), one
  ``{"endpoints": [...]}`` line now and one after every change, fed by an etcd watch.
"""

from __future__ import annotations

import json

from aiohttp import web

from fleetd.api.context import HttpError, ctx_of
from fleetd.api.resources import json_response
from fleetd.discovery.view import ServiceView
from fleetd.registry.services import ServiceRecords
from fleetd.unit.service import is_label


def _records(request: web.Request) -> ServiceRecords:
    ctx = ctx_of(request)
    records = ctx.extras.get("service_records")
    if records is None:
        cfg = ctx.config
        records = ctx.extras["service_records"] = ServiceRecords(
            ctx.registry, domain=cfg.dns_domain, skydns_prefix=cfg.skydns_prefix, ttl=cfg.dns_ttl)
    return records


def _endpoint_list(endpoints) -> list[dict]:
    view = ServiceView.build(endpoints)
    return [ep.to_json() for ep in view.endpoints]


async def services(request: web.Request) -> web.Response:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    view = ServiceView.build(await _records(request).endpoints())
    return json_response({"services": [{"name": s.service, "healthy": s.healthy, "total": s.total}
                                       for s in view.services()]})


async def endpoints(request: web.Request) -> web.StreamResponse:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    service = request.match_info.get("service")
    if service is not None and not is_label(service):
        raise HttpError(400, f"invalid service name {service!r}")
    records = _records(request)
    if request.query.get("watch", "").lower() not in ("1", "true", "yes"):
        return json_response({"endpoints": _endpoint_list(await records.endpoints(service))})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    changes = records.changes(service)
    first = await changes.__anext__()  # etcd unreachable: an error answer, not an empty stream
    await response.prepare(request)
    try:
        current = first
        while True:
            line = json.dumps({"endpoints": _endpoint_list(current.values())}) + "\n"
            await response.write(line.encode())
            current = await changes.__anext__()
    finally:
        await changes.aclose()


def register(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_route("*", f"{prefix}/services", services)
    router.add_route("*", f"{prefix}/services/{{service}}/endpoints", endpoints)
    router.add_route("*", f"{prefix}/endpoints", endpoints)
