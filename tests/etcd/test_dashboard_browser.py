"""The dashboard with 1,000 units in headless Chromium: time to first render and an update's
latency, printed (not asserted). A real fleetd API and engine on a real etcd; 10 simulated agents
(fleetlab/testing/simagent.py: real machine records, watches and state publishing) run the units.

    .venv/bin/python -m pytest -q -s tests/test_dashboard_browser.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from _api_server import ThreadedApiServer
from _browser import chromium, screenshot, wait_for
from fleetd.engine.leader import Engine
from fleetd.model import DesiredState, Machine, Resources, Unit, UnitState
from fleetlab.testing.simagent import SimulatedAgent
from fleetd.unit.file import UnitFile

UNITS = 1000
MACHINES = 10
UPDATES = 7

OBSERVE_JS = """
window.__changes = {};
new MutationObserver(function (records) {
  records.forEach(function (r) {
    r.addedNodes.forEach(function (n) {
      if (n.id && n.dataset && n.dataset.active) window.__changes[n.id + ':' + n.dataset.active] = Date.now();
    });
  });
}).observe(document.getElementById('unit-rows'), {childList: true});
"""


def unit(i: int) -> Unit:
    text = f"[Unit]\nDescription=dashboard unit {i}\n\n[Service]\nExecStart=/bin/sleep infinity\n"
    return Unit(f"dash-{i:04d}.service", UnitFile.parse(text), DesiredState.LAUNCHED)


@pytest.fixture
def thousand(etcd_settings, tmp_path):
    with ThreadedApiServer(etcd_settings, tmp_path, Machine("0" * 32, "127.0.0.1")) as server:
        state: dict = {}

        async def start() -> None:
            reg = server.registry
            agents = [SimulatedAgent(reg, Machine(f"{i:032x}", f"10.1.0.{i}", {"rack": f"r{i % 3}"},
                                                  capacity=Resources(4, 8 << 30)), ttl=30.0)
                      for i in range(1, MACHINES + 1)]
            for agent in agents:
                await agent.start()
            engine = Engine(reg, agents[0].machine.id, interval=1.0, lease_ttl=30.0)  # long leases: the host is shared
            state["tasks"] = [asyncio.create_task(engine.run())]
            state["agents"] = agents
            units = [unit(i) for i in range(UNITS)]
            await reg.create_units(units)
            state["units"] = units
            async with asyncio.timeout(120):
                while sum(a.active for a in agents) < UNITS:
                    await asyncio.sleep(0.2)

        async def stop() -> None:
            for task in state.get("tasks", []):
                task.cancel()
            await asyncio.gather(*state.get("tasks", []), return_exceptions=True)
            for agent in state.get("agents", []):
                await agent.stop()

        try:
            server.run(start(), timeout=180)
            yield server, state
        finally:
            server.run(stop())


@pytest.mark.deep
def test_thousand_units_first_render_and_update_latency(thousand, tmp_path):
    server, state = thousand
    url = server.tcp_endpoint + "/"
    driver = chromium()
    try:
        started = time.perf_counter()
        driver.get(url)  # returns after the load event
        loaded = time.perf_counter() - started
        rows = driver.execute_script("return document.querySelectorAll('#unit-rows tr').length")
        assert rows == UNITS
        nav = driver.execute_script(
            "var n = performance.getEntriesByType('navigation')[0];"
            "return {ttfb: n.responseStart - n.requestStart, response: n.responseEnd - n.requestStart,"
            " dcl: n.domContentLoadedEventEnd - n.startTime, load: n.loadEventEnd - n.startTime,"
            " bytes: n.transferSize};")
        paint = driver.execute_script(
            "var p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null;")
        started = time.perf_counter()
        driver.get(url)  # again: the server's copy of the cluster is warm now
        warm = time.perf_counter() - started
        warm_nav = driver.execute_script(
            "var n = performance.getEntriesByType('navigation')[0];"
            "return {response: n.responseEnd - n.requestStart, dcl: n.domContentLoadedEventEnd - n.startTime, load: n.loadEventEnd - n.startTime};")
        wait_for(lambda: driver.find_element("id", "live").text == "live", what="event stream connected")
        driver.execute_script(OBSERVE_JS)

        agents = state["agents"]
        by_machine = {a.machine.id: a for a in agents}
        latencies = []
        for target in state["units"][:UPDATES]:
            record = server.run(server.registry.unit_records([target.name]))[target.name]
            agent = by_machine[record.placement.machine_id]
            failed = UnitState(target.name, agent.machine.id, target.hash, "loaded", "failed", "failed", "launched")
            sent = time.time()
            server.run(server.registry.publish_states([failed], agent.lease_id))
            key = f"u-{target.name}:failed"
            seen = wait_for(lambda: driver.execute_script(f"return window.__changes['{key}'] || 0;"), timeout=10,
                            interval=0.01, what=f"{target.name} failed in the page")
            latencies.append(seen / 1000 - sent)
        first = driver.execute_script("return document.querySelector('#unit-rows tr').id")
        assert first.startswith("u-dash-") and "failed" in driver.find_element("id", first).get_attribute("class")
        shots = tmp_path / "dashboard-screenshots"
        screenshot(driver, shots, "thousand-units")

        started = time.perf_counter()
        driver.get(server.tcp_endpoint + "/dashboard/placement")
        placement_loaded = time.perf_counter() - started
        assert driver.execute_script("return document.querySelectorAll('#placement-rows tr').length") == UNITS
    finally:
        driver.quit()
    fcp = f"{paint:.0f} ms" if paint is not None else "n/a"
    print(f"\nfigure: dashboard with {UNITS} units on {MACHINES} machines: first render, cold (driver.get to load) "
          f"{loaded * 1000:.0f} ms; server response {nav['response']:.0f} ms (first byte {nav['ttfb']:.0f} ms, "
          f"{nav['bytes'] / 1024:.0f} KiB); DOMContentLoaded {nav['dcl']:.0f} ms; load {nav['load']:.0f} ms; "
          f"first contentful paint {fcp}")
    print(f"figure: same page again (warm): driver.get to load {warm * 1000:.0f} ms; server response "
          f"{warm_nav['response']:.0f} ms; DOMContentLoaded {warm_nav['dcl']:.0f} ms; load {warm_nav['load']:.0f} ms")
    print(f"figure: update latency (state written to etcd -> row replaced in the page), {UPDATES} updates: "
          f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"figure: placement view ({UNITS} x {MACHINES}) load {placement_loaded * 1000:.0f} ms")
