"""The demo: a lab cluster running the example units (the README's main job)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .lab import Lab, list_labs

REPO = Path(__file__).resolve().parent.parent
DEMO_UNITS = (
    "hello.service",
    "web@1.service", "web@2.service", "web@3.service",
    "web-discovery@1.service", "web-discovery@2.service", "web-discovery@3.service",
    "global-monitor.service",
)


def run_demo(name: str = "demo", nodes: int = 3, *, units_dir: Path = REPO / "units",
             echo: Callable[[str], None] = print, keep: bool = True) -> Lab:
    """Boot (or reuse) the lab, start the demo units, show the cluster. Returns the lab."""
    if name in list_labs():
        lab = Lab.attach(name)
        echo(f"lab {name}: already up, reusing it")
    else:
        echo(f"lab {name}: booting {nodes} nodes (systemd-nspawn, etcd, fleetd) ...")
        started = time.monotonic()
        lab = Lab(name, nodes=nodes).up(wait_fleetd=True)
        echo(f"lab {name}: up in {time.monotonic() - started:.1f}s")
    try:
        show = lambda *args: echo(lab.fleetctl(*args).stdout.rstrip())  # noqa: E731
        echo("$ fleetctl list-machines")
        show("list-machines")
        args = [str(units_dir / u) for u in DEMO_UNITS]
        echo("$ fleetctl start " + " ".join(DEMO_UNITS))
        started = time.monotonic()
        show("start", *args)
        echo(f"(all started in {time.monotonic() - started:.2f}s)")
        echo("$ fleetctl list-unit-files")
        show("list-unit-files")
        echo("$ fleetctl list-units")
        show("list-units")
        node = lab.nodes[0]
        echo(f"$ fleet-lab exec {node.name} -- systemctl list-units 'web*' 'hello*' 'global*'")
        echo(node.exec(["systemctl", "list-units", "--no-pager", "web*", "hello*", "global*"]).stdout.rstrip())
    except BaseException:
        if not keep:
            lab.down()
        raise
    if keep:
        echo("")
        echo(f"The lab keeps running. Try: eval \"$(fleet-lab env --name {name})\"; fleetctl list-units")
        echo(f"Remove it with: fleet-lab down --name {name}")
    else:
        lab.down()
    return lab
