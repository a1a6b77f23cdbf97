"""What the fleetctl fast-path comparisons share (tests/etcd/test_fleetctl_fast_units.py for the
API driver, tests/etcd/test_fleetctl_fast_etcd.py for the etcd driver): reading `-X importtime`
output, the environment of a run, unit files, and the scenarios both drivers must pass byte for
byte against the full CLI. `same(clusters, work, *args)` is each module's own comparison."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

PLAIN = "[Unit]\nDescription=fast {name}\n\n[Service]\nExecStart=/bin/sleep infinity\n"


def imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def without_importtime(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("import time:"))


def env_without_fleetctl_settings() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}


MID = "0123456789abcdef0123456789abcdef"


async def stand_in(reg, stop: threading.Event) -> None:
    """Engine and agent stand-in on a registry: places every unit whose desired state is not
    inactive on one machine (MID) and reports it active (launched) or inactive (loaded); units
    named *stuck* are placed but never reported. It looks again when a unit's key changes (a
    watch of the job keys; at least every half second, to see `stop`)."""
    from fleetd.model import DesiredState, Placement

    from _api_server import publish_state, register_machine

    lease = await register_machine(reg, MID, "10.1.2.3", ttl=600)
    await reg.campaign(MID, lease)
    reported: dict[str, tuple] = {}
    changed = asyncio.Event()
    start = await reg.core.current_revision() + 1

    async def watch_units():
        async for _ in reg.core.watch([reg.keys.jobs], start):
            changed.set()

    watcher = asyncio.create_task(watch_units())
    try:
        while not stop.is_set():
            if watcher.done():
                watcher.result()  # the watch failed: say why
            changed.clear()
            units = await reg.list_units()
            placements = await reg.placements()
            place = [Placement(u.name, MID, u.hash, u.desired_state) for u in units
                     if u.desired_state is not DesiredState.INACTIVE
                     and placements.get(u.name) != Placement(u.name, MID, u.hash, u.desired_state)]
            if place:
                await reg.apply_schedule(fence_machine_id=MID, place=place)
            for u in units:
                if u.desired_state is DesiredState.INACTIVE or "stuck" in u.name:
                    continue
                active = u.desired_state is DesiredState.LAUNCHED
                if reported.get(u.name) != (u.hash, active):
                    await publish_state(reg, lease, u.name, MID, u.hash, "active" if active else "inactive",
                                        "running" if active else "dead")
                    reported[u.name] = (u.hash, active)
            try:
                await asyncio.wait_for(changed.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def write_units(directory: Path, names, text: str = PLAIN) -> None:
    for name in names:
        (directory / name).write_text(text.format(name=name))


def no_block_load_then_start_by_name_and_submit(same, clusters, work: Path) -> None:
    names = ["nb1.service", "nb2.service", "nb3.service"]
    write_units(work, names)
    out = same(clusters, work, "start", "--no-block", *names)
    assert out.stdout == "".join(f"Unit {n} inactive\n" for n in names) + "".join(
        f"Triggered unit {n} start\n" for n in names)
    write_units(work, ["ld1.service", "ld2.service"])
    out = same(clusters, work, "load", "ld1.service", "--block-attempts=40", "ld2.service")
    assert "Unit ld1.service loaded on 01234567.../10.1.2.3\n" in out.stdout
    os.remove(work / "ld1.service")  # from the registry by name
    out = same(clusters, work, "start", "--block-attempts", "40", "ld1", "ld2.service")
    assert sorted(out.stdout.splitlines()) == ["Unit ld1.service launched on 01234567.../10.1.2.3",
                                               "Unit ld2.service launched on 01234567.../10.1.2.3"]
    write_units(work, ["sb1.service", "sb2.socket"], "[Socket]\nListenStream=/run/{name}\n")
    assert same(clusters, work, "submit", "sb1.service", "sb2.socket").stdout == (
        "Unit sb1.service inactive\nUnit sb2.socket inactive\n")
    assert same(clusters, work, "submit", "sb1.service").stdout == ""


def timeout_and_destroy_messages(same, clusters, work: Path) -> None:
    write_units(work, ["stuck.service"])
    out = same(clusters, work, "start", "--block-attempts=2", "stuck.service")
    assert out.returncode == 1 and out.stderr.endswith(
        "Error waiting for units: timed out waiting for unit stuck.service to report state launched\n")
    assert same(clusters, work, "destroy", "stuck", "nothing.service").stdout == "Destroyed stuck.service\n"
    out = same(clusters, work, "destroy", "nothing.service")
    assert (out.returncode, out.stdout) == (0, "") and out.stderr.endswith("Units not found in registry\n")
