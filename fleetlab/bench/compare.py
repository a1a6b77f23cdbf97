"""This project next to the original fleet v1.0.0, in one lab and one run.

The same scenarios run twice on the same lab: first against the project (its fleetctl with the
default API driver, over node 1's TCP API), then, after `fleetlab.peer.to_original_fleet` turned
every node into an original-fleet node (etcd with --enable-v2, fleetd from ../shared/peer/ with
socket activation), against the original (its fleetctl, API driver). Every figure is the wall
time of whole fleetctl processes, as a user sees them:

* list_units: `fleetctl list-units` (p50 of `samples`);
* start_one: `fleetctl start UNIT` of one new unit until it returns (p50 of `samples` units);
  for the project also with `--driver=etcd` (start_one_etcd_driver: no fleet v1 figure);
* burst_30: `fleetctl start` of 30 units in one blocking command;
* no_block_300: `fleetctl start --no-block` of 300 units, then `list-units` until all are active;
* failover: 6 units running, the last node crashed (SIGKILL to its init), then `list-units`
  until every unit that ran there is active on another machine (the node is booted again).

Ratios are original / project (above 1: the project is faster). Skips with the reason when the
peer binaries are absent, unless `project_only` (`--project-only`: this project's rows alone, for
iterating on one of them; `--burst 0`, `--no-block 0` and `--no-failover` leave rows out).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from fleetd.errors import BenchmarkError

from ..lab import Lab
from ..peer import back_to_project, peer_fleetctl, peer_problem, to_original_fleet
from ..sysutil import run
from .common import Log, bench_lab, conditions, new_tag, percentile, quiet

SETTLE_SECONDS = 2.0  # before the burst: the previous scenario's units are being unloaded
UNIT_TEXT = "[Unit]\nDescription=fleet compare {name}\n\n[Service]\nExecStart=/bin/sleep infinity\n"


def compare(samples: int = 5, *, burst: int = 30, no_block: int = 300, nodes: int = 3, agent_ttl: str = "5s",
            keep_lab: str | None = None, timeout: float = 300.0, log: Log = quiet,
            project_only: bool = False, failover: bool = True) -> dict[str, Any]:
    """`project_only`: this project's figures alone (no peer binaries needed); `failover`: False
    leaves the failover row out; `burst`/`no_block` 0 leave those rows out."""
    problem = None if project_only else peer_problem()
    if problem:
        return {"benchmark": "compare", "skipped": problem}
    result: dict[str, Any] = {"benchmark": "compare", "before": conditions()}
    # insecure: fleet v1.0.0 speaks etcd's v2 API without client certificates
    with bench_lab("compare", nodes=nodes, agent_ttl=agent_ttl, keep_lab=keep_lab, log=log,
                   insecure=True) as lab, \
            tempfile.TemporaryDirectory(prefix="fleet-compare-") as tmp:
        result["lab"] = {"name": lab.name, "nodes": len(lab.nodes), "agent_ttl": lab.agent_ttl}
        project = _project_ctl(lab)
        log("project: running the scenarios")
        result["project"] = _scenarios(project, Path(tmp), "p", samples, burst, no_block, timeout, log)
        result["project"]["start_one_etcd_driver_p50_seconds"] = _start_one_etcd(lab, Path(tmp), samples, timeout, log)
        if failover:
            result["project"]["failover_seconds"] = _try_failover(lab, project, Path(tmp), "p", timeout, log)
        if project_only:
            result["after"] = conditions()
            return result
        log("turning the lab's nodes into original fleet v1.0.0 nodes")
        to_original_fleet(lab)
        try:
            original = lambda *args, check=True, timeout=120.0: peer_fleetctl(lab, *args, check=check, timeout=timeout)  # noqa: E731
            log("original fleet: running the scenarios")
            result["fleet_v1"] = _scenarios(original, Path(tmp), "o", samples, burst, no_block, timeout, log)
            if failover:
                result["fleet_v1"]["failover_seconds"] = _try_failover(
                    lab, original, Path(tmp), "o", timeout, log, after_boot=lambda node: _peer_node_again(lab, node))
        finally:
            if keep_lab:
                back_to_project(lab)
    result["ratio_fleet_v1_over_project"] = {
        key: round(result["fleet_v1"][key] / result["project"][key], 1)
        for key in result["project"]
        if isinstance(result["project"][key], float) and result["project"][key]
        and isinstance(result["fleet_v1"].get(key), float)
    }
    result["after"] = conditions()
    return result


def _project_ctl(lab: Lab) -> Callable[..., Any]:
    """fleetctl on node 1's TCP API as the lab serves it: plain http for the benchmark's own
    (--insecure) labs, https with the operator certificate for a `--keep-lab` lab booted with
    fleet-lab's defaults (a plain request to its TLS port was refused until the warm-up gave up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    api = lab.fleetctl_api_args(1)

    def ctl(*args: str, check: bool = True, timeout: float = 120.0):
        return run([*lab.fleetctl_command(), *api, *args], env=env, check=check, timeout=timeout)

    return ctl


def _start_one_etcd(lab: Lab, tmp: Path, samples: int, timeout: float, log: Log) -> float:
    """`fleetctl --driver=etcd start UNIT` of one new unit until it returns (p50 of `samples`):
    the project's etcd driver (its fast path, fleetctl/fast_etcd.py); fleet v1 has no such row."""
    ones = [f"{new_tag('ce')}-one{i}.service" for i in range(samples)]
    times = [_timed(lambda: lab.fleetctl("start", path, timeout=timeout)) for path in _files(tmp, ones)]
    lab.fleetctl("destroy", *ones, check=False, timeout=timeout)
    p50 = round(percentile(times, 0.5), 3)
    log(f"p: start one with --driver=etcd p50 {p50}s")
    return p50


