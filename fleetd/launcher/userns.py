"""User namespaces for fleet-run containers: the uid/gid range, the namespace, the image's view.

The range: :mod:`fleetd.launcher.idrange` (pure; the same allocation as the nspawn runtime's).

The namespace (:func:`create_userns`): the launcher forks a short-lived helper that
unshare(CLONE_NEWUSER)s; the launcher (host root) writes the helper's uid_map and gid_map,
keeps an fd of ``/proc/<helper>/ns/user`` and lets the helper exit. The container process
joins that namespace with setns() only at the end of its set-up — after every mount, the
pivot_root and sethostname were done with the host's privileges — so every other namespace of
the container (mount, UTS, IPC, PID, network) stays owned by the host's user namespace: root
in the container can neither mount nor change the hostname, whatever capabilities it holds.

The image's files (:func:`lower_dir_plan`): they are owned by host uids 0..N on disk, which a
process in the namespace would see as "nobody". Two ways to show them as 0..N inside:

* an idmapped mount (mount_setattr(MOUNT_ATTR_IDMAP), Linux 5.12+) of the image's rootfs as the
  overlay's lower layer: zero copies. Needs a filesystem that supports it (ext4, xfs, btrfs,
  tmpfs since 6.3 ...; not overlayfs, which is what a fleet-lab node's root is);
* elsewhere, a copy of the image with every owner shifted by BASE, kept in the image store
  (``<images>/userns/<digest-hex>-<base>/``) and reused by every later container of the same
  image and range; removed with the image (`ImageStore.remove`). Only for store images: a
  plain directory given as --image on such a filesystem is refused with a one-line error.

Files the container writes land in the overlay's upper directory owned by BASE+uid.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

from fleetd.errors import LaunchError
from fleetd.launcher import libc
from fleetd.launcher.idrange import IdRange

def create_userns(ids: IdRange) -> int:
    """A new user namespace mapping container 0.. to host ids.base..; returns an fd for setns().

    A helper child unshares, the launcher writes its maps (as host root, so setgroups stays
    allowed inside), opens its ns/user and lets it exit: the fd keeps the namespace alive."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(go_r, 1)     # EOF: the launcher is done with our maps
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise LaunchError("cannot create a user namespace (unshare(CLONE_NEWUSER) failed); "
                              "use --private-users=no")
        try:
            for kind in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{kind}", "w") as f:
                    f.write(ids.map_line())
            return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LaunchError(f"cannot map uids {ids} into the container's user namespace: "
                              f"{exc.strerror}") from None
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def idmapped_tree(path: Path, userns_fd: int) -> int:
    """A detached, recursive, idmapped copy of the mount tree at `path` (an fd for move_mount).
    OSError when the filesystem or the kernel cannot idmap it."""
    fd = libc.open_tree(path, libc.OPEN_TREE_CLONE | libc.AT_RECURSIVE)
    try:
        libc.mount_setattr_idmap(fd, userns_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def can_idmap(path: Path, userns_fd: int) -> bool:
    """Whether `path`'s filesystem takes an idmapped mount (tried on a detached copy: no trace)."""
    try:
        os.close(idmapped_tree(path, userns_fd))
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise


def _store_digest_hex(rootfs: Path, images_dir: Path) -> str | None:
    """The digest hex of a store image's rootfs (<images>/images/<hex>/rootfs), else None."""
    try:
        rel = rootfs.resolve().relative_to((images_dir / "images").resolve())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) == 2 and parts[1] == "rootfs" and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
        return parts[0]
    return None


def shifted_copy(rootfs: Path, images_dir: Path, ids: IdRange, image_ref: str) -> Path:
    """The cached copy of a store image with owners shifted by ids.base (made on first use)."""
    hexd = _store_digest_hex(rootfs, images_dir)
    if hexd is None:
        raise LaunchError(f'image directory "{image_ref}" is on a filesystem without idmapped '
                          "mounts: import it into the image store, or use --private-users=no")
    cache = images_dir / "userns" / f"{hexd}-{ids.base}-{ids.size}"
    final = cache / "rootfs"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f"tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        # cp -a keeps hard links, special files, xattrs and times; then every owner is shifted
        subprocess.run(["cp", "-a", "--", os.fspath(rootfs), os.fspath(staging)], check=True,
                       capture_output=True)
        shift_owners(staging, ids)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # another launcher made it first: use theirs
    except subprocess.CalledProcessError as exc:
        raise LaunchError(f"cannot copy image {image_ref} for its user namespace: "
                          f"{exc.stderr.decode(errors='replace').strip()}") from None
    except OSError as exc:
        raise LaunchError(f"cannot copy image {image_ref} for its user namespace: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def shifted_id(host_id: int, ids: IdRange) -> int:
    """Where an on-disk owner goes in the shifted copy (ids beyond the range: the range's nobody)."""
    return ids.base + (host_id if host_id < ids.size else min(65534, ids.size - 1))


def shift_owners(top: Path, ids: IdRange) -> None:
    """lchown every entry below `top` by ids.base, keeping set-uid/gid bits (chown clears them)."""
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.lstat(entry)
            os.lchown(entry, shifted_id(st.st_uid, ids), shifted_id(st.st_gid, ids))
            if not os.path.islink(entry) and st.st_mode & 0o6000:
                os.chmod(entry, st.st_mode & 0o7777)


def upper_owner(rootfs: Path, ids: IdRange | None, lower: Path | None = None) -> tuple[int, int]:
    """The owner to give the overlay's upper directory: the merged root takes it from there."""
    st = os.stat(lower or rootfs)
    if ids is None or lower is not None:   # a shifted copy is already owned inside the range
        return st.st_uid, st.st_gid
    return shifted_id(st.st_uid, ids), shifted_id(st.st_gid, ids)

