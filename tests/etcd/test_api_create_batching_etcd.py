"""Concurrent unit creations through the API share etcd transactions (fleetd/api/batching.py):
each request still gets a lone create's answer, on a real fleetd API and real etcd."""

from __future__ import annotations

import asyncio

import pytest

from fleetd.model import DesiredState, Machine

from _api_server import HELLO_OPTIONS, ApiHarness

MID = "0123456789abcdef0123456789abcdef"
CREATE_ONLY = {"If-None-Match": "*"}


@pytest.fixture
async def api(etcd_settings, tmp_path):
    async with ApiHarness(etcd_settings, tmp_path, Machine(MID, "127.0.0.1")) as harness:
        yield harness


def body(state: str = "launched", options=HELLO_OPTIONS) -> dict:
    return {"desiredState": state, "options": options}


async def test_concurrent_creates_answer_each_request_as_alone(api):
    names = [f"b{i:02d}.service" for i in range(30)]
    answers = await asyncio.gather(*(api.call("PUT", f"/fleet/v1/units/{n}", body=body(), headers=CREATE_ONLY)
                                     for n in names))
    assert [a[0] for a in answers] == [201] * 30
    units = {u.name: u for u in await api.registry.list_units()}
    assert all(units[n].desired_state is DesiredState.LAUNCHED for n in names)
    # again, with one new among them: 412 for the existing ones, 201 for the new one
    again = await asyncio.gather(*(api.call("PUT", f"/fleet/v1/units/{n}", body=body("loaded"), headers=CREATE_ONLY)
                                   for n in names + ["new.service"]))
    assert [a[0] for a in again] == [412] * 30 + [201]
    assert again[0][2] == {"error": {"code": 412, "message": "unit b00.service already exists"}}
    units = {u.name: u for u in await api.registry.list_units()}
    assert units["b00.service"].desired_state is DesiredState.LAUNCHED  # untouched
    assert units["new.service"].desired_state is DesiredState.LOADED


async def test_the_same_unit_created_by_concurrent_requests_is_created_once(api):
    answers = await asyncio.gather(*(api.call("PUT", "/fleet/v1/units/same.service", body=body(), headers=CREATE_ONLY)
                                     for _ in range(5)))
    assert sorted(a[0] for a in answers) == [201, 412, 412, 412, 412]
    # without If-None-Match (fleet's own create): one 201, the others set the desired state (204)
    answers = await asyncio.gather(*(api.call("PUT", "/fleet/v1/units/other.service", body=body())
                                     for _ in range(3)))
    assert sorted(a[0] for a in answers)[0] == 201 and all(a[0] in (201, 204, 409) for a in answers)


async def test_an_invalid_create_only_request_gets_the_same_answers_as_before(api):
    # an existing unit: 412 comes first, even with options that would not validate
    assert (await api.call("PUT", "/fleet/v1/units/x.service", body=body(), headers=CREATE_ONLY))[0] == 201
    bad = [{"section": "Service", "name": "ExecStart", "value": ""}]
    assert (await api.call("PUT", "/fleet/v1/units/x.service", body=body(options=bad), headers=CREATE_ONLY))[0] == 412
    # a template cannot be launched: 400, and nothing is created
    status, _, payload = await api.call("PUT", "/fleet/v1/units/t@.service", body=body(), headers=CREATE_ONLY)
    assert status == 400 and "template" in payload["error"]["message"]
    assert "t@.service" not in {u.name for u in await api.registry.list_units()}


async def _job_revisions(api, since: int, count: int) -> list[int]:
    """The revisions of the next `count` writes of job keys after `since`."""
    reg = api.registry
    revisions: list[int] = []
    events = reg.watch([reg.keys.jobs], since + 1)
    try:
        async with asyncio.timeout(10):
            async for event in events:
                revisions.append(event.revision)
                if len(revisions) == count:
                    break
    finally:
        await events.aclose()
    return revisions


async def test_many_units_in_one_post_are_created_in_one_transaction(api):
    names = [f"p{i:02d}.service" for i in range(30)]
    before = await api.registry.current_revision()
    status, _, payload = await api.call("POST", "/fleet/v1/units",
                                        body={"units": [{"name": n, **body()} for n in names]})
    assert status == 200
    assert payload == {"results": [{"name": n, "status": 201} for n in names]}
    assert len(set(await _job_revisions(api, before, 30))) == 1
    units = {u.name: u for u in await api.registry.list_units()}
    assert all(units[n].desired_state is DesiredState.LAUNCHED for n in names)


