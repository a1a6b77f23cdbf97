"""Service discovery on a real 3-node lab (issue 12's acceptance list).

Three busybox web containers declare `[X-Service] Name=web` (with a command check); fleetctl
lists their endpoints, `dig` (bind9-dnsutils) asks each node's fleetd DNS, a container on a
node resolves `web.fleet.local` by name through the resolv.conf fleetd gives it, a stopped or
failing instance leaves DNS and comes back, fleet-confd drives a real nginx, a killed node's
endpoints vanish with its lease, and DNS keeps answering while etcd is down.

Times are printed (not asserted): tests check correctness; `fleet-lab bench discovery` measures.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from fleetd.images import build_busybox_image
from fleetlab.config import ETCD_UNIT, LAB_API_PORT
from fleetlab.sysutil import eventually

pytest_plugins = ["fleetlab.pytest_plugin"]
pytestmark = pytest.mark.lab(nodes=3, wait_fleetd=True)

DOMAIN = "fleet.local"
PAGE = b"fleet busybox image"
REPO = Path(__file__).resolve().parents[2]
WEB = ["web@1.service", "web@2.service", "web@3.service"]
WEB_TEMPLATE = """\
[Unit]
Description=web %i

[X-Container]
Image=busybox
Command=httpd -f -p 8080 -h /www
Port=8080
StopTimeout=2

[X-Fleet]
Conflicts=web@*.service

