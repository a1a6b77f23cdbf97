"""fleet-lab: a local multi-node lab (systemd-nspawn nodes on overlay roots, etcd, fleetd)."""

from fleetd.errors import LabError

from .lab import Lab, host_problem, list_labs
from .node import Node

__all__ = ["Lab", "LabError", "Node", "host_problem", "list_labs"]
