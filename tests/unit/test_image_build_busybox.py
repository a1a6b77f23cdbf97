"""`fleetctl image build-busybox`: the documented way to a first image without Python. As a
directory or a .tar it imports into the store as the same image (same digest) as the library's
build; a missing binary or a non-empty destination is one error line and exit status 1."""

from __future__ import annotations

import os
import subprocess

import pytest

from _forked_cli import shared
from fleetd.images import ImageStore, build_busybox_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image imports keep owners: needs root")


def fleetctl(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fleetctl ARGS` in a process of its own, forked from the worker's fleetctl fork
    server (tests/_forked_cli.py, entry "fast": the same entry point, its imports done once)."""
    return shared().run(list(args), cwd=os.getcwd(), env=dict(os.environ), timeout=120, entry="fast")


def test_directory_and_tar_are_the_same_image(tmp_path):
    for dest in ("rootfs", "busybox.tar"):
        out = fleetctl("image", "build-busybox", str(tmp_path / dest))
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"Built busybox image in {tmp_path / dest}\n"
    assert (tmp_path / "rootfs" / "bin" / "httpd").is_symlink()
    reference = ImageStore(tmp_path / "s0").import_path(build_busybox_image(tmp_path / "lib"), "busybox")
    from_dir = ImageStore(tmp_path / "s1").import_path(tmp_path / "rootfs", "busybox")
    from_tar = ImageStore(tmp_path / "s2").import_path(tmp_path / "busybox.tar", "busybox")
    assert from_dir.digest == from_tar.digest == reference.digest
    assert (from_tar.rootfs / "www" / "index.html").read_text().startswith("<html>")


def test_errors_are_one_line(tmp_path):
    missing = fleetctl("image", "build-busybox", str(tmp_path / "x"), "--busybox", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr == f"Error: {tmp_path / 'nope'}: busybox binary not found (install busybox-static)\n"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    busy = fleetctl("image", "build-busybox", str(tmp_path / "full"))
    assert busy.returncode == 1 and busy.stderr.strip().endswith("destination directory is not empty")
    assert not (tmp_path / "x").exists()  # nothing made when the binary is missing
