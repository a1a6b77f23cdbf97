"""The registry against a real etcd server (started by the session fixture)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetd.config import EtcdSettings
from fleetd.errors import DuplicateMachine, RegistryUnavailable, UnitError, UnitNotFound
from fleetd.model import DesiredState, Machine, Placement, Resources, Unit, UnitState
from fleetd.registry import NotLeader, Registry, WatchCompacted
from fleetd.registry.memory import MemoryRegistry
from fleetd.unit.file import UnitFile

HELLO = '[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sh -c "sleep 1000"\n'
MID_A = "a" * 32
MID_B = "b" * 32


def unit(name: str, text: str = HELLO, state: DesiredState = DesiredState.INACTIVE) -> Unit:
    return Unit(name, UnitFile.parse(text), state)


@pytest.fixture(params=[pytest.param("etcd", marks=pytest.mark.etcd), "memory"])
async def store(request):
    """The registry's stores, behind the Registry facade: in a real etcd, and in memory
    (fleetd/registry/memory.py). Tests taking `store` are the behaviour both must share."""
    if request.param == "memory":
        yield MemoryRegistry()
        return
    async with await Registry.connect(request.getfixturevalue("etcd_settings")) as registry:
        yield registry


async def test_create_is_idempotent_and_conditional(store):
    assert await store.create_unit(unit("hello.service")) is True
    # creating again, even with another body, does not overwrite
    other = unit("hello.service", HELLO.replace("1000", "2000"))
    assert await store.create_unit(other) is False
    stored = await store.get_unit("hello.service")
    assert stored.file.serialize() == HELLO
    assert stored.desired_state is DesiredState.INACTIVE


async def test_body_is_content_addressed(registry: Registry, etcd_settings):
    u = unit("hello.service")
    await registry.create_unit(u)
    raw = await registry.core.get(registry.keys.body(u.hash))
    assert raw.value.decode() == HELLO
    # a second registry instance (no cache) reads the same unit
    async with await Registry.connect(etcd_settings) as fresh:
        assert (await fresh.get_unit("hello.service")).hash == u.hash


async def test_batch_create_list_sorted(store):
    units = [unit(f"u{i:03d}.service") for i in range(250)]  # > one transaction
    created = await store.create_units(units)
    assert len(created) == 250
    listed = await store.list_units()
    assert [u.name for u in listed] == sorted(u.name for u in units)
    # partly existing batch: only the new ones are created
    created = await store.create_units([unit("u000.service"), unit("new.service")])
    assert created == ["new.service"]


async def test_desired_state_changes(store):
    await store.create_units([unit("a.service"), unit("b.service")])
    await store.set_desired_state(["a.service", "b.service"], DesiredState.LAUNCHED)
    assert {u.desired_state for u in await store.list_units()} == {DesiredState.LAUNCHED}
    with pytest.raises(UnitNotFound, match="nope.service"):
        await store.set_desired_state(["nope.service"], DesiredState.LOADED)


async def test_template_cannot_be_activated(store):
    await store.create_unit(unit("web@.service"))
    with pytest.raises(UnitError, match="template"):
        await store.set_desired_state(["web@.service"], DesiredState.LAUNCHED)


async def test_replace_changes_hash_keeps_name(store):
    await store.create_unit(unit("hello.service", state=DesiredState.LAUNCHED))
    new = unit("hello.service", HELLO.replace("1000", "2000"), DesiredState.LAUNCHED)
    await store.replace_unit(new)
    stored = await store.get_unit("hello.service")
    assert stored.hash == new.hash and stored.desired_state is DesiredState.LAUNCHED


async def test_destroy(store):
    await store.create_units([unit("a.service"), unit("b.service")])
    assert await store.destroy_units(["a.service", "zzz.service"]) == ["a.service"]
    assert [u.name for u in await store.list_units()] == ["b.service"]
    assert await store.get_unit("a.service") is None


async def test_machine_presence_lease_and_duplicate(store):
    m = Machine(MID_A, "10.0.0.1", {"region": "us"}, "0.1.0", Resources(2, 1 << 30))
    lease = await store.grant_lease(2)
    assert await store.register_machine(m, lease) == lease
    machines = await store.list_machines()
    assert machines == [m]
    other = await store.grant_lease(2)
    with pytest.raises(DuplicateMachine, match=MID_A):
        await store.register_machine(m, other)
    # a restarted fleetd that knows its previous lease adopts it
    assert await store.register_machine(m, other, adopt_lease=lease) == lease
    await store.revoke_lease(lease)
    assert await store.list_machines() == []


async def test_machine_expires_with_lease(store):
    lease = await store.grant_lease(2)
    await store.register_machine(Machine(MID_A), lease)
    assert len(await store.list_machines()) == 1
    deadline = time.monotonic() + 3.2  # the TTL and etcd's lag in expiring a lease
    while await store.list_machines() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await store.list_machines() == []
    assert await store.keepalive(lease) == 0


async def test_dynamic_metadata_and_drain(store):
    lease = await store.grant_lease(5)
    await store.register_machine(Machine(MID_A, metadata={"region": "us", "disk": "ssd"}), lease)
    await store.set_machine_metadata(MID_A, "region", "eu")
    await store.set_machine_metadata(MID_A, "disk", None)
    await store.set_machine_metadata(MID_A, "rack", "r1")
    await store.set_draining(MID_A, True)
    (m,) = await store.list_machines()
    assert dict(m.metadata) == {"region": "eu", "rack": "r1"}
    assert m.draining
    await store.set_draining(MID_A, False)
    assert not (await store.get_machine(MID_A)).draining
    await store.revoke_lease(lease)


async def test_leader_fencing(store):
    lease_a = await store.grant_lease(5)
    lease_b = await store.grant_lease(5)
    assert await store.campaign(MID_A, lease_a)
    assert not await store.campaign(MID_B, lease_b)
    assert (await store.leader())[0] == MID_A
    p = Placement("a.service", MID_A, "h", DesiredState.LAUNCHED)
    await store.apply_schedule(fence_machine_id=MID_A, place=[p])
    assert await store.placements() == {"a.service": p}
    with pytest.raises(NotLeader):
        await store.apply_schedule(fence_machine_id=MID_B, unplace=[("a.service", MID_A)])
    await store.revoke_lease(lease_a)
    assert await store.campaign(MID_B, lease_b)
    await store.apply_schedule(fence_machine_id=MID_B, unplace=[("a.service", MID_A)])
    assert await store.placements() == {}


async def test_many_decisions_batched(store):
    lease = await store.grant_lease(5)
    await store.campaign(MID_A, lease)
    places = [Placement(f"u{i}.service", MID_A if i % 2 else MID_B, "h", DesiredState.LOADED) for i in range(300)]
    txns = await store.apply_schedule(fence_machine_id=MID_A, place=places)
    assert txns == 3
    assert len(await store.placements()) == 300
    view = await store.machine_view(MID_A)
    assert len(view.placements) == 150 and all(p.machine_id == MID_A for p in view.placements.values())
    assert view.globals == {} and view.revision > 0


async def test_snapshot_is_consistent(store):
    await store.create_units([unit("a.service", state=DesiredState.LAUNCHED), unit("b.service")])
    lease = await store.grant_lease(5)
    await store.register_machine(Machine(MID_A), lease)
    snap = await store.snapshot()
    assert set(snap.units) == {"a.service", "b.service"}
    assert set(snap.machines) == {MID_A}
    assert snap.revision == await store.current_revision()


async def test_states_published_under_lease(store):
    lease = await store.grant_lease(2)
    s = UnitState("a.service", MID_A, "h", "loaded", "active", "running")
    await store.publish_states([s], lease)
    assert await store.unit_states() == [s]
    assert await store.unit_states(name="a.service", machine_id=MID_B) == []
    await store.delete_states(["a.service"], MID_A)
    assert await store.unit_states() == []


async def test_watch_from_revision_sees_every_event(registry: Registry):
    rev = await registry.current_revision()
    await registry.create_unit(unit("a.service"))
    await registry.set_desired_state(["a.service"], DesiredState.LOADED)
    await registry.destroy_units(["a.service"])
    events = []
    stream = registry.watch([registry.keys.jobs], rev + 1)
    async for event in stream:
        events.append(event)
        if len(events) == 3:
            break
    await stream.aclose()
    assert [e.value is None for e in events] == [False, False, True]
    assert all(e.key == registry.keys.job("a.service") for e in events)


async def test_watch_compacted(registry: Registry):
    rev = await registry.current_revision()
    for i in range(3):
        await registry.create_unit(unit(f"c{i}.service"))
    await registry.connection.client.compact(await registry.current_revision())
    with pytest.raises(WatchCompacted):
        async for _ in registry.watch([registry.keys.jobs], rev):
            break


async def test_unreachable_etcd_is_a_clear_error(etcd_prefix):
    from fleetlab.testing.etcd import free_port

    settings = EtcdSettings(endpoints=(f"http://127.0.0.1:{free_port()}",), key_prefix=etcd_prefix, request_timeout=0.5)
    reg = await Registry.connect(settings)
    try:
        with pytest.raises(RegistryUnavailable, match="etcd unreachable at http://127.0.0.1"):
            await reg.list_units()
    finally:
        await reg.close()


class _CuttableProxy:
    """A TCP proxy to etcd that can be cut: data is then silently dropped, sockets stay open
    (what a partition looks like to a client that is already connected)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.cut = False
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    if not self.cut:
                        dst.write(data)
                        await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self):
        self.server.close()


