"""No dead code in fleetd, fleetctl, fleetlab: vulture over the packages, with the tests counting
as users and the short whitelist tests/vulture_whitelist.py (each entry says who uses it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VULTURE_ARGS = [
    "fleetd", "fleetctl", "fleetlab", "tests", "tests/vulture_whitelist.py",
    "--min-confidence", "60",
    # click commands and pytest fixtures/hooks are used by their frameworks
    "--ignore-decorators", "@*.command,@*.group,@*.fixture",
    "--ignore-names", "pytest_*",
]


def _vulture() -> str:
    found = shutil.which("vulture", path=str(Path(sys.executable).parent)) or shutil.which("vulture")
    if found is None:
        pytest.fail("vulture not found: install the test extras (pip install -e '.[test]')")
    return found


def _report(*paths: str) -> list[str]:
    run = subprocess.run([_vulture(), *VULTURE_ARGS, *paths], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 3), run.stderr  # 3: dead code found
    return run.stdout.splitlines()


def test_no_dead_code_in_the_packages():
    # tests are scanned as users of the packages' names; their own leftovers are not judged here
    dead = [line for line in _report() if not line.startswith("tests/")]
    assert not dead, "dead code (delete it, or whitelist it in tests/vulture_whitelist.py saying who uses it):\n" + "\n".join(dead)


def test_vulture_finds_dead_code(tmp_path):
    """The check itself can fail."""
    (tmp_path / "mod.py").write_text("def used():\n    return 1\n\n\ndef never_called():\n    return 2\n\n\nused()\n")
    run = subprocess.run([_vulture(), str(tmp_path / "mod.py")], capture_output=True, text=True, timeout=60)
    assert "never_called" in run.stdout and "used'" not in run.stdout
