"""The agent's calls to systemd before a start go out together, not one round trip after the
other (fleetd/agent/systemd.py `SystemdManager.load` and `start`): the read in which systemd
loads new unit files is sent with their `LinkUnitFiles`, and the started units' match rules
with their `StartUnit`s (the bus and systemd handle a connection's messages in order, so the
read sees the links and each rule is on before its job). The bus is a stand-in here that
answers nothing until the test says so; tests/lab/test_systemd_adapter.py runs the adapter
against a node's real systemd and bus."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from dbus_fast import MessageType

from fleetd.agent.systemd import SystemdManager, UnitSystemdState, UnitWatch, unit_object_path

TEXT = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/sleep infinity\n"


class Bus:
    """Records each call as it is sent; a call's reply waits until `answer` gives it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list]] = []
        self._replies: list[asyncio.Future] = []

    async def call(self, msg):
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((msg.member, msg.body))
        self._replies.append(fut)
        return await fut

    def answer(self, index: int, body: list | None = None, error: str | None = None) -> None:
        if error is not None:
            reply = SimpleNamespace(message_type=MessageType.ERROR, error_name=error, body=["refused"])
        else:
            reply = SimpleNamespace(message_type=MessageType.METHOD_RETURN, error_name=None, body=body or [])
        self._replies[index].set_result(reply)

    def members(self) -> list[str]:
        return [m for m, _ in self.sent]


def row(name: str, load: str = "loaded", active: str = "inactive", sub: str = "dead") -> list:
    return [name, "x", load, active, sub, "", unit_object_path(name), 0, "", "/"]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def not_found(*names: str) -> dict[str, UnitSystemdState]:
    return {n: UnitSystemdState(n, "not-found", "inactive", "dead") for n in names}


async def test_the_read_that_loads_new_files_goes_out_with_their_link(tmp_path):
    bus = Bus()
    mgr = SystemdManager(bus, tmp_path)
    load = asyncio.ensure_future(mgr.load({"a.service": TEXT, "b.service": TEXT}, known=not_found("a.service", "b.service")))
    await settle()
    # both sent before systemd answered the link
    assert bus.members() == ["LinkUnitFiles", "ListUnitsByNames"]
    assert bus.sent[1][1] == [["a.service", "b.service"]]
    bus.answer(0, [[]])
    bus.answer(1, [[row("a.service"), row("b.service")]])
    after = await load
    assert {n: s.load_state for n, s in after.items()} == {"a.service": "loaded", "b.service": "loaded"}
    assert mgr.reloads == 0 and mgr.reloads_skipped == 1
    assert (tmp_path / "a.service").read_text() == TEXT


async def test_a_unit_that_did_not_load_by_itself_still_gets_the_reload(tmp_path):
    bus = Bus()
    mgr = SystemdManager(bus, tmp_path)
    load = asyncio.ensure_future(mgr.load({"a.service": TEXT}, known=not_found("a.service")))
    await settle()
    bus.answer(0, [[]])
    bus.answer(1, [[row("a.service", "not-found")]])
    await settle()
    assert bus.members() == ["LinkUnitFiles", "ListUnitsByNames", "Reload"]
    bus.answer(2)
    assert await load is None
    assert mgr.reloads == 1


async def test_a_replaced_unit_is_linked_then_reloaded_without_the_read(tmp_path):
    bus = Bus()
    mgr = SystemdManager(bus, tmp_path)
    known = {"a.service": UnitSystemdState("a.service", "loaded", "active", "running")}
    load = asyncio.ensure_future(mgr.load({"a.service": TEXT}, known=known))
    await settle()
    assert bus.members() == ["LinkUnitFiles"]  # the reload waits for the link
    bus.answer(0, [[]])
    await settle()
    assert bus.members() == ["LinkUnitFiles", "Reload"]
    bus.answer(1)
    assert await load is None


