"""tests/_forked_cli.py, the fork server that runs the full fleetctl CLI as the reference of the
fast-path comparisons: its runs print and exit as a cold process does, and its replies stay in
step when they reach a slow reader together."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _fast_cli_common import imported, without_importtime
from _forked_cli import shared, shared_fast_path

COLD = [sys.executable, "-c", "import sys; from fleetctl.cli import main; sys.argv[0] = 'fleetctl'; main()"]


def test_a_forked_run_is_what_a_cold_process_does(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    cli = shared()
    for args in (["--version"], ["list-units", "--no-such-flag"], ["--help"],
                 [f"--endpoint=unix://{tmp_path}/nothing.sock", "list-units"]):
        forked = cli.run(args, cwd=tmp_path, env=env, timeout=60)
        cold = subprocess.run([*COLD, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert (forked.returncode, forked.stdout, forked.stderr) == (cold.returncode, cold.stdout, cold.stderr), args
    assert forked.returncode == 1 and "unreachable" in forked.stderr  # the comparison saw an error too


def test_replies_that_arrive_together_are_read_one_at_a_time(tmp_path):
    cli = shared()
    read = cli._reply

    def late(deadline: float) -> dict:  # a loaded machine: both of a run's replies are waiting
        time.sleep(1.0)
        return read(deadline)

    try:
        cli._reply = late
        first = cli.run(["--version"], cwd=tmp_path, env=dict(os.environ), timeout=60)
        cli._reply = read
        second = cli.run(["list-units", "--no-such-flag"], cwd=tmp_path, env=dict(os.environ), timeout=60)
        assert first.returncode == 0 and first.stdout.startswith("fleetctl version ")
        assert second.returncode == 2 and "No such option" in second.stderr
    finally:
        del cli._reply  # the shared server's own method again


def test_a_forked_fast_entry_run_is_what_a_cold_python_m_fleetctl_does(tmp_path):
    """entry="fast": the fast entry point forked, for the runs it hands over to the full CLI
    (the same output and exit code as a cold `python -m fleetctl`, `handed_over` true), and
    for one it answers itself (`handed_over` false)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    cli = shared()
    for args in (["list-units", "--no-such-flag"], ["start", "--help"],
                 [f"--endpoint=unix://{tmp_path}/nothing.sock", "list-machines", "--bogus"]):
        forked = cli.run(args, cwd=tmp_path, env=env, timeout=60, entry="fast")
        cold = subprocess.run([sys.executable, "-X", "importtime", "-m", "fleetctl", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        cold_stderr = "".join(line for line in cold.stderr.splitlines(keepends=True)
                              if not line.startswith("import time:"))
        assert (forked.returncode, forked.stdout, forked.stderr) == (cold.returncode, cold.stdout, cold_stderr), args
        assert forked.handed_over and "fleetctl.cli" in cold.stderr, args
    answered = cli.run([f"--endpoint=unix://{tmp_path}/nothing.sock", "list-machines"], cwd=tmp_path, env=env,
                       timeout=60, entry="fast")  # the fast path's own error: no hand-over
    assert answered.returncode == 1 and "unreachable" in answered.stderr and not answered.handed_over


def test_the_shared_server_is_started_once_and_again_when_it_ended(tmp_path):
    """tests/_forked_cli.py's `shared()`: one server for the process while it runs, a new one
    once it ended."""
    cli = shared()
    assert shared() is cli
    cli.proc.kill()
    cli.proc.wait()
    again = shared()
    assert again is not cli and again.run(["--version"], cwd=tmp_path, env=dict(os.environ), timeout=60).returncode == 0


def test_a_bare_forked_fast_path_run_is_what_a_cold_python_m_fleetctl_does(tmp_path):
    """tests/_forked_cli.py's ForkedFastPath, for the fast-path runs whose imports the fast-path
    modules check: the same exit code and output as a cold `python -X importtime -m fleetctl`,
    and the same modules imported, but for what the bare server had before it forked: the
    interpreter's start-up and `select`, nothing the checks look for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    bare = shared_fast_path()
    assert bare.preloaded == {"select"}
    start_up = imported(subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True,
                                       text=True, timeout=60).stderr)
    for args in ([f"--endpoint=unix://{tmp_path}/nothing.sock", "list-units"],  # the fast path's own error
                 [f"--endpoint=unix://{tmp_path}/nothing.sock", "list-machines", "--full"],
                 ["list-units", "--no-such-flag"]):  # handed over: the full CLI's imports too
        forked = bare.run(args, cwd=tmp_path, env=env, timeout=60)
        cold = subprocess.run([sys.executable, "-X", "importtime", "-m", "fleetctl", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert (forked.returncode, forked.stdout, without_importtime(forked.stderr)) == (
            cold.returncode, cold.stdout, without_importtime(cold.stderr)), args
        own, cold_set = imported(forked.stderr), imported(cold.stderr)
        assert "fleetctl.fast" in own and own <= cold_set and cold_set - own <= start_up | bare.preloaded, args
    assert forked.returncode == 2 and "click" in own and "fleetctl.cli" in own
