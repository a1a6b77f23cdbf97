"""The web dashboard at `/` of fleetd's HTTP API listeners (server-rendered, live by SSE).

Pages (jinja2 templates in templates/dashboard/):

    GET /                              machines and units (failed units first)
    GET /dashboard/placement           machines x units
    GET /dashboard/units/<name>        a unit: its state, file, rendered unit (containers),
                                       `systemctl status` and journal through the API's relay
    GET /dashboard/services            services and endpoints, from a pluggable provider
    GET /dashboard/events?view=V&since=R   Server-Sent Events: page updates as HTML fragments
    GET /dashboard/static/<file>       the page's one script and style sheet
    POST /dashboard/actions/unit/<name>/{start,stop,destroy}
    POST /dashboard/actions/machine/<id>/{drain,undrain}

Live updates: one `ClusterFeed` per fleetd keeps a copy of the cluster current with one registry
watch (fleetd/registry/cluster_watch.py) and wakes the browsers' event streams with what changed;
each stream renders only the fragments its page shows. Nothing polls the cluster.

Actions need the operator role (fleetd/api/roles.py): read-only clients get pages without
buttons and 403 from the action routes. Action requests must carry `X-Fleet-Dashboard: 1` (the
page's script sets it; a cross-site form cannot), and every action asks for confirmation first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web

from fleetd.api import roles
from fleetd.api.context import HttpError, ctx_of
from fleetd.errors import FleetError
from fleetd.jobstate import ACTIVE_STATES, current_state_of
from fleetd.model import DesiredState, Machine
from fleetd.registry.cluster_watch import Change, ClusterView, follow_cluster, read_cluster
from fleetd.unit.name import parse_unit_name

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "dashboard"
STATIC_FILES = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
ACTION_HEADER = "X-Fleet-Dashboard"
KEEPALIVE = 15.0
ROWS_LIMIT = 200  # more changed rows than this in one batch: the whole table is sent instead
GONE_KEEP = 3600.0  # a machine that left stays listed as gone this long (seconds)
IDLE_STOP = 60.0  # the cluster watch stops this long after the last event stream closed
FEED_KEY = "dashboard_feed"
SERVICES_KEY = "dashboard_services"


# ---------------------------------------------------------------------------- functional core


@dataclass(frozen=True)
class UnitRow:
    name: str
    desired: str
    current: str
    machine_id: str
    machine_ip: str
    hash: str
    active: str  # systemd ActiveState on the target machine ("" unknown)
    sub: str
    failed: bool
    is_global: bool
    placements: dict[str, str] = field(default_factory=dict)  # machine -> ActiveState, for the matrix

    @property
    def sort_key(self) -> str:
        return f"{0 if self.failed else 1}{self.name}"


@dataclass(frozen=True)
class MachineRow:
    id: str
    ip: str
    metadata: dict[str, str]
    cpus: float
    memory: int
    reserved_cpus: float
    reserved_memory: int
    units: int
    active: int
    draining: bool
    leader: bool
    gone: bool

    @property
    def sort_key(self) -> str:
        return f"{1 if self.gone else 0}{self.ip}{self.id}"


def unit_row(view: ClusterView, name: str) -> UnitRow | None:
    unit = view.units.get(name)
    if unit is None:
        return None
    states = view.states.get(name, {})
    current, machine_id = current_state_of(unit, view.placements.get(name), list(states.values()))
    reported = states.get(machine_id)
    machine = view.machines.get(machine_id)
    return UnitRow(
        name=name,
        desired=unit.desired_state.value,
        current=current or ("global" if unit.is_global else ""),
        machine_id=machine_id,
        machine_ip=machine.public_ip if machine else "",
        hash=unit.hash,
        active=reported.active_state if reported else "",
        sub=reported.sub_state if reported else "",
        failed=any(s.active_state == "failed" for s in states.values()),
        is_global=unit.is_global,
        placements={mid: s.active_state for mid, s in states.items()},
    )


def unit_rows(view: ClusterView) -> list[UnitRow]:
    rows = [r for r in (unit_row(view, n) for n in view.units) if r is not None]
    return sorted(rows, key=lambda r: r.sort_key)


def machine_rows(view: ClusterView, gone: dict[str, Machine], *, usage: bool = True) -> list[MachineRow]:
    """Live machines, then gone ones; usage=False skips the reservations and unit counts."""
    reserved: dict[str, tuple[float, int]] = {}
    counts: dict[str, list[int]] = {}
    for name, placement in (view.placements.items() if usage else ()):
        unit = view.units.get(name)
        if unit is None or placement.desired_state is DesiredState.INACTIVE:
            continue
        req = unit.requirements
        cpu, mem = reserved.get(placement.machine_id, (0.0, 0))
        reserved[placement.machine_id] = (cpu + req.cpu, mem + req.memory)
    for name, per in (view.states.items() if usage else ()):
        for machine_id, state in per.items():
            entry = counts.setdefault(machine_id, [0, 0])
            entry[0] += 1
            entry[1] += state.active_state in ACTIVE_STATES
    rows = []
    for machine, is_gone in [(m, False) for m in view.machines.values()] + [(m, True) for m in gone.values()]:
        cpu, mem = reserved.get(machine.id, (0.0, 0)) if not is_gone else (0.0, 0)
        n, active = counts.get(machine.id, [0, 0]) if not is_gone else [0, 0]
        rows.append(MachineRow(
            id=machine.id, ip=machine.public_ip, metadata=dict(machine.metadata),
            cpus=machine.capacity.cpu, memory=machine.capacity.memory,
            reserved_cpus=cpu, reserved_memory=mem, units=n, active=active,
            draining=machine.draining, leader=machine.id == view.leader and not is_gone, gone=is_gone,
        ))
    return sorted(rows, key=lambda r: r.sort_key)


def counts_of(view: ClusterView, gone: dict[str, Machine]) -> dict[str, int]:
    rows = [unit_row(view, n) for n in view.units]
    return {
        "machines": len(view.machines),
        "gone": len(gone),
        "units": len(view.units),
        "active": sum(1 for r in rows if r and r.current == "launched"),
        "failed": sum(1 for r in rows if r and r.failed),
    }


def human_bytes(value: int) -> str:
    if not value:
        return "0"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


# ---------------------------------------------------------------------------- services provider


ServicesProvider = Callable[[web.Request], Awaitable[list[dict[str, Any]]]]


async def no_services(request: web.Request) -> list[dict[str, Any]]:
    """The default provider: no discovery source, so no services.

    A provider returns [{"name", "endpoints": [{"address", "port", "machine", "unit", "healthy"}]}]."""
    return []


def services_of_endpoints(endpoints: Iterable[Any]) -> list[dict[str, Any]]:
    """The services page's rows from service discovery's endpoints (fleetd.model.Endpoint)."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for ep in sorted(endpoints, key=lambda e: (e.service, e.unit, e.machine_id)):
        by_service.setdefault(ep.service, []).append(
            {"address": ep.host, "port": ep.port, "machine": ep.machine_id, "unit": ep.unit, "healthy": ep.healthy})
    return [{"name": name, "endpoints": eps} for name, eps in sorted(by_service.items())]