def _timed(fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _files(tmp: Path, names: list[str]) -> list[str]:
    paths = []
    for name in names:
        path = tmp / name
        path.write_text(UNIT_TEXT.format(name=name))
        paths.append(str(path))
    return paths


def _active(ctl, names: list[str]) -> int:
    out = ctl("list-units", "--no-legend", "--fields=unit,active", check=False).stdout
    wanted = set(names)
    return sum(1 for line in out.splitlines() if len(line.split()) >= 2 and line.split()[0] in wanted
               and line.split()[1] == "active")


def _warm_up(ctl, timeout: float) -> None:
    """One `list-units` that succeeds (page cache, connections). fleetd registers its machine,
    which the lab waits for, a moment before its API listens: a quick fleetctl can be early."""
    deadline = time.monotonic() + timeout
    while ctl("list-units", check=False).returncode != 0:
        if time.monotonic() > deadline:
            ctl("list-units")  # raises with fleetctl's error
        time.sleep(0.2)


def _scenarios(ctl, tmp: Path, side: str, samples: int, burst: int, no_block: int, timeout: float,
               log: Log) -> dict[str, float]:
    tag = new_tag(f"c{side}")
    figures: dict[str, float] = {}
    _warm_up(ctl, timeout)
    figures["list_units_p50_seconds"] = round(percentile([_timed(lambda: ctl("list-units")) for _ in range(samples)], 0.5), 3)
    ones = [f"{tag}-one{i}.service" for i in range(samples)]
    times = []
    for path in _files(tmp, ones):
        times.append(_timed(lambda: ctl("start", path, timeout=timeout)))
    figures["start_one_p50_seconds"] = round(percentile(times, 0.5), 3)
    log(f"{side}: list-units p50 {figures['list_units_p50_seconds']}s, start one p50 {figures['start_one_p50_seconds']}s")
    ctl("destroy", *ones, check=False)
    if burst:
        # the agents stop and unload what was destroyed (a daemon-reload each): not measured
        time.sleep(SETTLE_SECONDS)
        many = [f"{tag}-b{i:02d}.service" for i in range(burst)]
        paths = _files(tmp, many)
        figures[f"burst_{burst}_seconds"] = round(_timed(lambda: ctl("start", *paths, timeout=timeout)), 3)
        log(f"{side}: {burst} units blocking: {figures[f'burst_{burst}_seconds']}s")
        ctl("destroy", *many, check=False)
    if not no_block:
        return figures
    lots = [f"{tag}-n{i:03d}.service" for i in range(no_block)]
    paths = _files(tmp, lots)
    started = time.monotonic()
    ctl("start", "--no-block", *paths, timeout=timeout)
    while _active(ctl, lots) < len(lots):
        if time.monotonic() - started > timeout:
            raise BenchmarkError(f"{side}: {no_block} units not all active after {timeout:g}s")
        time.sleep(0.1)
    figures[f"no_block_{no_block}_seconds"] = round(time.monotonic() - started, 3)
    log(f"{side}: {no_block} units --no-block until active: {figures[f'no_block_{no_block}_seconds']}s")
    ctl("destroy", *lots, check=False, timeout=timeout)
    return figures


def _placed(ctl, names: list[str]) -> dict[str, tuple[str, str]]:
    out = ctl("list-units", "--no-legend", "--full", "--fields=unit,machine,active", check=False).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in names:
            found[parts[0]] = (parts[1], parts[2])
    return found


def _failover(lab: Lab, ctl, tmp: Path, side: str, timeout: float, log: Log,
              after_boot: Callable[[Any], None] | None = None) -> float:
    tag = new_tag(f"f{side}")
    names = [f"{tag}-{i}.service" for i in range(6)]
    ctl("start", "--no-block", *_files(tmp, names), timeout=timeout)
    victim = lab.nodes[-1]
    deadline = time.monotonic() + timeout
    while True:
        placed = _placed(ctl, names)
        if len(placed) == len(names) and all(a == "active" for _, a in placed.values()):
            break
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{side}: failover units not active before the kill")
        time.sleep(0.1)
    moving = [n for n, (m, _) in placed.items() if m.endswith("/" + victim.ip)]
    if not moving:
        ctl("destroy", *names, check=False)
        log(f"{side}: no unit on {victim.name}: failover not measured")
        return 0.0
    started = time.monotonic()
    victim.kill()
    while True:
        placed = _placed(ctl, names)
        if all(n in placed and placed[n][1] == "active" and not placed[n][0].endswith("/" + victim.ip)
               for n in moving):
            break
        if time.monotonic() - started > timeout:
            raise BenchmarkError(f"{side}: {len(moving)} units not active elsewhere {timeout:g}s after the kill")
        time.sleep(0.05)
    seconds = round(time.monotonic() - started, 3)
    log(f"{side}: failover of {len(moving)} units after killing {victim.name}: {seconds}s")
    victim.start()
    lab.wait_etcd_healthy(timeout=60)
    if after_boot is not None:
        after_boot(victim)
    ctl("destroy", *names, check=False)
    return seconds


def _try_failover(lab: Lab, ctl, tmp: Path, side: str, timeout: float, log: Log, **kw) -> float | str:
    """The failover figure, or why it could not be taken (the other figures are kept)."""
    try:
        return _failover(lab, ctl, tmp, side, timeout, log, **kw)
    except Exception as exc:  # noqa: BLE001 - reported in the result
        log(f"{side}: failover not measured: {exc}")
        return f"not measured: {str(exc).splitlines()[0][-200:]}"


def _peer_node_again(lab: Lab, node) -> None:
    """A re-booted node starts the project's fleetd: make it an original-fleet node again."""
    from ..peer import to_original_fleet

    to_original_fleet(lab)
