"""GET /fleet/v1/_watch/units: a change feed of units for blocking waits (beyond fleet's API).

    GET /fleet/v1/_watch/units                       -> {"revision": R}   (now; immediately)
    GET /fleet/v1/_watch/units?since=R&timeout=S[&unitName=N...]
        -> {"revision": R2, "changed": true}   the first change after R (of the named units, or
                                               of any unit without unitName): R2 > R
        -> {"revision": R,  "changed": false}  none within S seconds (at most MAX_HOLD)

With `units=true` and unitName, the answer also carries `"units"`: the named units that exist, as
GET /units?unitName=... shows them, read after that revision (so a client checks them at once
instead of reading them in a second request; a change after the revision still answers the
next long poll at once). A long poll's units come from the shared watch's changes folded onto the
last read of them (fleetd/api/feed_records.py), read from etcd only where that cannot tell.

A change is any write to a unit's job record (desired state, body), its placement in the
schedule or a state published by an agent. The server holds the request on an etcd watch of
those ranges from revision R+1 (no polling), so a client that checks, then long-polls with the
revision it read before the check, misses nothing: `fleetctl start` returns within a round trip
of the agent's report. If R was compacted away the answer is the current revision, changed.
"""

from __future__ import annotations

import asyncio
import os.path

from aiohttp import web

from fleetd.api.context import HttpError, ctx_of
from fleetd.api.resources import json_response
from fleetd.registry import WatchCompacted
from fleetd.unit.name import is_valid_unit_name
from fleetd.wire import unit_info, unit_to_wire

MAX_HOLD = 60.0
DEFAULT_HOLD = 30.0


def unit_of_key(key: str, jobs: str, schedule: str, states: str) -> str:
    """The unit a key of job/<name>, schedule/<machine>/<name> or states/<name>/<machine> is about."""
    if key.startswith(jobs):
        return key[len(jobs):].split("/", 1)[0]
    if key.startswith(schedule):
        return key[len(schedule):].split("/")[-1]
    if key.startswith(states):
        return key[len(states):].split("/", 1)[0]
    return ""


def _number(text: str | None, what: str, kind=int):
    if text is None or text == "":
        return None
    try:
        value = kind(text)
    except ValueError:
        raise HttpError(400, f"invalid {what} {text!r}") from None
    if value < 0:
        raise HttpError(400, f"invalid {what} {text!r}: must not be negative")
    return value


async def watch_units(request: web.Request) -> web.Response:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    reg = ctx_of(request).registry
    since = _number(request.query.get("since"), "since")
    hold = _number(request.query.get("timeout"), "timeout", float)
    hold = DEFAULT_HOLD if hold is None else min(hold, MAX_HOLD)
    asked = request.query.getall("unitName", [])
    names = set(asked)
    with_units = bool(names) and request.query.get("units", "") in ("true", "1")
    wake = request.query.get("wake", "")
    if wake not in ("", "any", "states"):
        raise HttpError(400, f"invalid wake {wake!r}: any or states")
    on_reports = wake == "states"
    hub = feed_hub(request)
    await hub.ensure()  # before the revision is read: a poll with it is answered by the hub
    if since is None:
        answer = {"revision": await reg.current_revision()}
        if with_units:  # read after the revision: a change after it is never missed
            answer["units"] = await read_units(request, hub, asked)
        return json_response(answer)
    keys = reg.keys
    ranges = (keys.jobs, keys.schedule, keys.states)

    async def first_change() -> int:
        found = await hub.first_change(since, names, states=on_reports)  # fleetd/api/feed.py
        if found is not None:
            return found
        # one watch of the ranges' common prefix, not one per range: events of separate watch
        # streams arrive in no common order, and the answer must be the FIRST change after since
        events = reg.watch([os.path.commonprefix(ranges)], since + 1)
        try:
            async for event in events:
                if not event.key.startswith(ranges):
                    continue
                if not names or unit_of_key(event.key, *ranges) in names:
                    return event.revision
        finally:
            await events.aclose()
        raise AssertionError("a registry watch does not end")

    try:
        revision, changed = await asyncio.wait_for(first_change(), hold), True
    except asyncio.TimeoutError:
        revision, changed = since, False
    except WatchCompacted:
        revision, changed = await reg.current_revision(), True
    answer = {"revision": revision, "changed": changed}
    if with_units and changed:
        units = hub_units(hub, asked, revision)
        answer["units"] = units if units is not None else await read_units(request, hub, asked)
    return json_response(answer)


