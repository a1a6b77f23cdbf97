"""The installed `fleetctl` (bin/fleetctl, a script file: pip's console script starts with
`import re`) and its fast paths import neither re, json, socket nor urllib.parse: their
standard library parts come from fleetctl/lean.py on C modules (each of those imports costs
milliseconds of a ~15 ms interpreter start). Real runs of the launcher against a real fleetd API
on real etcd, over the unix socket and over http://, blocking until the units are launched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _fast_cli_common import env_without_fleetctl_settings, imported, without_importtime, write_units
from test_fleetctl_fast_units import serving_clusters

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "bin" / "fleetctl"
# what the lean path never imports: each of these brings re (or enum, functools...) with it
NEVER_ON_THE_LEAN_PATH = ("re", "json", "socket", "urllib", "enum", "selectors", "ipaddress", "functools",
                          "collections", "hashlib", "typing", "click", "fleetd", "fleetctl.cli", "ssl")


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    with serving_clusters(etcd_server, tmp_path_factory, "lean-start") as servers:
        yield servers[0]


def launcher(endpoint: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", str(LAUNCHER), f"--endpoint={endpoint}", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env_without_fleetctl_settings())


def lean_imports(stderr: str) -> list[str]:
    return sorted(n for n in imported(stderr)
                  if any(n == r or n.startswith(r + ".") for r in NEVER_ON_THE_LEAN_PATH))


@pytest.mark.parametrize("way", ["unix", "tcp"])
def test_start_list_and_destroy_import_no_re_json_or_socket(cluster, tmp_path, way):
    endpoint = cluster.unix_endpoint if way == "unix" else cluster.tcp_endpoint
    names = [f"lean-{way}-{i}.service" for i in range(3)]
    write_units(tmp_path, names)
    started = launcher(endpoint, "start", *names, cwd=tmp_path)
    assert started.returncode == 0, without_importtime(started.stderr)
    assert started.stdout.count(" launched on 01234567.../10.1.2.3\n") == 3
    assert all(f"Unit {n} inactive\n" in started.stdout for n in names)
    listed = launcher(endpoint, "list-units", "--no-legend", "--fields=unit", cwd=tmp_path)
    assert listed.returncode == 0 and set(names) <= set(listed.stdout.split())
    destroyed = launcher(endpoint, "destroy", *names, cwd=tmp_path)
    assert destroyed.stdout == "".join(f"Destroyed {n}\n" for n in names)
    for run in (started, listed, destroyed):
        assert "fleetctl.fast" in imported(run.stderr) and lean_imports(run.stderr) == [], lean_imports(run.stderr)


def test_the_full_cli_still_answers_through_the_launcher(cluster, tmp_path):
    """A command the fast paths leave alone goes to the full CLI (which imports what it needs)."""
    run = launcher(cluster.unix_endpoint, "list-unit-files", "--no-legend", cwd=tmp_path)
    assert run.returncode == 0, without_importtime(run.stderr)
    assert "fleetctl.cli" in imported(run.stderr)


def test_the_installed_fleetctl_is_the_launcher():
    """bootstrap's `pip install -e .` installs bin/fleetctl (pyproject's script-files) with the
    interpreter's path as its first line, the rest unchanged."""
    installed = Path(sys.executable).parent / "fleetctl"
    if not installed.exists():
        pytest.skip(f"no fleetctl beside {sys.executable} (not a bootstrap venv)")
    assert installed.read_text().splitlines()[1:] == LAUNCHER.read_text().splitlines()[1:]
    assert installed.read_text().startswith("#!") and "import re" not in installed.read_text().split('"""')[-1]