async def test_failover_to_the_next_member_when_one_does_not_answer(etcd_server, etcd_prefix):
    """The member a client is connected to stops answering (partitioned): the first call times
    out, and the connection moves on to the next endpoint for the following calls, watches
    included (instead of waiting for gRPC keepalive, longer than a machine's lease)."""
    from urllib.parse import urlsplit

    from fleetd.config import EtcdSettings
    from fleetd.errors import RegistryUnavailable

    proxy = _CuttableProxy(urlsplit(etcd_server.endpoint).port)
    port = await proxy.start()
    settings = EtcdSettings(endpoints=(f"http://127.0.0.1:{port}", etcd_server.endpoint),
                            key_prefix=etcd_prefix, request_timeout=1.0)
    reg = await Registry.connect(settings)
    try:
        assert await reg.list_units() == []  # through the proxy
        revision = await reg.current_revision()
        lease = await reg.grant_lease(5)
        events = reg.watch([reg.keys.machines], revision + 1)
        # setup: the watch is in place before the cut once it has brought an event
        await reg.register_machine(Machine(MID_B), lease)
        assert (await asyncio.wait_for(events.__anext__(), 5)).key == reg.keys.machine_object(MID_B)
        revision = await reg.current_revision()
        second = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)  # (the future waits on the watch stream)
        assert not second.done()
        proxy.cut = True
        with pytest.raises(RegistryUnavailable):
            await reg.keepalive(lease)
        assert await reg.keepalive(lease) > 0  # the next member
        with pytest.raises(RegistryUnavailable):  # the old connection's watch ends ...
            await asyncio.wait_for(second, 5)
        events = reg.watch([reg.keys.machines], revision + 1)  # ... and watching again works
        await reg.register_machine(Machine(MID_A), lease)
        event = await asyncio.wait_for(events.__anext__(), 5)
        assert event.key == reg.keys.machine_object(MID_A)
        await events.aclose()
        await reg.revoke_lease(lease)
    finally:
        await reg.close()
        await proxy.close()