def _named(asked: list[str]) -> list[str]:
    return [n for n in dict.fromkeys(asked) if is_valid_unit_name(n)]


def _wire(names: list[str], records: dict) -> list[dict]:
    """As GET /units/<name> shows them, in the order asked (fleetd/api/resources.py units_named)."""
    return [unit_to_wire(unit_info(r.unit, r.placement, r.states)) for n in names if (r := records.get(n))]


async def read_units(request: web.Request, hub, asked: list[str]) -> list[dict]:
    """The named units read from the registry in one go (GET /units?unitName=...), kept by the
    hub as seeds of later answers (fleetd/api/feed_records.py): the revision that bounds the
    read is asked for after the answer went out, not before."""
    from fleetd.api.feed_records import Seed

    names = _named(asked)
    reg = ctx_of(request).registry
    low, started = hub.position, hub.start
    records = await reg.unit_records(names) if names else {}
    if low is not None and names:

        async def seal() -> None:
            try:
                high = await reg.current_revision()
            except Exception:  # noqa: BLE001 - no seeds then: the next answer reads
                return
            if hub.start is not None and hub.start == started:
                for name in names:
                    hub.seeds[name] = Seed(records.get(name), low, high)
                trim_seeds(hub)

        task = asyncio.get_running_loop().create_task(seal())
        hub_tasks = ctx_of(request).extras.setdefault("feed_seal_tasks", set())
        hub_tasks.add(task)
        task.add_done_callback(hub_tasks.discard)
    return _wire(names, records)


SEEDS_MAX = 10_000  # units whose last read the hub keeps


def trim_seeds(hub) -> None:
    while len(hub.seeds) > SEEDS_MAX:
        del hub.seeds[next(iter(hub.seeds))]


def hub_units(hub, asked: list[str], revision: int) -> list[dict] | None:
    """The named units at the hub's position (>= revision) from their seeds and the changes the
    hub's watch logged since (fleetd/api/feed_records.py), without a read; None when the hub
    cannot tell (the caller reads). No await in here: the position is a whole revision."""
    from fleetd.api.feed_records import UNKNOWN, Seed, fold

    names = _named(asked)
    position = hub.position
    if not names or position is None or position < revision:
        return None
    seeds = [hub.seeds.get(n) for n in names]
    if any(s is None or s.high > position for s in seeds):
        return None
    changes = hub.changes_after(min(s.low for s in seeds), set(names))
    if changes is None:
        return None
    per_unit: dict[str, list] = {n: [] for n in names}
    for changed_at, unit, key, value in changes:
        per_unit[unit].append((changed_at, key, value))
    kinds = key_kinds(hub)
    records = {}
    for name, seed in zip(names, seeds):
        record = fold(seed, ((k, v) for at, k, v in per_unit[name] if at > seed.low), kinds)
        if record is UNKNOWN:
            return None
        records[name] = record
    for name, record in records.items():
        hub.seeds[name] = Seed(record, position, position)
    return _wire(names, {n: r for n, r in records.items() if r is not None})


def key_kinds(hub):
    from fleetd.api.feed_records import KeyKinds

    keys = hub.registry_keys
    return KeyKinds(keys.jobs, keys.schedule, keys.states)


def feed_hub(request: web.Request):
    from fleetd.api.feed import FeedHub

    ctx = ctx_of(request)
    hub = ctx.extras.get("feed_hub")
    if hub is None:
        keys = ctx.registry.keys
        ranges = (keys.jobs, keys.schedule, keys.states)
        hub = ctx.extras["feed_hub"] = FeedHub(
            ctx.registry, os.path.commonprefix(ranges),
            lambda key: (unit_of_key(key, *ranges), key.startswith(keys.states)) if key.startswith(ranges) else None)
    return hub


async def close_feed_hub(app: web.Application) -> None:
    """The server stops: end the hub's watch (aiohttp's on_cleanup)."""
    from fleetd.api.context import CONTEXT

    hub = app[CONTEXT].extras.pop("feed_hub", None)
    if hub is not None:
        await hub.close()


def is_long_poll(request: web.Request) -> bool:
    """A request held on purpose (left out of the request-duration metric)."""
    return request.match_info.handler is watch_units and "since" in request.query
