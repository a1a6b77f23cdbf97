"""Safe extraction of one tar layer onto an image root, with OCI/AUFS whiteouts.

Rules (the same for a plain rootfs tarball, a directory import and every OCI layer):

* member names are relative to the image root; a leading "/" and "./" are dropped, a
  ".." component anywhere rejects the whole archive (UnsafeArchive);
* parent directories are resolved with :func:`resolve_in_root`, so a symlink already in
  the image (absolute or relative) can only ever lead to a place *inside* the root; the
  member's own last component is never followed: an existing entry is replaced;
* hard links must point at an existing member inside the root (".." rejected);
* ``.wh.NAME`` removes NAME coming from lower layers, ``.wh..wh..opq`` makes its
  directory opaque (everything in it that this layer did not write is removed); other
  ``.wh..wh.*`` entries (AUFS bookkeeping) are ignored;
* permission bits (including setuid/setgid/sticky) and numeric owners are kept, names of
  owners (uname/gname) are ignored; device nodes are created when permitted, else skipped.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from fleetd.errors import ImageError, UnsafeArchive
from fleetd.images.rootpath import resolve_in_root

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def _normalize(name: str, source: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{source}: member {name!r} escapes the image root (\"..\" in path)")
    return "/".join(parts)


class _LayerApplier:
    def __init__(self, dest: Path, source: str) -> None:
        self.dest = dest
        self.source = source
        # host paths written by this layer, and their ancestors (for opaque directories)
        self.written: set[str] = set()
        self.ancestors: set[str] = set()
        self.opaque_dirs: list[str] = []
        self.dir_times: list[tuple[str, int]] = []

    # -- helpers ----------------------------------------------------------------------

    def _target(self, rel: str) -> str:
        """Host path for member `rel`: parents resolved inside the root, last part kept."""
        if not rel:
            return os.fspath(self.dest)
        parent, _, base = rel.rpartition("/")
        try:
            parent_path = resolve_in_root(self.dest, parent, make_dirs=True)
            if not os.path.lexists(parent_path):
                os.mkdir(parent_path, 0o755)
        except OSError as exc:
            raise ImageError(f"{self.source}: cannot create parent of {rel!r}: "
                             f"{exc.strerror or exc}") from None
        if not parent_path.is_dir():
            raise ImageError(f"{self.source}: parent of {rel!r} is not a directory")
        return os.path.join(parent_path, base)

    def _mark_written(self, path: str) -> None:
        self.written.add(path)
        parent = os.path.dirname(path)
        dest = os.fspath(self.dest)
        while len(parent) > len(dest) and parent not in self.ancestors:
            self.ancestors.add(parent)
            parent = os.path.dirname(parent)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    @staticmethod
    def _set_owner_mode(path: str, info: tarfile.TarInfo, *, symlink: bool = False) -> None:
        os.lchown(path, info.uid, info.gid)
        if not symlink:
            os.chmod(path, info.mode & 0o7777)
        os.utime(path, (info.mtime, info.mtime), follow_symlinks=False)

    # -- members ----------------------------------------------------------------------

    def apply(self, tf: tarfile.TarFile) -> None:
        for info in tf:
            self.member(tf, info)
        self._finish()

    def member(self, tf: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        rel = _normalize(info.name, self.source)
        base = rel.rpartition("/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, base)
            return
        path = self._target(rel)
        if info.isdir():
            self._dir(path, info)
        elif info.isreg():
            self._file(tf, path, info)
        elif info.issym():
            self._remove(path)
            os.symlink(info.linkname, path)
            self._set_owner_mode(path, info, symlink=True)
        elif info.islnk():
            self._hardlink(path, info)
        elif info.ischr() or info.isblk() or info.isfifo():
            self._special(path, info)
        else:
            raise ImageError(f"{self.source}: member {info.name!r} has unsupported type "
                             f"{info.type!r}")
        self._mark_written(path)

    def _whiteout(self, rel: str, base: str) -> None:
        parent_rel = rel.rpartition("/")[0]
        if base == OPAQUE_MARKER:
            # the marker implies that its directory exists in this layer
            opaque = self._target(parent_rel)
            if not os.path.lexists(opaque):
                os.mkdir(opaque, 0o755)
            self.opaque_dirs.append(opaque)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content
        try:
            parent = resolve_in_root(self.dest, parent_rel)
        except OSError:
            return  # the parent is not a directory: nothing below it to hide
        target = os.path.join(parent, base[len(WHITEOUT_PREFIX):])
        if target not in self.written:
            self._remove(target)

    def _dir(self, path: str, info: tarfile.TarInfo) -> None:
        if path != os.fspath(self.dest):
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(path)
                    os.mkdir(path, 0o700)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
        os.lchown(path, info.uid, info.gid)
        os.chmod(path, info.mode & 0o7777)
        self.dir_times.append((path, info.mtime))

    def _file(self, tf: tarfile.TarFile, path: str, info: tarfile.TarInfo) -> None:
        self._remove(path)
        src = tf.extractfile(info)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, 1 << 20)
            os.fchown(out.fileno(), info.uid, info.gid)
            os.fchmod(out.fileno(), info.mode & 0o7777)
        os.utime(path, (info.mtime, info.mtime), follow_symlinks=False)

    def _hardlink(self, path: str, info: tarfile.TarInfo) -> None:
        link_rel = _normalize(info.linkname, self.source)
        if not link_rel:
            raise UnsafeArchive(f"{self.source}: hard link {info.name!r} points at the root")
        target = self._target(link_rel)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise ImageError(f"{self.source}: hard link {info.name!r} points at missing "
                             f"{info.linkname!r}") from None
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"{self.source}: hard link {info.name!r} points at a directory")
        if target == path:
            return
        self._remove(path)
        os.link(target, path, follow_symlinks=False)

    def _special(self, path: str, info: tarfile.TarInfo) -> None:
        self._remove(path)
        if info.isfifo():
            kind = stat.S_IFIFO
            dev = 0
        else:
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            dev = os.makedev(info.devmajor, info.devminor)
        try:
            os.mknod(path, kind | (info.mode & 0o7777), dev)
        except PermissionError:
            return  # no CAP_MKNOD (e.g. inside a restricted container): skip the node
        self._set_owner_mode(path, info)

    # -- end of layer -----------------------------------------------------------------

    def _finish(self) -> None:
        keep = self.written | self.ancestors
        for opaque in self.opaque_dirs:
            if os.path.isdir(opaque) and not os.path.islink(opaque):
                self._clear_lower(opaque, keep)
        for path, mtime in reversed(self.dir_times):
            if os.path.isdir(path):
                os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _clear_lower(self, directory: str, keep: set[str]) -> None:
        for name in os.listdir(directory):
            child = os.path.join(directory, name)
            if child not in keep:
                self._remove(child)
            elif os.path.isdir(child) and not os.path.islink(child):
                self._clear_lower(child, keep)


def apply_layer(fileobj: BinaryIO, dest: Path, *, source: str) -> None:
    """Extract the (optionally gzip/bzip2/xz compressed) tar `fileobj` onto `dest`.

    `source` names the archive/layer in error messages. Raises UnsafeArchive for members
    escaping the root, ImageError for other bad content.
    """
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
            _LayerApplier(dest, source).apply(tf)
    except tarfile.TarError as exc:
        raise ImageError(f"{source}: not a valid tar archive: {exc}") from None
    except EOFError as exc:
        raise ImageError(f"{source}: truncated archive: {exc}") from None