[X-Service]
Name=web
Port=8080
Protocol=http
Tags=lab,%p
Check=/bin/sh -c "test ! -e /run/web-sick && exec /bin/busybox wget -q -O /dev/null http://127.0.0.1:8080/"
CheckInterval=500ms
Fall=2
"""


def dig(node, *args: str, tcp: bool = False) -> list[str]:
    cmd = ["dig", f"@{node.ip}", "+short", "+tries=1", "+time=2", *(["+tcp"] if tcp else []), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    return sorted(line for line in out.stdout.splitlines() if line and not line.startswith(";"))


def endpoints(lab, service: str = "web", *extra: str) -> list[dict]:
    return json.loads(lab.fleetctl("list-endpoints", service, "--output", "json", *extra).stdout)


def passing_hosts(lab, service: str = "web") -> list[str]:
    return sorted(e["host"] for e in endpoints(lab, service) if e["health"] == "passing")


def node_of(lab, unit: str):
    found = [e for e in endpoints(lab) if e["unit"] == unit]
    return next(n for n in lab.nodes if n.machine_id == found[0]["machineID"]) if found else None


def http_get(url: str, timeout: float = 3.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read(), response.headers
    except OSError:
        return None, None


@pytest.fixture(scope="module")
def web(lab, tmp_path_factory):
    """busybox imported on node 1; web@1..3 started (one per node: Conflicts)."""
    tmp = tmp_path_factory.mktemp("discovery")
    root = build_busybox_image(tmp / "rootfs")
    lab.fleetctl("image", "import", str(root), "--name", "busybox", "--machine", lab.node(1).machine_id, timeout=120)
    template = tmp / "web@.service"
    template.write_text(WEB_TEMPLATE)
    lab.fleetctl("submit", str(template))
    started = time.monotonic()
    lab.fleetctl("start", *WEB, timeout=180)
    eventually(lambda: len(passing_hosts(lab)) == 3, 60, "three passing web endpoints")
    print(f"\nthree web containers started and published in {time.monotonic() - started:.1f}s")
    return tmp


def test_malformed_service_is_refused_at_submit_with_nothing_written(lab, tmp_path):
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\n\n[X-Service]\nName=web\nPort=99999\n")
    result = lab.fleetctl("submit", str(bad), check=False)
    assert result.returncode == 1
    assert "unit bad.service: [X-Service] service 'web': Port= '99999' is not a port number" in result.stderr
    assert "bad.service" not in lab.fleetctl("list-unit-files").stdout


def test_three_endpoints_in_fleetctl_dns_and_by_name_from_a_container(lab, web):
    ips = sorted(n.ip for n in lab.nodes)
    rows = endpoints(lab)
    assert sorted(e["unit"] for e in rows) == WEB and sorted(e["host"] for e in rows) == ips
    assert all(e["health"] == "passing" and e["port"] == 8080 and e["tags"] == ["lab", "web"] for e in rows)
    for e in rows:  # the endpoints answer HTTP
        body, _ = http_get(f"http://{e['host']}:8080/")
        assert body and PAGE in body, e
    table = lab.fleetctl("list-endpoints", "web").stdout
    assert table.splitlines()[0].split() == ["SERVICE", "UNIT", "MACHINE", "ADDRESS", "PORT", "HEALTH", "TAGS"]
    assert lab.fleetctl("list-services", "--no-legend").stdout.split() == ["web", "3/3"]
    api = lab.fleetctl_api_args(2)
    assert sorted(e["host"] for e in json.loads(lab.fleetctl(*api, "list-endpoints", "web", "--output",
                                                               "json").stdout)) == ips
    for node in lab.nodes:  # every node's fleetd answers, over UDP and TCP
        assert dig(node, f"web.{DOMAIN}") == ips
        assert dig(node, f"web.{DOMAIN}", tcp=True) == ips
    srv = dig(lab.node(1), "SRV", f"_web._tcp.{DOMAIN}")
    assert srv == sorted(f"10 10 8080 web-{i}.web.{DOMAIN}." for i in (1, 2, 3))
    one = node_of(lab, "web@2.service")
    assert dig(lab.node(3), f"web-2.web.{DOMAIN}") == [one.ip]
    assert dig(lab.node(1), f"nothing.{DOMAIN}") == []

    # a container resolves web.fleet.local through its node's fleetd (resolv.conf) and fetches it
    fetch = web / "fetch.service"
    fetch.write_text("[X-Container]\nImage=busybox\nCommand=sh -c "
                     f"\"cat /etc/resolv.conf; wget -q -O - http://web.{DOMAIN}:8080/ && sleep 100000\"\n")
    try:
        lab.fleetctl("start", str(fetch), timeout=120)
        where = next(n for n in lab.nodes
                     if n.exec(["systemctl", "is-active", "fetch.service"], check=False).stdout.strip() == "active")
        log = eventually(lambda: (out := where.logs("fetch.service")) and PAGE.decode() in out and out, 30,
                         "the container to fetch web by name")
        assert f"nameserver {where.ip}" in log
    finally:
        lab.fleetctl("destroy", "fetch.service", check=False)


def test_stopped_instance_leaves_and_comes_back(lab, web):
    node = node_of(lab, "web@2.service")
    started = time.monotonic()
    lab.fleetctl("stop", "--no-block", "web@2.service")
    eventually(lambda: node.ip not in passing_hosts(lab), 10, "web@2 to leave etcd", interval=0.05)
    gone_etcd = time.monotonic() - started
    eventually(lambda: node.ip not in dig(lab.node(1), f"web.{DOMAIN}"), 10, "web@2 to leave DNS", interval=0.05)
    print(f"\nfleetctl stop --no-block -> gone from etcd {gone_etcd:.2f}s, from DNS {time.monotonic() - started:.2f}s "
          "(each probe is a fleetctl or dig process: an upper bound)")
    assert [e["unit"] for e in endpoints(lab)] == ["web@1.service", "web@3.service"]
    # withdrawn as the unit stops: when it begins to stop (deactivating), at the latest within
    # 1 s of systemd reporting it stopped (tini, the container's PID 1, forwards SIGTERM to
    # httpd, so the stop itself is quick now)
    journal = node.exec(["journalctl", "--no-pager", "-o", "short-unix", "-u", "fleetd.service",
                         "-u", "web@2.service"]).stdout
    withdrew = [float(line.split()[0]) for line in journal.splitlines() if "withdrew" in line and "web@2" in line]
    stopped = [float(line.split()[0]) for line in journal.splitlines() if "Stopped web@2.service" in line]
    assert withdrew and stopped, journal[-2000:]
    print(f"withdrawn {stopped[-1] - withdrew[-1]:+.3f}s before systemd reported web@2 stopped")
    assert withdrew[-1] - stopped[-1] < 1.0
    lab.fleetctl("start", "web@2.service", timeout=120)
    eventually(lambda: len(dig(lab.node(1), f"web.{DOMAIN}")) == 3, 20, "web@2 back in DNS")


def test_failing_check_withdraws_and_recovery_restores(lab, web):
    node = node_of(lab, "web@1.service")
    node.exec(["touch", "/run/web-sick"])
    try:
        started = time.monotonic()
        eventually(lambda: node.ip not in dig(lab.node(2), f"web.{DOMAIN}"), 15, "the failing endpoint to leave DNS")
        print(f"\ncheck fails -> out of DNS in {time.monotonic() - started:.2f}s (interval 0.5s x fall 2)")
        health = {e["unit"]: e["health"] for e in endpoints(lab)}
        assert health == {"web@1.service": "critical", "web@2.service": "passing", "web@3.service": "passing"}
        assert lab.fleetctl("list-services", "--no-legend").stdout.split() == ["web", "2/3"]
    finally:
        node.exec(["rm", "-f", "/run/web-sick"])
    eventually(lambda: node.ip in dig(lab.node(2), f"web.{DOMAIN}"), 15, "the recovered endpoint back in DNS")
    assert passing_hosts(lab) == sorted(n.ip for n in lab.nodes)


def _journal_count(node, unit: str, pattern: str) -> int:
    return len(re.findall(pattern, node.logs(unit)))


def test_confd_drives_a_real_nginx(lab, web):
    node = lab.node(1)
    confd = f"{REPO}/.venv/bin/fleet-confd"
    template = f"{REPO}/templates/nginx-web.conf.j2"
    conf = "/run/nginx-web/nginx.conf"
    check = "nginx -t -q -e stderr -c {src}"
    node.exec(["mkdir", "-p", "/run/nginx-web"])
    node.exec([confd, "--once", "-t", f"{template}:{conf}", "--check-cmd", check], timeout=60)
    node.exec(["systemd-run", "--unit=nginx-web", "/usr/sbin/nginx", "-e", "stderr", "-c", conf,
               "-g", "daemon off;"])
    node.exec(["systemd-run", "--unit=confd-web", confd, "-t", f"{template}:{conf}", "--check-cmd", check,
               "--reload-cmd", f"nginx -e stderr -c {conf} -s reload"])
    try:
        def upstreams() -> set[str]:
            seen = set()
            for _ in range(9):
                body, headers = http_get(f"http://{node.ip}/")
                if body and PAGE in body:
                    seen.add(headers["X-Upstream"])
            return seen

        everyone = {f"{n.ip}:8080" for n in lab.nodes}
        eventually(lambda: upstreams() == everyone, 30, "nginx to reach all three web containers")
        eventually(lambda: node.exec(["systemctl", "is-active", "confd-web"], check=False).stdout.strip() == "active",
                   10, "fleet-confd running")
        time.sleep(1.0)  # fleet-confd has rendered the current endpoints (no change yet)
        writes, reloads = _journal_count(node, "confd-web", r"wrote "), _journal_count(node, "confd-web", r"reload: ")
        stopped = node_of(lab, "web@3.service")
        lab.fleetctl("stop", "web@3.service")
        eventually(lambda: f"{stopped.ip}:8080" not in node.exec(["cat", conf]).stdout, 10, "the upstream file rewritten")
        time.sleep(2.0)  # let any extra rewrite show
        assert _journal_count(node, "confd-web", r"wrote ") == writes + 1
        assert _journal_count(node, "confd-web", r"reload: ") == reloads + 1
        eventually(lambda: upstreams() == everyone - {f"{stopped.ip}:8080"}, 15, "nginx without the stopped one")

        # a template whose check fails: the old file stays, and the command says why
        before = node.exec(["cat", conf]).stdout
        node.exec(["sh", "-c", f"sed 's/upstream web {{/upstream web {{ bogus_directive;/' {template} "
                               "> /run/nginx-web/broken.j2"])
        result = node.exec([confd, "--once", "-t", f"/run/nginx-web/broken.j2:{conf}", "--check-cmd", check],
                           check=False, timeout=60)
        assert result.returncode == 1
        assert f"{conf}: check command failed (exit status 1: " in result.stderr
        assert 'unknown directive "bogus_directive"' in result.stderr and "the old file stays" in result.stderr
        assert node.exec(["cat", conf]).stdout == before
    finally:
        node.exec(["systemctl", "stop", "confd-web", "nginx-web"], check=False)
        lab.fleetctl("start", "web@3.service", timeout=120)
    eventually(lambda: len(passing_hosts(lab)) == 3, 30, "web@3 back")


def test_fleetctl_run_service_declares_a_service(lab, web):
    try:
        lab.fleetctl("run", "api", "--image", "busybox", "--port", "9090", "--service", "api", "--",
                     "httpd", "-f", "-p", "9090", "-h", "/www", timeout=120)
        (row,) = eventually(lambda: [e for e in endpoints(lab, "api") if e["health"] == "passing"], 20, "api endpoint")
        assert row["port"] == 9090 and row["unit"] == "api.service"
        assert dig(lab.node(1), "SRV", f"_api._tcp.{DOMAIN}") == [f"10 10 9090 api.api.{DOMAIN}."]
    finally:
        lab.fleetctl("destroy", "api.service", check=False)
    eventually(lambda: endpoints(lab, "api") == [], 10, "api withdrawn when destroyed")


def test_classic_sidekick_still_works(lab, web):
    """units/web-sidekick@.service as shipped: next to web@1 (MachineOf=), a SkyDNS key under its
    own lease while it runs, deleted when web@1 stops (BindsTo=)."""
    from fleetlab.etcd import etcdctl

    key = "/skydns/local/fleet/web/sidekick-1"

    def value() -> dict | None:
        out = etcdctl(lab.etcd_endpoints, "get", key, "--print-value-only", tls=lab.etcd_tls,
                      check=False).stdout.strip()
        return json.loads(out) if out else None

    host = node_of(lab, "web@1.service")
    if not lab.insecure:  # the sidekick's etcdctl reads its TLS settings from /etc/environment
        from fleetlab.config import NODE_CA, NODE_CERT, NODE_KEY

        env = (f"ETCDCTL_ENDPOINTS={','.join(lab.etcd_endpoints)}\nETCDCTL_CACERT={NODE_CA}\n"
               f"ETCDCTL_CERT={NODE_CERT}\nETCDCTL_KEY={NODE_KEY}\n")
        for node in lab.nodes:
            node.exec(["sh", "-c", f"printf '{env}' >> /etc/environment"])
    try:
        lab.fleetctl("start", str(REPO / "units" / "web-sidekick@.service").replace("@.", "@1."), timeout=120)
        found = eventually(value, 20, "the sidekick's key")
        assert found == {"host": host.ip, "port": 8080, "ttl": 10}
        lab.fleetctl("stop", "web@1.service")
        eventually(lambda: value() is None, 20, "the key deleted when web@1 stops")
    finally:
        lab.fleetctl("destroy", "web-sidekick@1.service", check=False)
        lab.fleetctl("start", "web@1.service", timeout=120)
    eventually(lambda: len(passing_hosts(lab)) == 3, 30, "web@1 back")


def test_killed_node_endpoints_vanish_with_its_lease(lab, web):
    victim = lab.node(3)
    assert victim.ip in passing_hosts(lab)
    started = time.monotonic()
    victim.kill()
    eventually(lambda: victim.ip not in dig(lab.node(1), f"web.{DOMAIN}"), 30, "the dead node's endpoint to go")
    print(f"\nnode killed -> endpoint gone from DNS in {time.monotonic() - started:.2f}s (agent_ttl 5s)")
    assert victim.ip not in [e["host"] for e in endpoints(lab)]


def test_dns_keeps_answering_while_etcd_is_down(lab, web):
    node = lab.node(1)
    expected = dig(node, f"web.{DOMAIN}")
    assert len(expected) == 2
    members = [n for n in lab.nodes if n.running and n.state.etcd_member]
    for n in members:
        n.exec(["systemctl", "stop", ETCD_UNIT])
    try:
        for _ in range(3):
            assert dig(node, f"web.{DOMAIN}") == expected
            assert dig(lab.node(2), "SRV", f"_web._tcp.{DOMAIN}", tcp=True) != []
            time.sleep(1.0)
    finally:
        for n in members:
            # --no-block: with node 3 dead, one member alone waits for the other to be ready
            n.exec(["systemctl", "start", "--no-block", ETCD_UNIT], check=False, timeout=60)
