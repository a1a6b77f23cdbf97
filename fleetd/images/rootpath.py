"""Resolve a path inside a root directory as if that directory were "/".

Symlinks met on the way are interpreted relative to the root (an absolute target
``/etc`` means ``ROOT/etc``) and ``..`` never climbs above the root, like a path lookup
after chroot(2). Used when extracting image layers (so that a symlink in the image can
never make a later member land outside the image) and by the launcher for mount points,
the working directory and user lookup inside an image.

The resolution is done with lstat/readlink from the caller's view of the filesystem; it
is safe against the content of the root, not against a concurrent writer racing us.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: Linux's MAXSYMLINKS.
MAX_SYMLINKS = 40


def _split(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def resolve_in_root(root: str | os.PathLike, path: str, *, follow_final: bool = True,
                    make_dirs: bool = False) -> Path:
    """Return the host path of `path` (absolute or relative to the root) inside `root`.

    `follow_final`: resolve a symlink in the last component too (False: return the path of
    the link itself). `make_dirs`: create missing intermediate directories (mode 0755).
    Missing components are otherwise allowed and kept verbatim (the result may not exist).
    Raises OSError(ELOOP) on symlink loops and NotADirectoryError when a non-directory is
    used as a directory.
    """
    root_path = os.fspath(root)
    todo = _split(path)
    done: list[str] = []
    links = 0
    while todo:
        comp = todo.pop(0)
        if comp == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root_path, *done, comp)
        last = not todo
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            if not last and make_dirs:
                os.mkdir(candidate, 0o755)
                done.append(comp)
                continue
            # The rest cannot contain symlinks: keep it lexically ("..": still clamped).
            done.append(comp)
            continue
        if stat.S_ISLNK(st.st_mode) and (follow_final or not last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = _split(target) + todo
            continue
        if not last and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory",
                                     "/" + "/".join(done + [comp]))
        done.append(comp)
    return Path(root_path, *done)
