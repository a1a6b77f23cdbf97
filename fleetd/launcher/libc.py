"""ctypes bindings for the Linux calls Python 3.11 lacks (unshare, setns, mount, ...).

Every wrapper raises OSError(errno, strerror, path) on failure, like the os module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import re

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWCGROUP = 0x02000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# <linux/mount.h>, <fcntl.h>
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x00100000
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000

# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# syscall numbers: pivot_root differs per architecture, mount_setattr is 442 everywhere
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217,
               "armv7l": 218, "i686": 217}
SYS_MOUNT_SETATTR = 442
# open_tree and move_mount are the same on every architecture (the unified table)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429


def _check(result: int, what: str, path: str | None = None) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str | os.PathLike, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           "mount", os.fspath(target))


def umount2(target: str | os.PathLike, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", os.fspath(target))


def pivot_root(new_root: str | os.PathLike, put_old: str | os.PathLike) -> None:
    nr = _PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root",
           os.fspath(new_root))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_readonly_recursive(path: str | os.PathLike) -> None:
    """Make the mount at `path` and every mount below it read-only.

    mount_setattr(2) (Linux 5.12+) does it in one call; where it is missing or filtered
    (ENOSYS, or EPERM from a seccomp filter) each mount is remounted read-only.
    """
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    res = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), _b(path),
                        ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr)))
    if res == 0:
        return
    if ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM):
        _check(res, "mount_setattr", os.fspath(path))
    remount_readonly_tree(path)


def remount_readonly_tree(path: str | os.PathLike) -> None:
    """Read-only remount of the mount at `path` and of every mount below it."""
    top = os.path.realpath(path)
    for mountpoint in [top] + [m for m in _mountpoints() if m.startswith(top.rstrip("/") + "/")]:
        mount(None, mountpoint, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _mountpoints() -> list[str]:
    """Mount points of this mount namespace, in mount order (from /proc/self/mountinfo)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            field = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as octal
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field))
    return points


def open_tree(path: str | os.PathLike, flags: int) -> int:
    """open_tree(2): with OPEN_TREE_CLONE a detached copy of the mount (tree) at `path`."""
    return _check(_libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD), _b(path),
                                ctypes.c_uint(flags | os.O_CLOEXEC)), "open_tree", os.fspath(path))


def mount_setattr_idmap(tree_fd: int, userns_fd: int) -> None:
    """Make the detached mount tree `tree_fd` idmapped through the user namespace `userns_fd`."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(tree_fd), b"",
                         ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def move_mount(tree_fd: int, target: str | os.PathLike) -> None:
    """Attach the detached mount tree `tree_fd` at `target`."""
    _check(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(tree_fd), b"",
                         ctypes.c_int(AT_FDCWD), _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
           "move_mount", os.fspath(target))


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")
