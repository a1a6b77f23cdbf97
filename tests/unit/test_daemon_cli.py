"""fleetd's command line (argparse): flags over FLEET_* variables over the config file, errors,
exit codes. Runs fleetd as a process only where the process boundary matters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.daemon import FLAG_KEYS, build_parser, config_from_args

FLEETD = [sys.executable, "-c", "from fleetd.daemon import main; main()"]


def test_every_flag_key_is_a_flag_and_overrides_file_and_environment(tmp_path: Path, monkeypatch):
    conf = tmp_path / "fleet.conf"
    conf.write_text('agent_ttl="9s"\nmetadata="region=file"\npublic_ip="10.0.0.1"\n')
    monkeypatch.setenv("FLEET_METADATA", "region=env")
    args = build_parser().parse_args(["--config", str(conf), "--agent-ttl", "7s", "--etcd-key-prefix=/x/"])
    cfg = config_from_args(args)
    assert cfg.agent_ttl == 7.0  # flag beats file
    assert cfg.etcd.key_prefix == "/x/"
    assert cfg.metadata == {"region": "env"}  # environment beats file
    assert cfg.public_ip == "10.0.0.1"  # file
    help_text = build_parser().format_help()
    for key in FLAG_KEYS:
        assert f"--{key.replace('_', '-')}" in help_text


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEETD, *argv], capture_output=True, text=True, timeout=30)


def test_version_help_and_exit_codes(tmp_path: Path):
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("fleetd version ")
    out = run("--help")
    assert out.returncode == 0 and "--agent-ttl VALUE" in out.stdout and "Exit status" in out.stdout
    out = run("--no-such-flag")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "fleetd: error: unrecognized arguments: --no-such-flag"
    bad = tmp_path / "bad.conf"
    bad.write_text('agent_ttl="soon"\n')
    out = run("--config", str(bad))
    assert out.returncode == 1 and out.stderr.strip().startswith("fleetd: agent_ttl: ")
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["", "ten"])
def test_bad_flag_value_names_the_key(value: str):
    out = run("--engine-reconcile-interval", value, "--etcd-servers", "http://127.0.0.1:9")
    assert out.returncode == 1 and "engine_reconcile_interval" in out.stderr, out.stderr