def endpoints_provider(endpoints: Callable[[], Awaitable[Iterable[Any]]]) -> ServicesProvider:
    """A services provider over a source of endpoints (service discovery's records or view)."""

    async def provider(request: web.Request) -> list[dict[str, Any]]:
        return services_of_endpoints(await endpoints())

    return provider


def set_services_provider(target: Any, provider: ServicesProvider | None) -> None:
    """Use `provider` for the services page. `target`: the API's ApiContext (e.g.
    `ApiServer.context`, before or after start) or its aiohttp application."""
    ctx = ctx_of_app(target) if isinstance(target, web.Application) else target
    ctx.extras[SERVICES_KEY] = provider or no_services


def ctx_of_app(app: web.Application):
    from fleetd.api.context import CONTEXT

    return app[CONTEXT]


# ---------------------------------------------------------------------------- the feed


class Subscriber:
    """One event stream: the changes it has not rendered yet, merged."""

    def __init__(self) -> None:
        self.units: set[str] = set()
        self.machines: set[str] = set()
        self.leader = False
        self.reset = False
        self.wake = asyncio.Event()

    def add(self, change: Change) -> None:
        self.units |= change.units
        self.machines |= change.machines
        self.leader |= change.leader
        self.reset |= change.reset
        self.wake.set()

    def take(self) -> Change:
        change = Change(frozenset(self.units), frozenset(self.machines), self.leader, self.reset)
        self.units, self.machines, self.leader, self.reset = set(), set(), False, False
        self.wake.clear()
        return change


