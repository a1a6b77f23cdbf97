"""fleetd.agent.systemd against a real systemd 252, booted in one systemd-nspawn node (sdx-n1).

The test process stays on the host and talks to the node's system bus through
/proc/<init>/root/run/dbus/system_bus_socket; the units directory is bind-mounted into the node
at the same path (see tests/lab/_sdx_node.py). One test runs the adapter inside the node to check
the default (system bus) connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from fleetd.agent.executor import execute
from fleetd.agent.plan import DesiredUnit, TaskKind, observe, plan
from fleetd.agent.systemd import SystemdManager, UnitSystemdState
from fleetd.errors import InvalidUnitName, SystemdUnitError
from fleetd.model import DesiredState
from fleetd.unit.file import UnitFile

sys.path.insert(0, str(Path(__file__).parent))
from _sdx_node import manager_fixture, node_fixture  # noqa: E402

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def service(description: str, extra: str = "", body: str = "ExecStart=/bin/sleep infinity") -> str:
    """A canonical unit text (what the agent writes: the registry's serialization)."""
    text = f"[Unit]\nDescription={description}\n\n[Service]\n{body}\n{extra}"
    return UnitFile.parse(text).serialize()


def desired(name: str, text: str, state=DesiredState.LAUNCHED) -> DesiredUnit:
    return DesiredUnit(name, UnitFile.parse(text).hash, text, state)


node = node_fixture("sdx-n1", "the systemd adapter lab tests")
mgr = manager_fixture()


async def collect_until(watch, predicate, timeout: float = 10.0) -> dict[str, UnitSystemdState]:
    """Read watch events (no polling of systemd) until predicate(latest states) holds."""
    latest: dict[str, UnitSystemdState] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate(latest):
        left = deadline - asyncio.get_running_loop().time()
        try:
            state = await watch.next(max(left, 0.001))
        except asyncio.TimeoutError:
            raise AssertionError(f"watch did not reach the expected states; saw {latest}")
        latest[state.name] = state
    return latest


def all_in(names, active, sub=None):
    return lambda latest: all(
        n in latest and latest[n].active_state == active and (sub is None or latest[n].sub_state == sub)
        for n in names)


async def test_load_start_watch_stop_unload(node, mgr):
    a, b, c = "sdx-a.service", "sdx-b.service", "sdx-c.service"
    units = {
        a: service("main"),
        b: service("sidekick of a", "\n[Install]\nWantedBy=sdx-a.service\n"),
        c: service("third"),
    }
    await mgr.load(units)

    assert mgr.installed_units() == units
    for name in units:
        link = node.run("readlink", f"/run/systemd/system/{name}").stdout.strip()
        assert link == str(node.units_dir / name)
    wants = node.run("readlink", f"/run/systemd/system/{a}.wants/{b}").stdout.strip()
    assert wants == str(node.units_dir / b)
    before = await mgr.states(units)
    assert {n: (s.load_state, s.active_state) for n, s in before.items()} == {
        n: ("loaded", "inactive") for n in units}

    watch = await mgr.watch([a, b, c])
    baseline = await collect_until(watch, all_in(units, "inactive"), timeout=2)
    assert set(baseline) == set(units)

    t0 = time.monotonic()
    await mgr.start([a, c])  # b is pulled in by a (WantedBy=sdx-a.service)
    seen = await collect_until(watch, all_in(units, "active", "running"))
    print(f"\nstart of 2 units (+1 wanted): all active via signals after "
          f"{time.monotonic() - t0:.3f}s")
    assert all(s.load_state == "loaded" for s in seen.values())

    states = await mgr.states(units, main_pid=True)
    assert all(s.active_state == "active" and s.sub_state == "running" for s in states.values())
    assert all(s.main_pid and s.main_pid > 1 for s in states.values())

    # events come only for watched units; the watched set can change
    await watch.set_units([a, b])
    other = "sdx-other.service"
    await mgr.load({other: service("not watched")})
    await mgr.start([other])
    await mgr.stop([c])
    with pytest.raises(asyncio.TimeoutError):
        ev = await watch.next(0.5)
        pytest.fail(f"unexpected event {ev}")

    await mgr.stop([a, b])
    await collect_until(watch, all_in([a, b], "inactive", "dead"))
    with pytest.raises(asyncio.TimeoutError):
        await watch.next(timeout=0)  # nothing pending: no wait
    await mgr.start([c])  # not watched any more
    await mgr.start([b])
    await asyncio.sleep(0.5)  # let the events arrive, then take them without waiting
    got = await watch.next(timeout=0)
    assert (got.name, got.active_state) == (b, "active")
    await mgr.stop([b, c])
    await collect_until(watch, all_in([b], "inactive", "dead"))
    assert {s.active_state for s in (await mgr.states(units)).values()} == {"inactive"}

    await mgr.unload([a, b, c])
    gone = await collect_until(
        watch, lambda lt: all(n in lt and lt[n].load_state == "not-found" for n in (a, b)))
    assert all(s.active_state == "inactive" for s in gone.values())
    assert set(mgr.installed_units()) == {other}
    for name in units:
        assert not (node.units_dir / name).exists()
        assert node.run("test", "-L", f"/run/systemd/system/{name}", check=False).returncode == 1
    assert node.run("test", "-e", f"/run/systemd/system/{a}.wants/{b}", check=False).returncode == 1
    after = await mgr.states(units)
    assert {n: s.load_state for n, s in after.items()} == {n: "not-found" for n in units}
    watch.close()
    assert [s async for s in watch] == []  # closed: iteration ends


async def test_unload_stops_running_units(node, mgr):
    name = "sdx-running.service"
    await mgr.load({name: service("running")})
    await mgr.start([name])
    pid = (await mgr.states([name], main_pid=True))[name].main_pid
    assert pid and Path(f"/proc/{node.init_pid}/root").exists()
    await mgr.unload([name])
    st = (await mgr.states([name]))[name]
    assert (st.load_state, st.active_state) == ("not-found", "inactive")
    # the process is gone from the node (pid namespace of the node)
    assert node.run("kill", "-0", str(pid), check=False).returncode != 0


async def test_restart_gives_a_new_main_pid(node, mgr):
    name = "sdx-restart.service"
    await mgr.load({name: service("restart me")})
    await mgr.start([name])
    pid1 = (await mgr.states([name], main_pid=True))[name].main_pid
    await mgr.restart([name])
    st = (await mgr.states([name], main_pid=True))[name]
    assert st.active_state == "active" and st.main_pid not in (0, None, pid1)


async def test_hash_change_reloads_and_restarts(node, mgr):
    name = "sdx-replace.service"
    v1 = desired(name, service("version one"))
    first = plan({name: v1}, observe(mgr.installed_units(), {}), {})
    result = await execute(first, mgr)
    assert result.ok, result.error
    pid1 = (await mgr.states([name], main_pid=True))[name].main_pid
    assert pid1

    v2 = desired(name, service("version two", body="ExecStart=/bin/sleep 1000000"))
    assert v2.hash != v1.hash
    observed = observe(mgr.installed_units(), await mgr.states([name]))
    assert observed[name].hash == v1.hash
    second = plan({name: v2}, observed, first.launched)
    assert [(t.kind, t.name) for t in second.tasks] == [
        (TaskKind.UNLOAD, name), (TaskKind.LOAD, name), (TaskKind.START, name)]
    result = await execute(second, mgr)
    assert result.ok, result.error

    st = (await mgr.states([name], main_pid=True))[name]
    assert st.active_state == "active" and st.main_pid and st.main_pid != pid1
    assert mgr.installed_units()[name] == v2.text
    shown = node.run("systemctl", "show", "-p", "Description,ExecStart", name).stdout
    assert "Description=version two" in shown and "sleep 1000000" in shown
    # and now it is in the desired state: nothing left to do
    assert not plan({name: v2}, observe(mgr.installed_units(), await mgr.states([name])),
                    second.launched_after(result.attempted))


async def test_new_units_load_without_a_daemon_reload(node, mgr):
    """Units systemd never loaded are found by its unit cache; only replaced files, [Install]
    links and units that did not load by themselves cost a daemon-reload."""
    fresh = {f"sdx-noreload{i}.service": service(f"fresh {i}") for i in range(3)}
    reloads = mgr.reloads
    await mgr.load(fresh)
    assert mgr.reloads == reloads and mgr.reloads_skipped >= 1
    await mgr.start(fresh)
    states = await mgr.states(fresh, main_pid=True)
    assert all(s.load_state == "loaded" and s.active_state == "active" and s.main_pid
               for s in states.values()), states

    # a file systemd has loaded is only re-read by a reload
    name = "sdx-noreload0.service"
    await mgr.load({name: service("fresh 0, version two")})
    assert mgr.reloads == reloads + 1
    assert "Description=fresh 0, version two" in node.run("systemctl", "show", "-p", "Description", name).stdout

    # new wants of an already loaded target need the reload as well
    sidekick = "sdx-noreload-sidekick.service"
    await mgr.load({sidekick: service("sidekick", "\n[Install]\nWantedBy=sdx-noreload1.service\n")})
    assert mgr.reloads == reloads + 2
    wants = node.run("systemctl", "show", "-p", "Wants", "sdx-noreload1.service").stdout
    assert sidekick in wants

    # a unit that does not load by itself (here: a bad setting) gets the reload too
    broken = "sdx-noreload-broken.service"
    await mgr.load({broken: service("broken", body="ExecStart=not/absolute")})
    assert mgr.reloads == reloads + 3
    assert (await mgr.states([broken]))[broken].load_state != "loaded"

    # unloaded, then loaded again: unknown to systemd once more, no reload
    await mgr.unload([name])
    after_unload = mgr.reloads
    await mgr.load({name: service("fresh 0 again")})
    assert mgr.reloads == after_unload
    await mgr.start([name])
    assert "Description=fresh 0 again" in node.run("systemctl", "show", "-p", "Description", name).stdout
    assert (await mgr.states([name]))[name].active_state == "active"


async def test_load_takes_the_callers_states(node, mgr):
    """The agent hands `load` the states its pass read: new units load without a read of their
    own and without a reload; a unit the caller saw loaded gets the reload its new file needs."""
    fresh = {f"sdx-known{i}.service": service(f"known {i}") for i in range(3)}
    seen = await mgr.states(fresh)
    assert all(s.load_state == "not-found" for s in seen.values())
    reloads = mgr.reloads
    await mgr.load(fresh, known=seen)
    assert mgr.reloads == reloads
    await mgr.start(fresh)
    assert all(s.active_state == "active" for s in (await mgr.states(fresh)).values())
    name = "sdx-known0.service"
    await mgr.load({name: service("known 0, version two")}, known=await mgr.states([name]))
    assert mgr.reloads == reloads + 1
    assert "Description=known 0, version two" in node.run("systemctl", "show", "-p", "Description", name).stdout
    await mgr.unload(fresh)


async def test_started_units_are_held_in_the_watch_until_their_job_ends(node, mgr):
    """The agent's start batch (`start(watch=...)`): the units join the watch before their jobs
    and are delivered once their jobs ended: a forking or notify unit that is `activating` for a
    while is never delivered so, a failing one is delivered `failed`, and no state is read again
    for units whose load state the load batch read."""
    units = {
        "sdx-held-simple.service": service("simple"),
        "sdx-held-forking.service": service("forking", body="Type=forking\n"
                                            "ExecStart=/bin/sh -c 'sleep 0.4; /bin/sleep infinity & exit 0'"),
        "sdx-held-notify.service": service("notify", body="Type=notify\nNotifyAccess=all\n"
                                           "ExecStart=/bin/sh -c 'sleep 0.4; systemd-notify --ready; exec sleep infinity'"),
        "sdx-held-fails.service": service("fails", body="Type=oneshot\nExecStart=/bin/sh -c 'sleep 0.2; exit 3'"),
    }
    after = await mgr.load(units, known=await mgr.states(units))
    assert after is not None and all(s.load_state == "loaded" for s in after.values())
    watch = await mgr.watch(())
    delivered: list[tuple[str, str, str]] = []
    done: list[str] = []

    async def record():
        async for state in watch:
            delivered.append((state.name, state.active_state, "job done" if state.name in done else "job running"))

    reads = []
    read = mgr.states

    async def counted(names, **kw):
        reads.append(tuple(names))
        return await read(names, **kw)

    recorder = asyncio.create_task(record())
    mgr.states = counted
    try:
        with pytest.raises(SystemdUnitError) as info:
            await mgr.start(units, watch=watch, known=after, on_done=lambda name, result: done.append(name))
        assert list(info.value.failures) == ["sdx-held-fails.service"]
        await collect_until_delivered(delivered, set(units))
    finally:
        del mgr.states
        recorder.cancel()
        watch.close()
    assert sorted(done) == sorted(units) and reads == []
    firsts = {}
    for name, active, when in delivered:
        firsts.setdefault(name, (active, when))
    assert firsts == {"sdx-held-simple.service": ("active", "job done"),
                      "sdx-held-forking.service": ("active", "job done"),
                      "sdx-held-notify.service": ("active", "job done"),
                      "sdx-held-fails.service": ("failed", "job done")}, delivered
    assert not any(active == "activating" for _, active, _ in delivered), delivered
    await mgr.unload(units)


async def collect_until_delivered(delivered: list, names: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while {n for n, _, _ in delivered} != names:
        assert time.monotonic() < deadline, delivered
        await asyncio.sleep(0.02)


async def test_failing_start_reports_the_job_result(node, mgr):
    bad, missing = "sdx-fail.service", "sdx-missing.service"
    await mgr.load({bad: service("fails", body="Type=oneshot\nExecStart=/bin/false")})
    with pytest.raises(SystemdUnitError) as info:
        await mgr.start([bad, missing])
    err = info.value
    assert err.failures[bad] == "job result: failed"
    assert missing in err.failures and "not found" in err.failures[missing]
    assert "sdx-fail.service (job result: failed)" in str(err)
    assert (await mgr.states([bad]))[bad].active_state == "failed"

    # executor: the failed start counts as attempted, so the next pass does not retry it
    d = {bad: desired(bad, mgr.installed_units()[bad])}
    p = plan(d, observe(mgr.installed_units(), await mgr.states([bad])), {})
    assert [(t.kind, t.name) for t in p.tasks] == [(TaskKind.START, bad)]
    result = await execute(p, mgr)
    assert not result.ok and [t.name for t in result.failed] == [bad]
    memory = p.launched_after(result.attempted)
    assert not plan(d, observe(mgr.installed_units(), await mgr.states([bad])), memory)

    # unload resets the failed state and removes it
    await mgr.unload([bad])
    assert (await mgr.states([bad]))[bad].load_state == "not-found"


async def test_enable_failure_removes_the_file(node, mgr):
    good, bad = "sdx-good.service", "sdx-badalias.service"
    with pytest.raises(SystemdUnitError) as info:
        await mgr.load({good: service("fine", "\n[Install]\nWantedBy=multi-user.target\n"),
                        bad: service("bad alias", "\n[Install]\nAlias=notaunit\n")})
    assert list(info.value.failures) == [bad] and "enable" in info.value.failures[bad]
    assert set(mgr.installed_units()) == {good}
    assert node.run("test", "-L", f"/run/systemd/system/{bad}", check=False).returncode == 1
    states = await mgr.states([good, bad])
    assert states[good].load_state == "loaded" and states[bad].load_state == "not-found"


async def test_refuses_names_with_a_slash(node, mgr):
    with pytest.raises(InvalidUnitName, match="not a plain file name"):
        await mgr.load({"../evil.service": service("x")})
    with pytest.raises(InvalidUnitName):
        await mgr.start(["a/b.service"])
    assert not (node.units_dir.parent / "evil.service").exists()


async def test_adoption_after_fleetd_restart(node):
    names = ["sdx-adopt1.service", "sdx-adopt2.service"]
    want = {n: desired(n, service(f"adopt {n}")) for n in names}
    first = await SystemdManager.connect(node.units_dir, bus_address=node.bus_address)
    try:
        p = plan(want, observe(first.installed_units(), {}), {})
        assert (await execute(p, first)).ok
        before = await first.states(names, main_pid=True)
        assert all(s.active_state == "active" and s.main_pid for s in before.values())
    finally:
        await first.close()  # "fleetd stops": the units keep running

    second = await SystemdManager.connect(node.units_dir, bus_address=node.bus_address)
    try:
        installed = second.installed_units()
        assert installed == {n: want[n].text for n in names}
        observed = observe(installed, await second.states(installed))
        p = plan(want, observed, {})  # empty memory, as after a restart
        assert p.tasks == ()
        assert dict(p.launched) == {n: want[n].hash for n in names}
        assert (await execute(p, second)).ok
        after = await second.states(names, main_pid=True)
        assert {n: s.main_pid for n, s in after.items()} == {n: s.main_pid for n, s in before.items()}
    finally:
        try:
            await second.unload(names)
        finally:
            await second.close()


async def test_batch_of_100_units(node, mgr):
    names = [f"sdx-batch{i:03d}.service" for i in range(100)]
    units = {n: service(f"batch {n}") for n in names}
    watch = await mgr.watch(names)
    t0 = time.monotonic()
    await mgr.load(units)
    t1 = time.monotonic()
    await mgr.start(names)
    t2 = time.monotonic()
    await collect_until(watch, all_in(names, "active", "running"), timeout=30)
    t3 = time.monotonic()
    states = await mgr.states(names, main_pid=True)
    t4 = time.monotonic()
    assert all(s.active_state == "active" and s.main_pid for s in states.values())
    assert len({s.main_pid for s in states.values()}) == 100
    await mgr.unload(names)
    t5 = time.monotonic()
    assert {s.load_state for s in (await mgr.states(names)).values()} == {"not-found"}
    assert mgr.installed_units() == {}
    print(f"\n100 units: load+link+reload {t1 - t0:.3f}s, start (all jobs done) {t2 - t1:.3f}s, "
          f"all active seen on the watch {t3 - t1:.3f}s after start began, states+MainPID "
          f"{t4 - t3:.3f}s, unload (stop+disable+reload) {t5 - t4:.3f}s")
    watch.close()


def test_default_system_bus_inside_the_node(node):
    """connect() without bus_address uses the system bus: run the adapter inside the node."""
    script = (
        "import asyncio\n"
        "from pathlib import Path\n"
        "from fleetd.agent.systemd import SystemdManager\n"
        "async def main():\n"
        "    m = await SystemdManager.connect(Path('/run/sdx-inside/units'))\n"
        "    await m.load({'sdx-inside.service': '[Service]\\nExecStart=/bin/sleep infinity\\n'})\n"
        "    await m.start(['sdx-inside.service'])\n"
        "    st = (await m.states(['sdx-inside.service']))['sdx-inside.service']\n"
        "    await m.unload(['sdx-inside.service'])\n"
        "    gone = (await m.states(['sdx-inside.service']))['sdx-inside.service']\n"
        "    await m.close()\n"
        "    print(st.active_state, gone.load_state)\n"
        "asyncio.run(main())\n"
    )
    out = node.run("env", f"PYTHONPATH={REPO}", f"{REPO}/.venv/bin/python", "-c", script,
                   check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["active", "not-found"]


async def test_only_watched_units_signals_reach_the_adapter(node, mgr):
    """The units' own signals are matched per watched unit (`track_units`): a start signals
    several other units (targets, a slice), which the bus keeps to itself, and the signals of a
    unit that left the watch stop; the watched unit's state still arrives."""
    from dbus_fast import MessageType

    from fleetd.agent.systemd import unit_object_path

    units = {"sdx-sig-watched.service": service("watched"), "sdx-sig-other.service": service("other")}
    await mgr.load(units)
    seen: list[tuple[str, str]] = []

    def spy(msg):
        if msg.message_type == MessageType.SIGNAL and msg.member in ("PropertiesChanged", "UnitRemoved", "UnitNew"):
            seen.append((msg.member, msg.path if msg.member == "PropertiesChanged" else msg.body[0]))

    mgr._bus.add_message_handler(spy)
    watch = await mgr.watch(["sdx-sig-watched.service"])
    try:
        await mgr.start(["sdx-sig-watched.service", "sdx-sig-other.service"])
        await collect_until(watch, all_in(["sdx-sig-watched.service"], "active"))
        watched = unit_object_path("sdx-sig-watched.service")
        assert ("PropertiesChanged", watched) in seen
        assert {p for m, p in seen if m == "PropertiesChanged"} == {watched}, seen
        await watch.set_units([])
        seen.clear()
        await mgr.stop(["sdx-sig-watched.service"])
        await mgr.start(["sdx-sig-watched.service"])
        assert seen == []
    finally:
        mgr._bus.remove_message_handler(spy)
        watch.close()
        await mgr.unload(units)


async def test_a_refused_unit_rule_falls_back_to_every_units_signals(node, mgr, monkeypatch):
    """The system bus keeps 512 match rules per connection (dbus-daemon's default), two per
    watched unit: a node watching ~256 units gets a rule refused. The adapter then matches every
    unit's signals, and a watched unit's states still arrive, also of units watched later."""
    from fleetd.errors import SystemdError

    real_add_match = mgr._add_match

    async def refusing(rule: str) -> None:
        if "path='/org/freedesktop/systemd1/unit/" in rule or ",arg0='sdx-" in rule:
            raise SystemdError("org.freedesktop.DBus.Error.LimitsExceeded: too many match rules (test)")
        await real_add_match(rule)

    monkeypatch.setattr(mgr, "_add_match", refusing)
    units = {"sdx-quota-a.service": service("quota a"), "sdx-quota-b.service": service("quota b")}
    await mgr.load(units)
    watch = await mgr.watch(["sdx-quota-a.service"])
    try:
        assert mgr._all_units
        await mgr.start(["sdx-quota-a.service"])
        await collect_until(watch, all_in(["sdx-quota-a.service"], "active"))
        await watch.set_units(["sdx-quota-a.service", "sdx-quota-b.service"])
        await mgr.start(["sdx-quota-b.service"])
        await collect_until(watch, all_in(["sdx-quota-b.service"], "active"))
        await mgr.stop(["sdx-quota-a.service"])
        await collect_until(watch, all_in(["sdx-quota-a.service"], "inactive"))
    finally:
        watch.close()
        await mgr.unload(units)