async def test_a_refused_link_is_the_error_even_with_the_read_sent(tmp_path):
    bus = Bus()
    mgr = SystemdManager(bus, tmp_path)
    load = asyncio.ensure_future(mgr.load({"a.service": TEXT}, known=not_found("a.service")))
    await settle()
    bus.answer(0, error="org.freedesktop.DBus.Error.AccessDenied")
    bus.answer(1, [[row("a.service")]])
    try:
        await load
    except Exception as exc:  # noqa: BLE001 - the adapter's own error
        assert "LinkUnitFiles" in str(exc)
    else:
        raise AssertionError("a refused link must fail the load")


async def started(bus: Bus, mgr: SystemdManager, names: list[str], first: int = 0) -> None:
    """Answer the StartUnits (from index `first`) with jobs, then end each job as done."""
    for i, (member, body) in enumerate(bus.sent[first:], first):
        if member == "StartUnit":
            bus.answer(i, [f"/org/freedesktop/systemd1/job/{body[0]}"])
    await settle()
    for name in names:
        mgr._job_removed(f"/org/freedesktop/systemd1/job/{name}", "done")


async def starting(tmp_path, names: list[str]):
    """A manager starting `names` (loaded, inactive) with a watch: its bus, watch and start task,
    the calls it sent before any reply."""
    bus = Bus()
    mgr = SystemdManager(bus, tmp_path)
    watch = UnitWatch(mgr)
    loaded = {n: UnitSystemdState(n, "loaded", "inactive", "dead") for n in names}
    start = asyncio.ensure_future(mgr.start(names, watch=watch, known=loaded))
    await settle()
    return bus, mgr, watch, start


async def test_the_started_units_rules_go_out_with_their_jobs_rules_first(tmp_path):
    names = ["a.service", "b.service"]
    bus, mgr, watch, start = await starting(tmp_path, names)
    # two rules per unit, then the jobs, all before any reply
    assert bus.members() == ["AddMatch"] * 4 + ["StartUnit"] * 2
    assert f"path='{unit_object_path('a.service')}'" in bus.sent[0][1][0]
    assert [b for m, b in bus.sent if m == "StartUnit"] == [["a.service", "replace"], ["b.service", "replace"]]
    for i in range(4):
        bus.answer(i)
    await started(bus, mgr, names)
    await start
    assert watch.units == set(names)
    # released with the states known (no read of them)
    got = {(await watch.next(timeout=1)).name for _ in names}
    assert got == set(names) and bus.members().count("ListUnitsByNames") == 0


async def test_a_refused_rule_matches_every_unit_and_reads_the_units_at_release(tmp_path):
    bus, mgr, watch, start = await starting(tmp_path, ["a.service"])
    assert bus.members() == ["AddMatch", "AddMatch", "StartUnit"]
    bus.answer(0, error="org.freedesktop.DBus.Error.LimitsExceeded")
    bus.answer(1)
    await started(bus, mgr, ["a.service"])
    await settle()
    assert bus.members()[3:] == ["AddMatch"]  # every unit's signals, one rule after the other
    assert "path_namespace=" in bus.sent[3][1][0]
    bus.answer(3)
    await settle()
    assert bus.members()[4:] == ["AddMatch"]
    bus.answer(4)
    await start
    await settle()
    assert bus.members()[5:] == ["ListUnitsByNames"]  # its signals may have been missed: read
    bus.answer(5, [[row("a.service", "loaded", "active", "running")]])
    state = await watch.next(timeout=1)
    assert (state.name, state.active_state) == ("a.service", "active")


async def test_too_many_for_the_pending_calls_rules_first_then_jobs(tmp_path, monkeypatch):
    import fleetd.agent.systemd as sd

    monkeypatch.setattr(sd, "MAX_PENDING_CALLS", 4)
    names = ["a.service", "b.service"]
    bus, mgr, watch, start = await starting(tmp_path, names)
    assert bus.members() == ["AddMatch"] * 4  # the jobs wait for the rules' replies
    for i in range(4):
        bus.answer(i)
    await settle()
    assert bus.members()[4:] == ["StartUnit"] * 2
    await started(bus, mgr, names, 4)
    await start
