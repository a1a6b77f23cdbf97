"""What fleetd does NOT import at start-up: libraries used only on some paths are imported when
first needed, because each one's module code stays in every idle fleetd's RSS
(docs/performance.md, "footprint" and "fleetd idle RSS, session 10"). In a fresh interpreter:
fleetd's daemon and every fleetd module its start-up wiring imports (read from fleetd/daemon.py,
so a new component is covered), then the libraries below must be absent; then the path that
needs one (the DNS responder's first question) imports it and still answers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fleetd.daemon

# library -> the path that imports it when first needed
LAZY = {
    "jinja2": "a container unit rendered (fleetd/container/render.py)",
    "prometheus_client": "the first /metrics scrape (fleetd/api/metrics.py)",
    "dnslib": "the DNS responder's first packet that is no cache hit (fleetd/discovery/dns.py)",
    "tarfile": "an image imported, exported or read from a tarball (fleetd/images/store.py, oci.py)",
}


def wiring_modules() -> list[str]:
    """fleetd's modules the daemon imports, at the top or inside its start-up methods."""
    tree = ast.parse(Path(fleetd.daemon.__file__).read_text())
    found = {"fleetd.daemon", "fleetd.api.server"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleetd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fleetd"))
    return sorted(found)


# a question for x.fleet.local (A): header id 0x1234, RD, one question; then the name, A, IN
QUERY = bytes.fromhex("12340100000100000000000001780566" "6c656574056c6f63616c0000010001")

SCRIPT = """
import importlib, sys
for name in {modules!r}:
    importlib.import_module(name)
early = sorted(lib for lib in {lazy!r} if lib in sys.modules)
assert not early, f"imported at fleetd's start-up: {{early}}"
from fleetd.discovery.dns import DnsResponder
from fleetd.discovery.view import ServiceView
responder = DnsResponder(lambda: ServiceView())
assert "dnslib" not in sys.modules, "the responder's construction imported dnslib"
done, reply = responder.answer_now({query!r})
assert done and reply[:2] == b"\\x12\\x34" and reply[3] & 0x0F == 3, reply  # NXDOMAIN, from the view
assert "dnslib" in sys.modules
print("ok")
"""


def test_start_up_wiring_leaves_path_only_libraries_unimported():
    modules = wiring_modules()
    assert "fleetd.discovery.dns" in modules and "fleetd.container.node" in modules  # the wiring was read
    script = SCRIPT.format(modules=modules, lazy=sorted(LAZY), query=QUERY)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
