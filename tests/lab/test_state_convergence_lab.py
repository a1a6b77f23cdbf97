"""Every field of a watched unit state converges to systemd's (issue 18's stale "not-found").

Against a real systemd 252 in one nspawn node (tests/_sdx_node.py, prefix `hf-sdx`).

The cause found: systemd declares a unit's `LoadState` constant on D-Bus, so its
`PropertiesChanged` signals carry ActiveState and SubState but never LoadState. A watch that
took the load state it did not receive from an earlier read (or, with no earlier read, assumed
"not-found") kept a wrong one for good whenever the load state changed without a daemon-reload:
a unit systemd loaded from its unit cache (fleetd skips the reload for new units), or a fetch of
the current state overtaken by a signal. fleetctl v1.0.0 then waited for `loaded` in vain.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from fleetd.agent.systemd import UnitSystemdState
from fleetd.unit.file import UnitFile

sys.path.insert(0, str(Path(__file__).parent))
from _sdx_node import manager_fixture, node_fixture  # noqa: E402

pytestmark = pytest.mark.lab


def service(description: str) -> str:
    return UnitFile.parse(f"[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep infinity\n").serialize()


node = node_fixture("hf-sdx", "the state convergence lab tests")
mgr = manager_fixture()


def systemd_says(node, name: str) -> UnitSystemdState:
    out = node.run("systemctl", "show", "-p", "LoadState,ActiveState,SubState", name).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return UnitSystemdState(name, props["LoadState"], props["ActiveState"], props["SubState"])


async def settled(watch, node, name: str, timeout: float = 10.0) -> UnitSystemdState:
    """The watch's latest state once it equals systemd's (systemctl show), or AssertionError
    with the last one seen. Signals only: the watch is read, systemd is asked by systemctl."""
    latest = None
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        truth = systemd_says(node, name)
        if latest == truth:
            return latest
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"the watch says {latest}, systemd says {truth}")
        try:
            latest = await watch.next(min(left, 0.5))
        except asyncio.TimeoutError:
            pass


async def test_load_state_converges_for_a_unit_loaded_without_a_reload(node, mgr):
    """Watched before it exists (not-found), then loaded by systemd's unit cache (no
    daemon-reload, so no refresh) and started: the load state must become "loaded"."""
    name = "hf-noreload.service"
    watch = await mgr.watch([name])
    try:
        first = await watch.next(5)
        assert first.load_state == "not-found"
        skipped = mgr.reloads_skipped
        await mgr.load({name: service("loaded from the unit cache")})
        assert mgr.reloads_skipped == skipped + 1, "the test needs the no-reload path"
        await mgr.start([name])
        st = await settled(watch, node, name)
        assert (st.load_state, st.active_state, st.sub_state) == ("loaded", "active", "running")
    finally:
        watch.close()


async def test_a_fetch_overtaken_by_a_signal_does_not_leave_a_guessed_load_state(node, mgr):
    """The agent adds a unit to the watch right after starting it; a signal for the unit that
    arrives while the watch reads its current state wins over that read. The signal has no
    LoadState: the watch must not make one up."""
    name = "hf-race.service"
    await mgr.load({name: service("raced")})
    await mgr.start([name])

    real_states = mgr.states
    raced = asyncio.Event()

    async def states_then_signal(names, **kw):
        answer = await real_states(names, **kw)
        if name in names and not raced.is_set():
            raced.set()  # once: signals for the unit arrive before the answer is used
            await mgr.restart([name])
            await asyncio.sleep(0.2)
        return answer

    mgr.states = states_then_signal
    watch = await mgr.watch([name])
    try:
        assert raced.is_set()
        st = await settled(watch, node, name)
        assert (st.load_state, st.active_state, st.sub_state) == ("loaded", "active", "running")
    finally:
        watch.close()
        mgr.states = real_states