class ClusterFeed:
    """The cluster as this fleetd sees it, kept current by one watch; shared by every page.

    Started by the first page or event stream, stopped IDLE_STOP seconds after the last event
    stream closed: a fleetd nobody looks at holds no watch on the whole cluster."""

    def __init__(self, registry: Any, idle_stop: float | None = None):
        self.registry = registry
        self.idle_stop = IDLE_STOP if idle_stop is None else idle_stop
        self.view: ClusterView | None = None
        self.gone: dict[str, Machine] = {}
        self._gone_since: dict[str, float] = {}
        self._known: dict[str, Machine] = {}
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task | None = None
        self._idle: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.closed = False
        self.starts = 0  # how many times the cluster was read to (re)start the watch
        # the revision of the last change handed to the streams: a page rendered now is at least
        # this new, and a stream that starts from an older one gets everything again
        self.revision = 0

    @property
    def running(self) -> bool:
        return self.view is not None and self._task is not None and not self._task.done()

    async def ready(self) -> ClusterView:
        if not self.running:
            async with self._lock:
                if not self.running:
                    view = await read_cluster(self.registry)
                    self.view = view
                    self.revision = view.revision
                    self.starts += 1
                    self._track_machines(set(view.machines) | set(self._known))
                    self._task = asyncio.create_task(follow_cluster(self.registry, view, self._changed))
        self._arm_idle_stop()
        assert self.view is not None
        return self.view

    def subscribe(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        self._arm_idle_stop()

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._arm_idle_stop()

    def _arm_idle_stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.subscribers and self.running and not self.closed:
            self._idle = asyncio.create_task(self._stop_when_idle())

    async def _stop_when_idle(self) -> None:
        await asyncio.sleep(self.idle_stop)
        if not self.subscribers and self._task is not None:
            log.debug("dashboard: no event streams for %gs; stopping the cluster watch", self.idle_stop)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self.view = None

    def _track_machines(self, ids: Iterable[str]) -> None:
        assert self.view is not None
        now = time.monotonic()
        for machine_id in ids:
            machine = self.view.machines.get(machine_id)
            if machine is not None:
                self._known[machine_id] = machine
                self.gone.pop(machine_id, None)
                self._gone_since.pop(machine_id, None)
            elif machine_id in self._known:
                self.gone[machine_id] = self._known.pop(machine_id)
                self._gone_since[machine_id] = now
        for machine_id, since in list(self._gone_since.items()):
            if now - since > GONE_KEEP:
                self.gone.pop(machine_id, None)
                del self._gone_since[machine_id]

    def _changed(self, view: ClusterView, change: Change) -> None:
        self.revision = view.revision
        self._track_machines(set(view.machines) | set(self._known) if change.reset else change.machines)
        for sub in self.subscribers:
            sub.add(change)

    async def close(self) -> None:
        self.closed = True
        for task in (self._idle, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._idle = None
        for sub in self.subscribers:
            sub.reset = True
            sub.wake.set()


def feed_of(request: web.Request) -> ClusterFeed:
    ctx = ctx_of(request)
    feed = ctx.extras.get(FEED_KEY)
    if feed is None:
        feed = ctx.extras[FEED_KEY] = ClusterFeed(ctx.registry)
    return feed


# ---------------------------------------------------------------------------- rendering


def _environment():
    import jinja2  # imported on the first page, not when fleetd starts

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bytes"] = human_bytes
    env.filters["short"] = lambda text: (text or "")[:8]
    return env


_ENV = None


def env():
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    return _ENV


def macros():
    return env().get_template("_macros.j2").module


def page(name: str, request: web.Request, **context: Any) -> web.Response:
    role = roles.request_role(request)
    text = env().get_template(name).render(role=role, operator=role == roles.OPERATOR, **context)
    return web.Response(text=text, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


def _fragments(kind: str, feed: ClusterFeed, change: Change, operator: bool, unit: str = "") -> list[list[dict]]:
    """The operations that bring a page of `kind` from before `change` to now, in batches: the
    changed rows first (cheap), then what summarizes the whole cluster (counts, machines), so
    that a row never waits for a summary."""
    view = feed.view
    assert view is not None
    m = macros()
    rows: list[dict] = []
    summary: list[dict] = []
    whole = change.reset or len(change.units) > ROWS_LIMIT
    machines_changed = change.reset or change.machines or change.leader
    if kind == "overview":
        if whole:
            rows.append({"op": "html", "id": "units", "html": str(m.units_table(unit_rows(view), operator))})
        else:
            for name in sorted(change.units):
                row = unit_row(view, name)
                rows.append({"op": "row", "table": "unit-rows", "id": f"u-{name}",
                             "key": row.sort_key if row else "",
                             "html": str(m.unit_row(row, operator)) if row else None})
        summary.append({"op": "html", "id": "counts", "html": str(m.counts(counts_of(view, feed.gone)))})
        if machines_changed or change.units:  # units change a machine's reservations and counts
            summary.append({"op": "html", "id": "machines",
                            "html": str(m.machines_table(machine_rows(view, feed.gone), operator))})
    elif kind == "placement":
        if whole or machines_changed:
            rows.append({"op": "html", "id": "placement",
                         "html": str(m.placement_table(machine_rows(view, feed.gone), unit_rows(view)))})
        else:
            columns = machine_rows(view, feed.gone, usage=False)
            for name in sorted(change.units):
                row = unit_row(view, name)
                rows.append({"op": "row", "table": "placement-rows", "id": f"p-{name}",
                             "key": row.sort_key if row else "",
                             "html": str(m.placement_row(row, columns)) if row else None})
    elif kind == "unit":
        if change.reset or unit in change.units or change.machines:
            row = unit_row(view, unit)
            rows.append({"op": "html", "id": "unit-summary", "html": str(m.unit_summary(row, unit, operator))})
            if unit in change.units or change.reset:
                rows.append({"op": "refresh", "id": "unit-status"})
    return [batch for batch in (rows, summary) if batch]


# ---------------------------------------------------------------------------- pages


def _read_only_methods(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, "")


async def overview(request: web.Request) -> web.Response:
    _read_only_methods(request)
    feed = feed_of(request)
    view = await feed.ready()
    return page("overview.html", request, kind="overview", revision=feed.revision,
                counts=counts_of(view, feed.gone), machines=machine_rows(view, feed.gone),
                units=unit_rows(view), title="fleet", unit_name="", active_tab="overview")


async def placement(request: web.Request) -> web.Response:
    _read_only_methods(request)
    feed = feed_of(request)
    view = await feed.ready()
    return page("placement.html", request, kind="placement", revision=feed.revision,
                machines=machine_rows(view, feed.gone), units=unit_rows(view),
                title="fleet: placement", unit_name="", active_tab="placement")


async def unit_page(request: web.Request) -> web.Response:
    _read_only_methods(request)
    name = request.match_info["name"]
    feed = feed_of(request)
    view = await feed.ready()
    unit = view.units.get(name)
    if unit is None:
        unit = await ctx_of(request).registry.get_unit(name)  # created a moment ago?
        if unit is None:
            raise HttpError(404, f"unit {name} does not exist")
    from fleetd.unit.container import is_container_unit

    rendered = None
    if is_container_unit(unit.file):
        rendered = await rendered_text(ctx_of(request).registry, name, unit, unit_row(view, name))
    return page("unit.html", request, kind="unit", revision=feed.revision, unit_name=name,
                row=unit_row(view, name), file_text=unit.file.serialize(), rendered=rendered,
                title=f"fleet: {name}", active_tab="units")


async def services(request: web.Request) -> web.Response:
    _read_only_methods(request)
    provider: ServicesProvider = ctx_of(request).extras.get(SERVICES_KEY) or no_services
    found = await provider(request)
    return page("services.html", request, kind="services", revision=0, services=found,
                title="fleet: services", unit_name="", active_tab="services")


async def static(request: web.Request) -> web.Response:
    _read_only_methods(request)
    name = request.match_info["file"]
    if name not in STATIC_FILES:
        raise HttpError(404, f"no such resource: {request.path}")
    return web.Response(body=(TEMPLATES / "static" / name).read_bytes(), content_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})


async def rendered_text(registry: Any, name: str, unit: Any, row: UnitRow | None) -> str:
    """What the unit's machine writes for a container unit (the same pure function as the agent's,
    from the machine's published facts and images); an explanation when it cannot be known."""
    from fleetd.container.render import CannotRun, ImageInfo, NodeFacts, render_or_explain
    from fleetd.unit.container import container_spec
    from fleetd.images.store import ImageStore
    from fleetd.registry.images import ImageDirectory

    target = row.machine_id if row else ""
    if not target:
        return "# not scheduled to a machine yet: the rendering depends on the machine\n"
    directory = ImageDirectory(registry)
    try:
        record = await directory.get(target)
        if record is None:
            return f"# machine {target[:8]} publishes no image record (is its fleetd running?)\n"
        facts = NodeFacts.from_json(record.facts)
        try:
            spec = container_spec(unit.file, name)
        except FleetError:
            return render_or_explain(name, unit.file, facts, None)
        found = record.find(spec.image)
        rootfs = found[0].rootfs if found else ""
        if not found:
            found = [i for r in await directory.list() for i in r.find(spec.image)]
            if not found:
                return render_or_explain(name, unit.file, facts, CannotRun(
                    f'image "{spec.image}" not found on machine {target[:8]} nor on any other machine'))
            rootfs = str(ImageStore(facts.images_dir).rootfs_path(found[0].digest))
        img = found[0]
        cfg = img.config or {}
        image = ImageInfo(ref=spec.image, digest=img.digest, rootfs=rootfs, env=tuple(cfg.get("env") or ()),
                          entrypoint=tuple(cfg.get("entrypoint") or ()), cmd=tuple(cfg.get("cmd") or ()),
                          workdir=str(cfg.get("workdir") or ""), user=str(cfg.get("user") or ""))
        return render_or_explain(name, unit.file, facts, image)
    except FleetError as exc:
        return f"# cannot render: {exc}\n"


# ---------------------------------------------------------------------------- live updates


def _sse(data: Any, event: str = "message") -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    _read_only_methods(request)
    kind = request.query.get("view", "overview")
    if kind not in ("overview", "placement", "unit", "services"):
        raise HttpError(400, f"view={kind!r}: expected overview, placement, unit or services")
    unit = request.query.get("unit", "")
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise HttpError(400, "since: expected a revision number") from None
    feed = feed_of(request)
    await feed.ready()
    operator = roles.request_role(request) == roles.OPERATOR
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    sub = Subscriber()
    feed.subscribe(sub)
    if since != feed.revision:  # something changed between the page and this stream
        sub.add(Change(reset=True))
    try:
        await response.write(_sse({"revision": feed.revision}, "hello"))
        while True:
            try:  # asyncio.timeout: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(KEEPALIVE):
                    await sub.wake.wait()
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            change = sub.take()
            if feed.closed or feed.view is None:
                break
            for ops in _fragments(kind, feed, change, operator, unit):
                await response.write(_sse({"revision": feed.revision, "ops": ops}))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    finally:
        feed.unsubscribe(sub)
    return response


# ---------------------------------------------------------------------------- actions


def _check_action(request: web.Request) -> None:
    if request.method != "POST":
        raise HttpError(405, "only POST supported against this resource")
    roles.require_operator(request)
    if request.headers.get(ACTION_HEADER) != "1":
        raise HttpError(403, f"forbidden: dashboard actions must carry the header {ACTION_HEADER}: 1")


async def unit_action(request: web.Request) -> web.Response:
    _check_action(request)
    name, action = request.match_info["name"], request.match_info["action"]
    reg = ctx_of(request).registry
    if action in ("start", "stop"):
        state = DesiredState.LAUNCHED if action == "start" else DesiredState.LOADED
        if state is DesiredState.LAUNCHED and parse_unit_name(name).is_template:
            raise HttpError(400, f"cannot activate template {name!r}")
        await reg.set_desired_state([name], state)  # UnitNotFound -> 404
    elif action == "destroy":
        if not await reg.destroy_units([name]):
            raise HttpError(404, "unit does not exist")
    else:
        raise HttpError(404, f"no such action: {action} (expected start, stop or destroy)")
    return web.json_response({"unit": name, "action": action})


async def machine_action(request: web.Request) -> web.Response:
    _check_action(request)
    machine_id, action = request.match_info["id"], request.match_info["action"]
    if action not in ("drain", "undrain"):
        raise HttpError(404, f"no such action: {action} (expected drain or undrain)")
    reg = ctx_of(request).registry
    if await reg.get_machine(machine_id) is None:
        raise HttpError(404, f"machine {machine_id} is not registered")
    await reg.set_draining(machine_id, action == "drain")
    return web.json_response({"machine": machine_id, "action": action})


# ---------------------------------------------------------------------------- wiring


async def _shutdown(app: web.Application) -> None:
    feed = ctx_of_app(app).extras.get(FEED_KEY)
    if feed is not None:
        await feed.close()


def setup(app: web.Application) -> None:
    """Register the dashboard's routes on the API's application (`/` and `/dashboard/...`)."""
    router = app.router
    router.add_route("*", "/", overview)
    router.add_route("*", "/dashboard", overview)
    router.add_route("*", "/dashboard/placement", placement)
    router.add_route("*", "/dashboard/services", services)
    router.add_route("*", "/dashboard/units/{name}", unit_page)
    router.add_route("*", "/dashboard/events", events)
    router.add_route("*", "/dashboard/static/{file}", static)
    router.add_route("*", "/dashboard/actions/unit/{name}/{action}", unit_action)
    router.add_route("*", "/dashboard/actions/machine/{id}/{action}", machine_action)
    app.on_shutdown.append(_shutdown)
