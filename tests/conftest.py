"""Shared fixtures (a real etcd server per test session, a fresh key prefix per test) and the
markers of the test folders, arranged by what their tests need:

    tests/unit/        neither etcd nor a lab (some need root for namespaces, and skip without)
    tests/etcd/        a real etcd server, started by the session fixture  -> marker `etcd`
    tests/lab/         a local nspawn lab (root, systemd-nspawn)            -> marker `lab`
    tests/functional/  fleet's functional tests on a lab                    -> marker `lab`
    tests/vm/          Vagrant VMs (vagrant-libvirt; docs/vagrant.md)       -> markers `vm` and `lab`

(a VM lab is a lab: `-m "not lab"` leaves it out, `-m "not vm"` leaves out only the VMs), so `scripts/test.sh -m "not lab"` is the fast loop and `-m "not lab and not etcd"` needs nothing.

The fast loop also digs less deep (tests/_depth.py): hypothesis properties try a tenth of their
examples and tests marked `deep` (the schemathesis fuzz run, `vagrant validate`, the thousand-unit
browser run) are skipped, unless FLEET_TEST_DEPTH=full; the full suite (no `-m`, as CI runs it)
runs everything at full depth. With pytest-xdist, `-n 4` spreads the fast loop over processes
(its tests wait more than they compute): `scripts/test.sh -m "not lab" -n 4`.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

# hypothesis runs its third-party plugins' hooks when imported: the one installed here is trio's
# (a dependency of a dependency; no test uses trio), and importing trio cost ~0.1 CPU-s in every
# pytest process of the fast loop (the controller and each xdist worker)
os.environ.setdefault("HYPOTHESIS_NO_PLUGINS", "1")
from hypothesis import settings  # noqa: E402  (after the line above)

import _early_etcd as early_etcd
from _depth import depth_for
from _folders import FOLDER_MARKERS, TESTS, deselected_folder, deselects_all
from _schedule import scheduler, slowest_modules_first
from fleetd.config import EtcdSettings
from fleetlab.testing.etcd import DATA_PARENT_ENV, EtcdServer

# pytest's assertion rewriting costs seconds of CPU per process for every test module: keep its
# result (and the packages' bytecode) in __pycache__ even where PYTHONDONTWRITEBYTECODE is set
sys.dont_write_bytecode = False
# and in every process started from here (pytest-xdist's workers rewrite the plugins they load
# before this file otherwise, a second of CPU each; fleetctl and fleetd processes of the tests)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# the test etcd servers' data on a tmpfs (fleetlab/testing/etcd.py): no fsync to wait for
if os.access("/dev/shm", os.W_OK):
    os.environ.setdefault(DATA_PARENT_ENV, "/dev/shm")



def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("FLEET_TEST_TIMELINE"):  # where the loop's time goes (tests/_timeline.py)
        from _timeline import Recorder

        config.pluginmanager.register(Recorder(os.environ["FLEET_TEST_TIMELINE"]), "fleet-timeline")
    chosen = os.environ.get("FLEET_TEST_DEPTH") or depth_for(config.option.markexpr or "")
    os.environ["FLEET_TEST_DEPTH"] = chosen  # read by tests/_depth.py when test modules are imported
    if chosen == "fast" and os.access("/dev/shm", os.W_OK):
        # the fast loop's tmp_path directories on a tmpfs too (pytest's numbered, self-cleaning
        # /dev/shm/pytest-of-USER/pytest-N, read when the first one is made): image stores,
        # busybox trees and overlay layers cost half the kernel time on the disk's ext4
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", "/dev/shm")
    # no per-example deadline at any depth: a loaded machine (CI, parallel labs) once made a
    # pure property exceed hypothesis's 200 ms; time is for the benchmarks, not the tests
    if chosen == "fast":  # the full depth keeps hypothesis's own profile's example counts (e.g. "ci")
        settings.register_profile("fast", parent=settings.default, max_examples=10, deadline=None)
        settings.load_profile("fast")
    else:
        settings.register_profile("full", parent=settings.default, deadline=None)
        settings.load_profile("full")


def pytest_report_header(config: pytest.Config) -> str:
    return f"test depth: {os.environ.get('FLEET_TEST_DEPTH')} (tests/_depth.py)"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # a folder whose every test `-m` deselects is not imported at all (tests/_folders.py)
    return True if deselected_folder(collection_path, config.option.markexpr or "") else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    folders: dict[Path, str | None] = {}  # a test file's folder, resolved once per file (not per test)
    for item in items:
        if item.path not in folders:
            try:
                folders[item.path] = item.path.resolve().relative_to(TESTS).parts[0]
            except ValueError:
                folders[item.path] = None
        folder = folders[item.path]
        if folder is None:
            continue
        for marker in FOLDER_MARKERS.get(folder, ()):
            if item.get_closest_marker(marker) is None:  # keep lab(nodes=...) options
                item.add_marker(marker)
    if os.environ.get("FLEET_TEST_DEPTH") == "fast":
        skip = pytest.mark.skip(reason="deep: the full suite runs it (FLEET_TEST_DEPTH=full)")
        for item in items:
            if item.get_closest_marker("deep") is not None:
                item.add_marker(skip)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the slowest modules first (tests/_schedule.py)
        items[:] = slowest_modules_first(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    # the collected modules, functions, items and fixtures live as long as the session (130,000
    # objects in each pytest-xdist worker of the fast loop): out of the garbage collector's way,
    # or each of its full collections walks them all again (a quarter of a worker's GC time)
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # a pytest-xdist worker has sent its results ("workerfinished", at sessionfinish, after the
    # session fixtures' teardown): what is left is pytest's cleanup (a gc.collect() of a large
    # heap) and the interpreter freeing it, ~1 CPU-s a worker while the controller waits for the
    # last of them to exit. Nothing of it reaches the controller, so the worker ends here.
    # atexit's handlers still run first: the lab plugin's last-resort clean-up is one of them.
    if hasattr(config, "workerinput") and os.environ.get("FLEET_TEST_WORKER_EXIT") != "slow":
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    return scheduler(config, log)  # with `-n`: a module at a time, the slowest first (tests/_schedule.py)


def pytest_sessionstart(session: pytest.Session) -> None:
    # a pytest-xdist worker of a run whose tests may use etcd: its etcd, and a spare for the first
    # test with an etcd of its own, start while it collects (tests/_early_etcd.py); a run without
    # -n starts them when a test asks, as before
    config = session.config
    if (hasattr(config, "workerinput") and not deselects_all(config.option.markexpr or "", FOLDER_MARKERS["etcd"])
            and shutil.which("etcd") is not None):
        early_etcd.start("session")
        early_etcd.start("own")


def pytest_sessionfinish(session: pytest.Session) -> None:
    early_etcd.stop_untaken()  # started early, never asked for


@pytest.fixture(scope="session")
def etcd_server():
    server = early_etcd.take("session")
    if server is None:
        if shutil.which("etcd") is None:
            pytest.fail("etcd binary not found: run the README's test command (it installs etcd-server)")
        server = EtcdServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/fleet-test/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def etcd_settings(etcd_server, etcd_prefix) -> EtcdSettings:
    return EtcdSettings(endpoints=(etcd_server.endpoint,), key_prefix=etcd_prefix, request_timeout=5.0)


@pytest.fixture
async def registry(etcd_settings):
    from fleetd.registry import Registry

    reg = await Registry.connect(etcd_settings)
    try:
        yield reg
    finally:
        await reg.close()


@pytest.fixture(scope="session", autouse=True)
def _close_the_forked_cli():
    """tests/_forked_cli.py's shared fork servers (each started by the first module that uses it),
    closed and reaped at the session's end; nothing is started here."""
    yield
    from _forked_cli import close_shared

    close_shared()