@pytest.mark.parametrize("name", ["hello", "a/b.service", "a b.service", "@x.service"])
async def test_invalid_names_never_reach_etcd(store, name):
    from fleetd.errors import InvalidUnitName

    with pytest.raises(InvalidUnitName):
        await store.create_units([unit("ok.service"), unit(name)])
    with pytest.raises(InvalidUnitName):
        await store.replace_unit(unit(name))
    assert await store.list_units() == []


async def test_unit_records_read_per_name(store):
    lease = await store.grant_lease(5)
    await store.campaign(MID_A, lease)
    names = [f"r{i:03d}.service" for i in range(130)]  # more than one transaction's worth
    await store.create_units([unit(n, state=DesiredState.LAUNCHED) for n in names] + [unit("idle.service")])
    h = (await store.get_unit(names[0])).hash
    await store.apply_schedule(fence_machine_id=MID_A, place=[
        Placement(n, MID_A if i % 2 else MID_B, h, DesiredState.LAUNCHED) for i, n in enumerate(names)])
    reported = [UnitState(n, MID_A if i % 2 else MID_B, h, "loaded", "active", "running", "launched")
                for i, n in enumerate(names[:-2])]
    # the last two: r128 placed on B and reported nowhere, r129 placed on A and reported
    # (stale) on B only
    stale = UnitState(names[-1], MID_B, h, "loaded", "inactive", "dead", "")
    await store.publish_states(reported + [stale], lease)

    everywhere = store.schedule.placements

    async def no_schedule_scan():
        raise AssertionError("read the whole schedule")

    store.schedule.placements = no_schedule_scan  # reported units must not need it
    try:
        records = await store.unit_records(names[:-2] + ["nope.service"])
        assert list(records) == names[:-2]
        assert all(records[n].placement == Placement(n, MID_A if i % 2 else MID_B, h, DesiredState.LAUNCHED)
                   for i, n in enumerate(names[:-2]))
        assert records[names[0]].states == (reported[0],)
        assert (await store.unit_records([names[3]]))[names[3]].placement.machine_id == MID_A
        lazy = await store.unit_records(names[-2:] + ["idle.service"], find_unreported=False)
        assert lazy["idle.service"].placement is None and lazy["idle.service"].states == ()
        assert lazy[names[-2]].placement is None and lazy[names[-1]].placement is None
        assert lazy[names[-1]].states == (stale,)
    finally:
        store.schedule.placements = everywhere
    exact = await store.unit_records(names[-2:])
    assert exact[names[-2]].placement.machine_id == MID_B  # found in the schedule after all
    assert exact[names[-1]].placement.machine_id == MID_A
    assert (await store.unit_records([names[-1]]))[names[-1]].placement.machine_id == MID_A
    assert (await store.unit_records(["idle.service"]))["idle.service"].placement is None
    await store.revoke_lease(lease)


def test_both_implementations_have_every_store_protocol():
    from fleetd.registry import stores
    from fleetd.registry.connection import Connection

    etcd = Registry(Connection(EtcdSettings(endpoints=("http://127.0.0.1:1",))))  # never connected
    protocols = {"units": stores.UnitStore, "machines": stores.MachineStore, "schedule": stores.ScheduleStore,
                 "leadership": stores.LeadershipStore, "states": stores.StateStore, "views": stores.ClusterViews}
    for implementation in (etcd, MemoryRegistry()):
        for attribute, protocol in protocols.items():
            assert isinstance(getattr(implementation, attribute), protocol), (implementation, attribute)
    from fleetd.registry.images import ImageDirectory

    assert isinstance(ImageDirectory(etcd), stores.ImageRecords)
    assert not isinstance(object(), stores.UnitStore)