async def _nothing_written_since(api, revision: int) -> None:
    """No key under this registry's prefix was written after `revision` (etcd's revisions are
    global: another test's lease expiring on the worker's etcd moves the revision, not this
    prefix). Writes already made are in etcd's history, so the watch hands them over at once."""
    reg = api.registry
    events = reg.watch([reg.keys.prefix], revision + 1)
    try:
        async with asyncio.timeout(0.5):
            async for event in events:
                raise AssertionError(f"written after revision {revision}: {event}")
    except TimeoutError:
        pass
    finally:
        await events.aclose()


async def test_a_post_answers_each_unit_as_its_create_only_put(api):
    assert (await api.call("PUT", "/fleet/v1/units/old.service", body=body("loaded"), headers=CREATE_ONLY))[0] == 201
    bad = [{"section": "Service", "name": "ExecStart", "value": "/bin/true\u0001"}]
    items = [{"name": "old.service", **body()}, {"name": "new.service", **body()}, {"name": "new.service", **body()},
             {"name": "t@.service", **body()}, {"name": "ghost.service", "desiredState": "launched"},
             {"name": "bad.service", **body(options=bad)}, {"desiredState": "launched"}]
    status, _, payload = await api.call("POST", "/fleet/v1/units", body={"units": items})
    assert status == 200
    results = payload["results"]
    assert [r["status"] for r in results] == [412, 201, 412, 400, 409, 400, 400]
    # each status and message as the same create-only PUT answers it (a fresh name for the new one)
    for item, result in zip(items, results):
        if "name" not in item or item["name"] == "new.service":
            continue
        name = item["name"]
        put = await api.call("PUT", f"/fleet/v1/units/{name}", body=item, headers=CREATE_ONLY)
        assert (put[0], put[2]) == (result["status"], {"error": result["error"]}), name
    assert results[2]["error"] == {"code": 412, "message": "unit new.service already exists"}
    units = {u.name: u for u in await api.registry.list_units()}
    assert units["old.service"].desired_state is DesiredState.LOADED  # untouched
    assert set(units) == {"old.service", "new.service"}


async def test_a_post_that_is_not_a_list_of_units_is_refused(api):
    for payload in ({}, {"units": []}, {"units": "x"}, [1]):
        status, _, answer = await api.call("POST", "/fleet/v1/units", body=payload)
        assert status == 400 and "units" in answer["error"]["message"], payload
    status, _, _ = await api.call("POST", "/fleet/v1/units", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415


async def test_create_all_creates_every_unit_in_one_transaction_or_none(api):
    """`POST /units` with `createAll`: none of the units exists: all created in one revision
    (200, 201 each); one exists: nothing written, 409 with the existing units as `GET
    /units?unitName=` shows them."""
    names = [f"a{i:02d}.service" for i in range(30)]
    before = await api.registry.current_revision()
    status, _, payload = await api.call("POST", "/fleet/v1/units",
                                        body={"createAll": [{"name": n, **body()} for n in names]})
    assert (status, payload) == (200, {"results": [{"name": n, "status": 201} for n in names]})
    assert len(set(await _job_revisions(api, before, 30))) == 1
    units = {u.name: u for u in await api.registry.list_units()}
    assert all(units[n].desired_state is DesiredState.LAUNCHED for n in names)
    # again with two new units among them: nothing written
    revision = await api.registry.current_revision()
    again = ["n1.service", "a03.service", "n2.service", "a07.service"]
    status, _, payload = await api.call("POST", "/fleet/v1/units",
                                        body={"createAll": [{"name": n, **body("loaded")} for n in again]})
    shown = (await api.call("GET", "/fleet/v1/units?unitName=a03.service&unitName=a07.service"))[2]["units"]
    assert status == 409 and payload["units"] == shown and [u["name"] for u in shown] == ["a03.service", "a07.service"]
    assert payload["error"]["code"] == 409
    await _nothing_written_since(api, revision)
    assert {u.name for u in await api.registry.list_units()} == set(names)


async def test_create_all_refuses_invalid_units_and_writes_nothing(api):
    bad = [{"section": "Service", "name": "ExecStart", "value": "/bin/true\u0001"}]
    revision = await api.registry.current_revision()
    cases = [[{"name": "ok.service", **body()}, {"name": "bad.service", **body(options=bad)}],
             [{"name": "ok.service", **body()}, {"name": "t@.service", **body()}],
             [{"name": "ok.service", **body()}, {"name": "ok.service", **body()}],
             [{"name": "ok.service", **body()}, {"desiredState": "launched"}],
             [{"name": f"m{i}.service", **body()} for i in range(61)], [], "x"]
    for items in cases:
        status, _, answer = await api.call("POST", "/fleet/v1/units", body={"createAll": items})
        assert status == 400 and answer["error"]["message"], items
    status, _, answer = await api.call("POST", "/fleet/v1/units",
                                       body={"createAll": [{"name": "ghost.service", "desiredState": "launched"}]})
    assert status == 409 and "options" in answer["error"]["message"] and "units" not in answer
    await _nothing_written_since(api, revision)
