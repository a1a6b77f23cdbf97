"""What a container costs: N containers of one runtime on one lab node, started one at a time.

The units are rendered by the project's own `render_unit` (as the agent would) from an
[X-Container] section (busybox `sleep`), plus `MemoryAccounting=yes` so that the node's systemd
gives each unit a memory cgroup, and written straight into the node's /run/systemd/system;
fleetd is stopped on the node meanwhile, so that only systemd and the runtime run. The same
workload as a plain unit (the image's own static busybox, no container) is the baseline:
"overhead" is what a container is charged beyond it.

Figures, per container:
* start: `systemctl start` until it returns (Type=forking: fleet-run built the container and
  exited; nspawn: Type=notify READY), timed inside the node in a shell loop;
* charged: the unit's memory cgroup (v1 memory.usage_in_bytes, or cgroup2 memory.current)
  after `settle_seconds`, and the node's whole memory cgroup growth divided by N (catches
  kernel memory a unit is not charged for);
* rss: VmRSS summed over the unit's processes (shared pages counted in every process).
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetd.container.node import local_facts
from fleetd.container.render import ImageInfo, render_unit
from fleetd.errors import BenchmarkError
from fleetd.images import build_busybox_image
from fleetd.unit.file import UnitFile

from ..lab import Lab
from ..node import Node
from .common import Log, bench_lab, conditions, new_tag, percentile, quiet

IMAGES_DIR = "/var/lib/fleet/images"
RUNTIMES = ("launcher", "nspawn")
MB = float(1 << 20)


def containers(count: int = 200, *, runtimes: tuple[str, ...] = ("launcher",), settle_seconds: float = 5.0,
               agent_ttl: str = "5s", keep_lab: str | None = None, log: Log = quiet) -> dict[str, Any]:
    if count < 1:
        raise BenchmarkError("containers: --count must be at least 1")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise BenchmarkError(f"containers: unknown runtime {unknown[0]} (expected one of {', '.join(RUNTIMES)})")
    result: dict[str, Any] = {"benchmark": "containers", "count": count, "before": conditions()}
    with bench_lab("containers", nodes=1, agent_ttl=agent_ttl, keep_lab=keep_lab, log=log) as lab:
        node = lab.node(1)
        result["lab"] = {"name": lab.name, "node": node.name}
        image = _import_busybox(lab, node, log)
        node.stop_fleetd()
        try:
            result["baseline"] = _measure(node, "plain", count, image, settle_seconds, log)
            for runtime in runtimes:
                result[runtime] = _measure(node, runtime, count, image, settle_seconds, log)
                base = result["baseline"]["charged_mb"]["p50"]
                result[runtime]["overhead_mb"] = {
                    "charged_p50_beyond_workload": round(result[runtime]["charged_mb"]["p50"] - base, 3),
                    "node_growth_per_container_beyond_workload": round(
                        result[runtime]["node_growth_per_container_mb"]
                        - result["baseline"]["node_growth_per_container_mb"], 3),
                }
        finally:
            node.start_fleetd()
    result["after"] = conditions()
    return result


def _import_busybox(lab: Lab, node: Node, log: Log) -> ImageInfo:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = build_busybox_image(Path(tmp) / "rootfs")
        out = lab.fleetctl("image", "import", str(root), "--name", "busybox", "--machine", node.machine_id,
                           timeout=120).stdout
    digest = re.search(r"sha256:[0-9a-f]{64}", out).group(0)
    log(f"busybox imported on {node.name}: {digest[:19]}")
    return ImageInfo("busybox", digest, f"{IMAGES_DIR}/images/{digest[7:]}/rootfs")


def _unit_text(name: str, runtime: str, image: ImageInfo) -> str:
    if runtime == "plain":
        return (f"[Unit]\nDescription=bench baseline {name}\n\n[Service]\n"
                f"ExecStart={image.rootfs}/bin/busybox sleep 1000000\nMemoryAccounting=yes\n")
    unit = UnitFile.parse(f"[Unit]\nDescription=bench container {name}\n\n[X-Container]\nImage=busybox\n"
                          f"Runtime={runtime}\nCommand=sleep 1000000\n\n[Service]\nMemoryAccounting=yes\n")
    return render_unit(name, unit, local_facts(IMAGES_DIR), image)


def _node_memory(node: Node) -> int:
    out = node.exec(["sh", "-c", "cat /sys/fs/cgroup/memory/memory.usage_in_bytes 2>/dev/null || "
                                 "cat /sys/fs/cgroup/memory.current 2>/dev/null || "
                                 "cat /sys/fs/cgroup/unified/memory.current"], check=False).stdout.split()
    return int(out[0]) if out else 0


def _measure(node: Node, runtime: str, count: int, image: ImageInfo, settle: float, log: Log) -> dict[str, Any]:
    tag = new_tag("ct")
    names = [f"{tag}-{runtime[:1]}{i}.service" for i in range(count)]
    script = []
    for name in names:
        script.append(f"cat > /run/systemd/system/{name} <<'FLEET_BENCH_EOF'\n{_unit_text(name, runtime, image)}"
                      "FLEET_BENCH_EOF\n")
    node.exec(["sh"], input="".join(script) + "systemctl daemon-reload\n", timeout=120)  # (too long for argv)
    try:
        time.sleep(1.0)
        before = _node_memory(node)
        log(f"{runtime}: starting {count} units one at a time")
        loop = ("for u in " + " ".join(names) + "; do s=$(date +%s%N); systemctl start $u || echo FAIL $u; "
                "e=$(date +%s%N); echo $u $(( (e - s) / 1000 )); done")
        out = node.exec(["sh", "-c", loop], timeout=60 + 10 * count).stdout
        failed = [line.split()[1] for line in out.splitlines() if line.startswith("FAIL ")]
        if failed:
            raise BenchmarkError(f"{runtime}: {len(failed)} units failed to start, e.g. {failed[0]}: "
                                 f"{node.logs(failed[0], lines=5)}")
        starts = [int(line.split()[1]) / 1e6 for line in out.splitlines() if line.startswith(tag)]
        log(f"{runtime}: started; settling {settle:g}s")
        time.sleep(settle)
        charged, rss = _unit_memory(node, names)
        growth = (_node_memory(node) - before) / count / MB
        active = node.exec(["systemctl", "is-active", *names], check=False).stdout.split()
        if active.count("active") != count:
            raise BenchmarkError(f"{runtime}: {count - active.count('active')} units not active after the starts")
    finally:
        log(f"{runtime}: stopping")
        node.exec(["sh", "-c", "systemctl stop " + " ".join(names) + "; rm -f " +
                   " ".join(f"/run/systemd/system/{n}" for n in names) + "; systemctl daemon-reload"],
                  check=False, timeout=60 + 2 * count)
    left = node.exec(["sh", "-c", f"ls /run/fleet/containers /run/fleet/nspawn 2>/dev/null | grep -c {tag}"],
                     check=False).stdout.strip()
    return {
        "start_seconds": _stats(starts),
        "charged_mb": _stats([c / MB for c in charged]),
        "rss_mb": _stats([r / MB for r in rss]),
        "node_growth_per_container_mb": round(growth, 3),
        "state_dirs_left_after_stop": int(left or 0),
    }


def _unit_memory(node: Node, names: list[str]) -> tuple[list[int], list[int]]:
    """(charged bytes, summed VmRSS bytes) of each unit, read inside the node in one go."""
    script = ("for u in " + " ".join(names) + "; do cg=$(systemctl show -p ControlGroup --value $u); "
              "m=$(cat /sys/fs/cgroup/memory$cg/memory.usage_in_bytes 2>/dev/null || "
              "cat /sys/fs/cgroup/unified$cg/memory.current 2>/dev/null || cat /sys/fs/cgroup$cg/memory.current); "
              "r=0; for p in $(cat /sys/fs/cgroup/systemd$cg/cgroup.procs /sys/fs/cgroup/unified$cg/cgroup.procs "
              "2>/dev/null | sort -u); do k=$(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null); "
              "r=$((r + ${k:-0})); done; echo $u $m $r; done")
    out = node.exec(["sh", "-c", script], timeout=120).stdout
    charged, rss = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            charged.append(int(parts[1]))
            rss.append(int(parts[2]) * 1024)
    if len(charged) != len(names):
        raise BenchmarkError(f"memory of {len(names) - len(charged)} units unreadable (no memory cgroup?): "
                             f"{shlex.quote(out[-300:])}")
    return charged, rss


def _stats(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "mean": round(sum(values) / len(values), 3),
            "p50": round(percentile(values, 0.5), 3), "p99": round(percentile(values, 0.99), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}
