"""A filesystem tree as data: deterministic walk, content digest and tar stream.

The digest of an image is the digest of its *tree*, not of the archive it came from: the
same files (path, type, permission bits, numeric owner, content, link target, device
numbers) give the same digest whether they were imported from a directory, a tarball, an
OCI layout or an export of another node's store. Modification times, xattrs and the
hard-link structure are not part of it. This makes ``export`` + ``import`` on another
node verifiable: the receiver recomputes the digest and compares.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: Version tag hashed first, so that a change of the record format changes every digest.
DIGEST_FORMAT = b"fleet-image-tree-v1\n"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One node of a tree: its path relative to the root ("" for the root) and lstat."""

    rel: str
    path: str
    st: os.stat_result


def walk(root: str | os.PathLike) -> Iterator[Entry]:
    """Yield the root and everything below it, parents first, names sorted bytewise.

    Symlinks are reported, never followed. Sockets are skipped (they cannot be archived).
    """
    root_s = os.fspath(root)
    yield Entry("", root_s, os.lstat(root_s))
    yield from _walk_dir(root_s, "")


def _walk_dir(path: str, rel: str) -> Iterator[Entry]:
    names = sorted(os.listdir(path), key=os.fsencode)
    for name in names:
        child = os.path.join(path, name)
        child_rel = f"{rel}/{name}" if rel else name
        st = os.lstat(child)
        if stat.S_ISSOCK(st.st_mode):
            continue
        yield Entry(child_rel, child, st)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(child, child_rel)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _type_char(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    if stat.S_ISFIFO(mode):
        return "p"
    raise ValueError(f"unsupported file type {mode:o}")


def tree_digest(root: str | os.PathLike) -> tuple[str, int]:
    """("sha256:<hex>", total bytes of regular files) of the tree at `root`."""
    h = hashlib.sha256(DIGEST_FORMAT)
    size = 0
    seen_inodes: set[tuple[int, int]] = set()
    for entry in walk(root):
        mode = entry.st.st_mode
        kind = _type_char(mode)
        if kind == "f":
            extra = file_sha256(entry.path)
            if (entry.st.st_dev, entry.st.st_ino) not in seen_inodes:
                seen_inodes.add((entry.st.st_dev, entry.st.st_ino))
                size += entry.st.st_size
        elif kind == "l":
            extra = os.readlink(entry.path)
        elif kind in "cb":
            extra = f"{os.major(entry.st.st_rdev)},{os.minor(entry.st.st_rdev)}"
        else:
            extra = ""
        record = "\0".join((kind, entry.rel or ".", f"{stat.S_IMODE(mode):o}",
                            str(entry.st.st_uid), str(entry.st.st_gid), extra))
        h.update(os.fsencode(record) + b"\n")
    return "sha256:" + h.hexdigest(), size


def _tarinfo(entry: Entry, hardlinks: dict[tuple[int, int], str]) -> tarfile.TarInfo:
    st = entry.st
    info = tarfile.TarInfo(entry.rel or ".")
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in hardlinks:
            info.type = tarfile.LNKTYPE
            info.linkname = hardlinks[key]
        else:
            if st.st_nlink > 1:
                hardlinks[key] = info.name
            info.type = tarfile.REGTYPE
            info.size = st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(entry.path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    return info


def tar_stream(root: str | os.PathLike) -> Iterator[bytes]:
    """The tree at `root` as an uncompressed POSIX (pax) tar, in chunks of at most 1 MiB.

    Memory use is bounded by the chunk size. Entry names are relative ("bin/busybox"),
    the root itself is the entry "." (it carries the root's mode and owner).
    """
    hardlinks: dict[tuple[int, int], str] = {}
    written = 0
    for entry in walk(root):
        info = _tarinfo(entry, hardlinks)
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        written += len(header)
        yield header
        if info.type == tarfile.REGTYPE and info.size:
            remaining = info.size
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                while remaining > 0:
                    chunk = f.read(min(CHUNK, remaining))
                    if not chunk:
                        raise OSError(f"{entry.path}: file shrank while being exported")
                    remaining -= len(chunk)
                    written += len(chunk)
                    yield chunk
            pad = -info.size % tarfile.BLOCKSIZE
            if pad:
                written += pad
                yield b"\0" * pad
    end = b"\0" * (2 * tarfile.BLOCKSIZE)
    written += len(end)
    yield end + b"\0" * (-written % tarfile.RECORDSIZE)


class IterReader:
    """A read-only binary file object over an iterator of bytes chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n if n is not None and n >= 0 else None
        while want is None or want > 0:
            if self._pos >= len(self._buf):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buf, self._pos = chunk, 0
                continue
            end = len(self._buf) if want is None else min(len(self._buf), self._pos + want)
            parts.append(self._buf[self._pos:end])
            if want is not None:
                want -= end - self._pos
            self._pos = end
        return b"".join(parts)


def copy_tree_as_tar(src: Path) -> IterReader:
    """A file object reading `src` as a tar stream (for import through the extractor)."""
    return IterReader(tar_stream(src))
