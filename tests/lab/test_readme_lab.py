"""Every command the README (and docs/tutorial.md) shows, as shown: its ```sh blocks, in order,
in one bash (as a new user would paste them into a shell at the checkout), on a lab of this
test's own name.

* The lab's name comes from `$FLEETLAB_NAME` (the README's commands give no `--name`), so this
  test cannot touch a lab someone else runs; the lab is removed at the end whatever happens.
* `./scripts/test.sh` is the one command not run here: it is the suite this test belongs to
  (CI runs exactly that command, `.ci/run`; checked below).
* A block whose first line is a comment saying it "needs the vm set-up" (Vagrant, libvirt, a
  box: docs/vagrant.md) is skipped, and the test says so; a block that calls `vagrant` must be
  marked that way.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from fleetlab.lab import host_problem, list_labs

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TUTORIAL = REPO / "docs" / "tutorial.md"
VM_MARK = "needs the vm set-up"
NOT_RUN = {"./scripts/test.sh"}  # the suite itself (see the module's docstring)


def sh_blocks(text: str) -> list[str]:
    """The bodies of the ```sh fenced blocks, in order."""
    return [m.group(1) for m in re.finditer(r"^```sh\n(.*?)^```$", text, re.M | re.S)]


def command_of(line: str) -> str:
    return line.split("#", 1)[0].strip()


def script_of(blocks: list[str]) -> tuple[str, list[str]]:
    """The bash script of the runnable blocks, and the skipped blocks."""
    lines, skipped = [], []
    for block in blocks:
        first = block.splitlines()[0] if block.strip() else ""
        if first.lstrip().startswith("#") and VM_MARK in first:
            skipped.append(block)
            continue
        for line in block.splitlines():
            lines.append(f"# {line}" if command_of(line) in NOT_RUN else line)
    return "\n".join(lines) + "\n", skipped


def test_readme_blocks_are_found_and_vagrant_ones_are_marked():
    blocks = sh_blocks(README.read_text())
    assert len(blocks) >= 3
    assert any("./scripts/demo.sh" in b for b in blocks) and any("./scripts/test.sh" in b for b in blocks)
    for block in blocks:
        if re.search(r"\bvagrant\s+(up|ssh|destroy|halt|reload|provision|status|box|validate|global-status)\b", block):
            assert VM_MARK in block.splitlines()[0], f"a Vagrant block not marked '# {VM_MARK}':\n{block}"


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec \./scripts/test\.sh\b", ci, re.M), ci


def run_doc(doc: Path, tmp_path: Path) -> str:
    """Run the sh blocks of `doc` as shown, on a lab of a fresh name; return their output."""
    script, skipped = script_of(sh_blocks(doc.read_text()))
    for block in skipped:
        print(f"skipped (needs the vm set-up, docs/vagrant.md):\n{block}")
    name = f"de{secrets.token_hex(2)}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLEETCTL_", "ETCDCTL_", "VIRTUAL_ENV", "FLEETLAB_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p)
    env["FLEETLAB_NAME"] = name
    path = tmp_path / f"{doc.stem}.sh"
    path.write_text("set -euo pipefail\nset -x\n" + script)
    try:
        proc = subprocess.run(["bash", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
        print(proc.stdout[-6000:])
        assert proc.returncode == 0, f"{doc.name} commands failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
        assert name not in list_labs()  # the document's last command removed it
        return proc.stdout
    finally:
        subprocess.run([str(REPO / ".venv" / "bin" / "fleet-lab"), "down", "--name", name],
                       capture_output=True, timeout=300)


def test_every_readme_command_works_as_shown(tmp_path):
    if host_problem():
        pytest.skip(host_problem())
    out = run_doc(README, tmp_path)
    # what the demo and the cheat sheet show
    assert "X-Upstream:" in out and "fleet busybox image" in out
    assert re.search(r"^web\s+web@1\.service\s.*\spassing\b", out, re.M), out[-3000:]
    assert "Triggered global unit global-monitor.service start" in out
    assert "Destroyed box.service" in out and "Built busybox image in /tmp/busybox.tar" in out
    assert re.search(r"Imported busybox\.tar on [0-9a-f]{8} as bb: sha256:", out)
    assert "Hello World" in out  # fleetctl journal through the API driver (no ssh)


def test_every_tutorial_command_works_as_shown(tmp_path):
    if host_problem():
        pytest.skip(host_problem())
    out = run_doc(TUTORIAL, tmp_path)
    assert "Unit shop-log.service launched on " in out and "Destroyed shop-log.service" in out
    assert re.search(r"^web\s+3/3$", out, re.M), out[-3000:]
    assert "X-Upstream:" in out and "fleet busybox image" in out
