"""fleet-lab: a local multi-node lab (systemd-nspawn nodes on overlay roots, etcd, fleetd).

`Lab`, `Node`, `host_problem`, `list_labs` are imported when first used (PEP 562): the
submodules that do not boot labs (fleetlab.testing.etcd in every pytest process,
fleetlab.bench.child and fleetlab.nodeconfig started as processes of their own) do not pay for
the lab's imports (fleetd.pki with cryptography, the node and boot code).
"""

from fleetd.errors import LabError

__all__ = ["Lab", "LabError", "Node", "host_problem", "list_labs"]

_LAZY = {"Lab": "lab", "host_problem": "lab", "list_labs": "lab", "Node": "node"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
