"""Build a minimal busybox root filesystem from Debian's busybox-static.

The result (a plain directory, to be imported with ``ImageStore.import_path``)::

    bin/busybox          copy of the static binary
    bin/<applet>         relative symlinks "busybox" for every applet (sh, httpd, ...)
    etc/passwd, group    root (0) and nobody (65534)
    etc/hosts            localhost entries
    www/index.html       a page for httpd tests
    tmp/ (1777), root/ (0700), proc/ sys/ dev/ (mount points)

Everything is written deterministically (fixed modes, root-owned), so two builds from
the same binary have the same image digest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fleetd.errors import ImageError

DEFAULT_BUSYBOX = Path("/bin/busybox")

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
INDEX_HTML = "<html><body><h1>fleet busybox image</h1></body></html>\n"


def applets(busybox: Path = DEFAULT_BUSYBOX) -> list[str]:
    """The applet names compiled into `busybox` (``busybox --list``)."""
    try:
        out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"{busybox}: cannot list applets: {exc}") from None
    return sorted({a.strip() for a in out.split() if a.strip() and "/" not in a} - {"busybox"})


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    os.chmod(path, mode)


def build_busybox_image(dest_dir: str | os.PathLike, busybox: str | os.PathLike = DEFAULT_BUSYBOX) -> Path:
    """Create the busybox rootfs in `dest_dir` (must be absent or empty); return it."""
    dest = Path(dest_dir)
    binary = Path(busybox)
    if not binary.is_file():
        raise ImageError(f"{binary}: busybox binary not found (install busybox-static)")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ImageError(f"{dest}: destination directory is not empty")
    os.chmod(dest, 0o755)
    for d, mode in (("bin", 0o755), ("etc", 0o755), ("www", 0o755), ("tmp", 0o1777),
                    ("root", 0o700), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):
        (dest / d).mkdir()
        os.chmod(dest / d, mode)
    shutil.copyfile(binary, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    for applet in applets(binary):
        os.symlink("busybox", dest / "bin" / applet)
    _write(dest / "etc" / "passwd", PASSWD)
    _write(dest / "etc" / "group", GROUP)
    _write(dest / "etc" / "hosts", HOSTS)
    _write(dest / "www" / "index.html", INDEX_HTML)
    return dest
