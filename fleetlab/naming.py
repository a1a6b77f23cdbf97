"""Names of everything a lab creates, derived from the lab name and checked for safety.

Every interface, namespace, mount and cgroup of lab LAB carries LAB in its name, so two labs
with different names never collide, and `down` can recognise what is its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fleetd.errors import LabError

LAB_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,11}")
IFNAMSIZ = 15  # longest Linux interface name
RUN_DIR = Path("/run/fleetlab")
NODE_IFNAME = "eth0"  # the node's end of its veth pair, inside its own netns
MAX_NODES = 200  # node addresses are .11 .. .210 of the lab's /24


def check_lab_name(name: str) -> str:
    if not LAB_NAME_RE.fullmatch(name):
        raise LabError(f"lab name {name!r}: must match [a-z][a-z0-9-]{{0,11}}")
    return name


@dataclass(frozen=True)
class LabNames:
    """The names of one lab's objects on the host."""

    lab: str
    run_dir: Path = RUN_DIR

    def __post_init__(self) -> None:
        check_lab_name(self.lab)

    @property
    def state_dir(self) -> Path:
        return self.run_dir / self.lab

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / f".{self.lab}.lock"

    @property
    def tmpfs_dir(self) -> Path:
        """Mount point of the lab's tmpfs, which holds every node's upper, work and root dirs."""
        return self.state_dir / "nodes"

    @property
    def tmpfs_source(self) -> str:
        return f"fleetlab-{self.lab}"

    @property
    def bridge(self) -> str:
        return f"fl-{self.lab}"

    @property
    def link_alias(self) -> str:
        """ifalias put on every interface the lab creates: `down` deletes only links carrying it."""
        return f"fleetlab:{self.lab}"

    @property
    def cgroup_rel(self) -> str:
        return f"fleetlab/{self.lab}"

    def node(self, index: int) -> str:
        """Name of node `index` (1-based): hostname, machine name, netns and host-side veth."""
        if index < 1:
            raise LabError(f"lab {self.lab}: node numbers start at 1, got {index}")
        return f"{self.lab}-n{index}"

    def check_node_count(self, count: int) -> None:
        if not 1 <= count <= MAX_NODES:
            raise LabError(f"lab {self.lab}: --nodes must be between 1 and {MAX_NODES}, got {count}")
        longest = self.node(count)
        if len(longest) > IFNAMSIZ:
            raise LabError(
                f"lab {self.lab}: interface name {longest!r} would exceed {IFNAMSIZ} characters; "
                f"use a shorter lab name or fewer nodes"
            )

    def node_dir(self, node: str) -> Path:
        return self.tmpfs_dir / node

    def log_file(self, node: str) -> Path:
        return self.state_dir / f"{node}.log"
