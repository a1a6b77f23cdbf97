"""Lab benchmarks: real systemd in nspawn nodes, a real etcd cluster, real fleetd processes.

Each is a function returning a dict of figures, booting a uniquely named lab of its own and
always tearing it down (or using a running lab, `keep_lab=NAME`, left running); exposed as
`fleet-lab bench <name>`. See docs/performance.md.
"""

from .burst import burst
from .discovery import discovery
from .failover import failover
from .footprint import footprint
from .start import start

LAB_BENCHMARKS = {"start": start, "burst": burst, "failover": failover, "footprint": footprint,
                  "discovery": discovery}

__all__ = ["LAB_BENCHMARKS", "burst", "discovery", "failover", "footprint", "start"]
