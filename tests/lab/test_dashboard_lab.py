"""The web dashboard in a real browser (Debian's headless Chromium, driven by Selenium) against a
real 3-node lab: machines and units listed, live updates without reloading, a unit's status and
journal through the API's relay, an operator's stop reaching systemd, a read-only client without
buttons, and a killed node turning gone while its units move.

Screenshots are saved under the session's tmp path (the folder is printed); figures printed.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _browser import chromium, screenshot, wait_for
from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
# plaintext TCP API (--insecure): the browser has no client certificate; roles come from api_tcp_role
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True, agent_ttl="3s", insecure=True)

UNIT = '[Unit]\nDescription={desc}\n\n[Service]\nExecStart=/bin/sh -c "while true; do echo {desc}; sleep 2; done"\n'
BROKEN = "[Unit]\nDescription=exits at once\n\n[Service]\nExecStart=/bin/sh -c 'echo giving up; exit 3'\n"

ROWS_JS = """
return Array.from(document.querySelectorAll('#unit-rows tr')).map(function (tr) {
  return {name: tr.id.slice(2), active: tr.dataset.active, current: tr.dataset.current,
          machine: tr.dataset.machine, buttons: tr.querySelectorAll('button[data-action]').length};
});
"""


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"dashboard screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def units_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dashboard-units")


def write_unit(folder: Path, name: str, text: str | None = None) -> str:
    path = folder / name
    path.write_text(text if text is not None else UNIT.format(desc=name))
    return str(path)


def unit_rows(driver) -> dict[str, dict]:
    return {r["name"]: r for r in driver.execute_script(ROWS_JS)}


def machine_classes(driver) -> dict[str, str]:
    return driver.execute_script(
        "var o = {}; document.querySelectorAll('#machine-rows tr').forEach(function (tr) {"
        " o[tr.id.slice(2)] = tr.className; }); return o;")


def systemctl(node, *args: str) -> str:
    return node.exec(["systemctl", *args], check=False).stdout.strip()


def node_of(lab, machine_id: str):
    return next(n for n in lab.nodes if n.machine_id == machine_id)


def http(method: str, url: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_lists_machines_and_units(lab, browser, shots, units_dir):
    url = lab.dashboard_url()
    assert url == f"http://{lab.node(1).ip}:54728/"
    assert lab.status()["dashboard"] == url
    printed = subprocess.run([str(lab.checkout / ".venv" / "bin" / "fleet-lab"), "status", "--name", lab.name],
                             capture_output=True, text=True, check=True).stdout
    assert f"dashboard: {url} " in printed
    paths = [write_unit(units_dir, f"web{i}.service") for i in range(1, 5)]
    lab.fleetctl("start", *paths)
    lab.fleetctl("start", "--no-block", write_unit(units_dir, "broken.service", BROKEN))
    browser.get(url)
    ids = {n.machine_id for n in lab.nodes}
    wait_for(lambda: set(machine_classes(browser)) == ids, what="every machine listed")
    rows = wait_for(lambda: (r := unit_rows(browser)) and all(
        r.get(f"web{i}.service", {}).get("active") == "active" for i in range(1, 5)) and r, what="units active")
    assert set(rows) >= {f"web{i}.service" for i in range(1, 5)} | {"broken.service"}
    for name, row in rows.items():
        if name.startswith("web"):
            assert row["current"] == "launched" and row["machine"] in ids and row["buttons"] > 0
    wait_for(lambda: unit_rows(browser)["broken.service"]["active"] == "failed", what="broken.service failed")
    assert next(iter(unit_rows(browser))) == "broken.service"  # failed first, without a reload
    text = browser.find_element("id", "machines").text
    for node in lab.nodes:
        assert node.ip in text and f"hostname={node.name}" in text
    assert text.count("leader") == 1
    assert browser.find_element("id", "live").text == "live"
    screenshot(browser, shots, "01-overview")


def test_started_unit_appears_active_without_reload(lab, browser, shots, units_dir):
    browser.get(lab.dashboard_url())
    wait_for(lambda: browser.find_element("id", "live").text == "live", what="event stream connected")
    browser.execute_script("window.__notReloaded = 42;")
    assert "late.service" not in unit_rows(browser)
    lab.fleetctl("start", write_unit(units_dir, "late.service"))  # returns once the unit is launched
    returned = time.monotonic()
    wait_for(lambda: unit_rows(browser).get("late.service", {}).get("active") == "active", timeout=10,
             interval=0.01, what="late.service active in the page")
    seen = time.monotonic() - returned
    assert browser.execute_script("return window.__notReloaded;") == 42  # the same page, updated in place
    print(f"figure: unit active in the page {seen * 1000:.0f} ms after `fleetctl start` returned (no reload)")
    screenshot(browser, shots, "02-started-live")


def test_unit_page_shows_status_and_journal_through_the_relay(lab, browser, shots):
    first = lab.node(1).machine_id
    browser.get(lab.dashboard_url())
    rows = wait_for(lambda: unit_rows(browser), what="unit rows")
    # a unit on another machine than the one serving the page: its status comes through the relay
    remote = sorted(n for n, r in rows.items() if n.startswith("web") and r["machine"] != first)
    name = remote[0] if remote else "web1.service"
    browser.get(lab.dashboard_url() + f"dashboard/units/{name}")
    wait_for(lambda: "Active: active (running)" in browser.find_element("id", "unit-status").text,
             what=f"systemctl status of {name}")
    wait_for(lambda: name in browser.find_element("id", "unit-journal").text, what=f"journal of {name}")
    assert "ExecStart=" in browser.find_element("id", "unit-file").text
    screenshot(browser, shots, "03-unit-page")


def test_operator_stop_stops_the_unit_in_systemd(lab, browser, shots):
    browser.get(lab.dashboard_url())
    row = wait_for(lambda: unit_rows(browser).get("web1.service"), what="web1.service row")
    node = node_of(lab, row["machine"])
    assert systemctl(node, "is-active", "web1.service") == "active"
    button = browser.find_element("css selector", '#u-web1\\.service button[data-action$="/stop"]')
    button.click()
    alert = wait_for(lambda: browser.switch_to.alert, what="the confirmation dialog")
    assert "Stop web1.service?" in alert.text
    alert.accept()
    eventually(lambda: systemctl(node, "is-active", "web1.service") == "inactive", timeout=20)
    wait_for(lambda: unit_rows(browser)["web1.service"]["current"] == "loaded", what="web1.service loaded in the page")
    assert unit_rows(browser)["web1.service"]["active"] == "inactive"
    screenshot(browser, shots, "04-after-stop")
    # dismissing the confirmation changes nothing
    browser.find_element("css selector", '#u-web2\\.service button[data-action$="/stop"]').click()
    wait_for(lambda: browser.switch_to.alert, what="the confirmation dialog").dismiss()
    time.sleep(1)
    assert unit_rows(browser)["web2.service"]["current"] == "launched"


def test_read_only_client_sees_no_action_buttons(lab, browser, shots):
    node = lab.node(3)
    url = lab.dashboard_url(3)
    node.exec(["sh", "-c", "echo api_tcp_role=read-only >> /etc/fleet/fleet.conf"])
    try:
        node.exec(["systemctl", "restart", "fleetd.service"], timeout=120)
        eventually(lambda: 'data-role="read-only"' in http("GET", url)[1], timeout=60)
        browser.get(url)
        wait_for(lambda: "web2.service" in unit_rows(browser), what="units listed read-only")
        assert browser.find_elements("css selector", "button[data-action]") == []
        assert browser.find_element("id", "role").text == "read-only"
        screenshot(browser, shots, "05-read-only")
        status, body = http("POST", url + "dashboard/actions/unit/web2.service/stop", {"X-Fleet-Dashboard": "1"})
        assert status == 403 and json.loads(body)["error"]["code"] == 403
        assert systemctl(node_of(lab, unit_rows(browser)["web2.service"]["machine"]), "is-active", "web2.service") == "active"
    finally:
        node.exec(["sed", "-i", "/^api_tcp_role=/d", "/etc/fleet/fleet.conf"])
        node.exec(["systemctl", "restart", "fleetd.service"], timeout=120)
    eventually(lambda: 'data-role="operator"' in http("GET", url)[1], timeout=60)


def test_killed_node_turns_gone_and_its_units_move(lab, browser, shots, units_dir):
    browser.get(lab.dashboard_url())
    victim = lab.node(2)  # the page is served by node 1
    rows = wait_for(lambda: unit_rows(browser), what="unit rows")
    if not any(r["machine"] == victim.machine_id for r in rows.values()):  # spread: the victim gets some
        lab.fleetctl("start", *[write_unit(units_dir, f"more{i}.service") for i in range(1, 4)])
    moving = wait_for(lambda: sorted(n for n, r in unit_rows(browser).items()
                                     if r["machine"] == victim.machine_id and r["current"] == "launched"),
                      what="a launched unit on the victim")
    browser.execute_script("window.__notReloaded = 7;")
    killed = time.monotonic()
    victim.kill()
    wait_for(lambda: "gone" in machine_classes(browser).get(victim.machine_id, ""), timeout=60,
             what="the killed machine shown gone")
    gone_after = time.monotonic() - killed

    def moved() -> bool:
        now = unit_rows(browser)
        return all(now[n]["machine"] not in ("", victim.machine_id) and now[n]["active"] == "active" for n in moving)

    wait_for(moved, timeout=90, what=f"{', '.join(moving)} active on other machines")
    moved_after = time.monotonic() - killed
    assert browser.execute_script("return window.__notReloaded;") == 7
    for name in moving:
        target = node_of(lab, unit_rows(browser)[name]["machine"])
        assert systemctl(target, "is-active", name) == "active"
    print(f"figure: killed machine gone in the page after {gone_after:.1f} s; {len(moving)} unit(s) active "
          f"elsewhere after {moved_after:.1f} s (agent_ttl 3s)")
    screenshot(browser, shots, "06-node-gone")
    browser.get(lab.dashboard_url() + "dashboard/placement")
    wait_for(lambda: browser.find_elements("css selector", "#placement-rows tr"), what="placement rows")
    assert "gone" in browser.find_element("id", "placement").text
    screenshot(browser, shots, "07-placement")
