"""Facts about this machine for its presence record: ID, public IP, CPU count, memory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fleetd import __version__
from fleetd.config import FleetConfig, read_machine_id
from fleetd.model import Machine, Resources


def total_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_count() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 0)


def default_route_interface(route_table: Path = Path("/proc/net/route")) -> str | None:
    try:
        for line in route_table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                return fields[0]
    except OSError:
        pass
    return None


def interface_ipv4(interface: str) -> str | None:
    """The first IPv4 address of an interface (read locally, nothing is sent)."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", interface],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None


def detect_public_ip() -> str:
    """fleet's rule: the address of the interface that holds the default route."""
    interface = default_route_interface()
    return (interface_ipv4(interface) if interface else None) or ""


def this_machine(config: FleetConfig) -> Machine:
    return Machine(
        id=read_machine_id(config.machine_id_file),
        public_ip=config.public_ip or detect_public_ip(),
        metadata=dict(config.metadata),
        version=__version__,
        capacity=Resources(cpu_count(), total_memory()),
    )


