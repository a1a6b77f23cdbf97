"""fleetlab/bytecode.py: the checkout's packages byte-compiled on the host, because the lab's
nodes see the checkout read-only and their fleetd would compile every module at every start."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fleetlab.bytecode import compile_checkout


def package(root: Path, name: str, modules: dict[str, str]) -> list[Path]:
    (root / name).mkdir()
    paths = []
    for module, text in {"__init__": "", **modules}.items():
        path = root / name / f"{module}.py"
        path.write_text(text)
        paths.append(path)
    return paths


def test_missing_pyc_written_fresh_ones_left_a_broken_module_only_logged(tmp_path: Path, caplog):
    good = package(tmp_path, "fleetd", {"mod": "X = 1\n"})
    broken = package(tmp_path, "fleetlab", {"bad": "def (\n"})
    compile_checkout(tmp_path)  # fleetctl absent: skipped
    pyc = [Path(importlib.util.cache_from_source(str(p))) for p in good]
    assert all(p.is_file() for p in pyc)
    assert not Path(importlib.util.cache_from_source(str(broken[1]))).exists()
    assert "did not byte-compile" in caplog.text and "fleetlab" in caplog.text
    written = [p.stat().st_mtime_ns for p in pyc]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        compile_checkout(tmp_path, packages=("fleetd",))
    assert [p.stat().st_mtime_ns for p in pyc] == written  # up to date: not written again
    assert caplog.text == ""
