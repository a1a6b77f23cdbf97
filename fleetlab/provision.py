"""What `fleet-lab up` adds to a booted lab for its users (and the demo): a first image on every
node, and the checkout's commands and the proxy template where the example units look for them.

* The busybox image (`fleetctl image build-busybox`, from Debian's busybox-static), imported on
  every node with `fleetctl image import` as a user would, under the name ``busybox``: a
  container unit with ``Image=busybox`` runs on any node without a fetch.
* ``/usr/local/bin/{fleetctl,fleet-confd,fleet-run}`` in every node, links to the checkout's
  .venv (seen in the node through its overlay root), and ``/etc/fleet/nginx-web.conf.j2``:
  ``units/nginx-confd.service`` runs as shipped, and ``fleet-lab exec NODE fleetctl ...`` talks
  to the node's fleetd over its unix socket.

Both are idempotent: a node that has them already is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from .lab import Lab

IMAGE_NAME = "busybox"
COMMANDS = ("fleetctl", "fleet-confd", "fleet-run")
NGINX_TEMPLATE = "templates/nginx-web.conf.j2"
NODE_NGINX_TEMPLATE = "/etc/fleet/nginx-web.conf.j2"


def install_commands(lab: Lab) -> None:
    """The checkout's commands on every node's PATH and the nginx template in /etc/fleet."""
    venv_bin = lab.checkout / ".venv" / "bin"
    template = (lab.checkout / NGINX_TEMPLATE).read_text()
    for node in lab.nodes:
        root = Path(node.state.root)
        bindir = root / "usr/local/bin"
        bindir.mkdir(parents=True, exist_ok=True)
        for command in COMMANDS:
            link = bindir / command
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(venv_bin / command, link)
        dest = root / NODE_NGINX_TEMPLATE.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(template)


def nodes_with_image(lab: Lab, name: str = IMAGE_NAME) -> set[str]:
    """Machine IDs whose image store holds an image called `name` (as published in etcd)."""
    out = lab.fleetctl("images", "--output", "json", timeout=60).stdout
    return {r["machineID"] for r in json.loads(out or "[]")
            if any(name in (i.get("names") or []) for i in r.get("images", []))}


def provide_busybox(lab: Lab, echo: Callable[[str], None] = print) -> None:
    """Build the busybox image once (in the lab's state dir) and import it on every node that
    does not have it yet (fleetd must be registered on each)."""
    have = nodes_with_image(lab)
    missing = [n for n in lab.nodes if n.machine_id not in have]
    if not missing:
        echo(f"image {IMAGE_NAME}: already on every node")
        return
    rootfs = lab.names.state_dir / "busybox-image"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    lab.fleetctl("image", "build-busybox", str(rootfs))
    try:
        for node in missing:
            lab.fleetctl("image", "import", str(rootfs), "--name", IMAGE_NAME, "--machine", node.machine_id,
                         timeout=300)
            echo(f"image {IMAGE_NAME}: imported on {node.name}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
