"""The checkout's Python packages byte-compiled on the host before a lab's nodes start fleetd.

A node sees the checkout through a read-only bind (fleetlab/node.py), so a fleetd there cannot
write ``__pycache__``: with no .pyc on the host it compiled every one of its modules from source
at every start, which an installed fleetd never does (pip writes the .pyc files at install).
That cost the lab's fleetd ~2 MB of idle RSS (the compiler's garbage left in the heap) and
start-up CPU, in `fleet-lab bench footprint` too (docs/performance.md, "fleetd idle RSS,
session 10"). Up-to-date .pyc files are left as they are, so a second lab costs a few stats.
"""

from __future__ import annotations

import compileall
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ("fleetd", "fleetctl", "fleetlab")


def compile_checkout(checkout: Path, packages: tuple[str, ...] = PACKAGES) -> None:
    """Write the missing or stale .pyc files of `packages` under `checkout` (for this Python,
    the one the checkout's .venv runs the nodes' fleetd with). A file that does not compile is
    only logged: fleetd reports it when it imports the module."""
    for package in packages:
        path = checkout / package
        if path.is_dir() and not compileall.compile_dir(str(path), quiet=2):
            log.warning("%s: some modules did not byte-compile", path)
