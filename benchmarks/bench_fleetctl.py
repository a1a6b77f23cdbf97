"""fleetctl's own costs against a real fleetd API server on real etcd (no lab):

(1) `fleetctl list-units` over the unix socket as a process: wall and CPU time per run, for this
    checkout and, with --baseline DIR, another checkout (e.g. the main branch) run alternately;
(2) the API driver's wait: a unit state is published 0.3-0.8 s after the wait began; how long
    after the publication does `wait()` return, woken by the change feed
    (GET /fleet/v1/_watch/units) vs polling (the route hidden, as against fleet's own API); a
    figure just below 0 means the check saw the state before the publisher took its timestamp.

Run: .venv/bin/python benchmarks/bench_fleetctl.py [--runs 20] [--baseline /work/main]
CPU times are the steadier figure on a shared machine; the wall times follow the load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import fleetctl.api_client as api_client  # noqa: E402
from fleetd.config import EtcdSettings  # noqa: E402
from fleetd.model import Machine  # noqa: E402
from fleetlab.testing.etcd import EtcdServer  # noqa: E402
from fleetd.unit.file import UnitFile  # noqa: E402

from _api_server import ThreadedApiServer, publish_state, register_machine  # noqa: E402

MID = "0123456789abcdef0123456789abcdef"


def ms(values: list[float]) -> str:
    values = sorted(values)
    return (f"p50 {statistics.median(values) * 1000:.1f} ms, p90 {values[int(len(values) * 0.9)] * 1000:.1f} ms, "
            f"min {values[0] * 1000:.1f} ms ({len(values)} runs)")


def list_units(srv, runs: int, checkouts: dict[str, Path]) -> None:
    wall: dict[str, list[float]] = {k: [] for k in checkouts}
    cpu: dict[str, list[float]] = {k: [] for k in checkouts}
    for i in range(runs + 1):
        for label, src in checkouts.items():
            env = dict(os.environ, PYTHONPATH=str(src))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", "from fleetctl.cli import main; main()",
                                   f"--endpoint={srv.unix_endpoint}", "list-units"], env=env, cwd=src,
                                  capture_output=True, text=True)
            took = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0 or "u4.service" not in done.stdout:
                raise SystemExit(f"{label}: fleetctl list-units failed: {done.stderr}")
            if i:  # the first run warms the page cache
                wall[label].append(took)
                cpu[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    for label in checkouts:
        print(f"list-units {label}: wall {ms(wall[label])}; CPU {ms(cpu[label])}")


def wait_latency(srv, lease: int, runs: int) -> None:
    body = UnitFile.parse("[Service]\nExecStart=/bin/true\n")
    results: dict[str, list[float]] = {"change feed": [], "polling": []}
    for i in range(runs):
        for way in results:
            api_client.WATCH_PATH = "/fleet/v1/_watch/units" if way == "change feed" else "/fleet/v1/_no_such_route"
            name = f"w{i}-{way[0]}.service"
            client = api_client.ApiFleetClient(srv.unix_endpoint)
            published: list[float] = []

            def publish() -> None:
                time.sleep(random.uniform(0.3, 0.8))
                srv.run(publish_state(srv.registry, lease, name, MID, body.hash))
                published.append(time.monotonic())

            async def check() -> bool:
                return bool(await client.unit_states(name))

            thread = threading.Thread(target=publish)
            thread.start()
            if not asyncio.run(client.wait(check, 20, names=[name])):
                raise SystemExit(f"{way}: the wait timed out")
            returned = time.monotonic()
            thread.join()
            asyncio.run(client.close())
            results[way].append(returned - published[0])
    for way, values in results.items():
        print(f"wait, {way}: state published -> wait returned: {ms(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare list-units with")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}")
    checkouts = {"this checkout": REPO}
    if args.baseline:
        checkouts = {f"baseline {args.baseline}": args.baseline, **checkouts}
    with EtcdServer() as etcd, tempfile.TemporaryDirectory() as tmp:
        settings = EtcdSettings(endpoints=(etcd.endpoint,), key_prefix="/bench-fleetctl/", request_timeout=5.0)
        (Path(tmp) / "srv").mkdir()
        with ThreadedApiServer(settings, Path(tmp) / "srv", Machine(MID, "10.1.2.3")) as srv:
            srv.run(register_machine(srv.registry, MID, "10.1.2.3"))
            lease = srv.run(srv.registry.grant_lease(3600))
            for i in range(5):
                unit = UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {i}\n")
                srv.run(publish_state(srv.registry, lease, f"u{i}.service", MID, unit.hash))
            list_units(srv, args.runs, checkouts)
            wait_latency(srv, lease, args.runs)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
