"""The container's default seccomp filter, built and loaded with libseccomp (through ctypes).

fleet-run needs mount(2), pivot_root(2), unshare(2) and setns(2) to build a container, so a
filter on its systemd unit (SystemCallFilter=) cannot deny them to the container: the launcher
loads its own filter in the container's process, after the set-up and right before the exec,
and it stays on every process of the container (seccomp filters are inherited and cannot be
removed). Under a fleet unit it comes on top of the unit's own SystemCallFilter=.

Denied with EPERM (the list is :data:`DENIED`):

* systemd's groups the unit denies too: @clock @cpu-emulation @debug @module @obsolete
  @raw-io @swap (members as systemd 252 lists them), and @reboot;
* what builds or leaves a container: @mount without chroot (mount, umount2, pivot_root, the new
  mount API), unshare, setns, and clone() with a namespace flag (CLONE_NEWUSER etc.; clone3,
  whose flags a filter cannot see, answers ENOSYS so that libc falls back to clone) — so no
  nested user namespace either, the door most kernel exploits from unprivileged code use;
* @keyring (the kernel keyrings are not namespaced), bpf, userfaultfd, open_by_handle_at
  (the "shocker" escape), acct, quotactl, nfsservctl, and io_uring (as Docker's default).

System calls a libseccomp of this machine does not know on this architecture are skipped.
The filter covers the native ABI only: a system call of another ABI (i386 or x32 code on
x86_64) kills the process, as the unit's SystemCallArchitectures=native does.
--privileged loads no filter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import lru_cache

from fleetd.launcher import libc

SYSTEMD_GROUPS = {
    "@clock": ("adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64",
               "settimeofday"),
    "@cpu-emulation": ("modify_ldt", "subpage_prot", "switch_endian", "vm86", "vm86old"),
    "@debug": ("lookup_dcookie", "perf_event_open", "pidfd_getfd", "ptrace", "rtas",
               "s390_runtime_instr", "sys_debug_setcontext"),
    "@module": ("delete_module", "finit_module", "init_module"),
    "@obsolete": ("_sysctl", "afs_syscall", "bdflush", "break", "create_module", "ftime",
                  "get_kernel_syms", "getpmsg", "gtty", "idle", "lock", "mpx", "prof", "profil",
                  "putpmsg", "query_module", "security", "sgetmask", "ssetmask", "stime", "stty",
                  "sysfs", "tuxcall", "ulimit", "uselib", "ustat", "vserver"),
    "@raw-io": ("ioperm", "iopl", "pciconfig_iobase", "pciconfig_read", "pciconfig_write",
                "s390_pci_mmio_read", "s390_pci_mmio_write"),
    "@swap": ("swapoff", "swapon"),
    "@reboot": ("kexec_file_load", "kexec_load", "reboot"),
    "@mount": ("fsconfig", "fsmount", "fsopen", "fspick", "mount", "mount_setattr", "move_mount",
               "open_tree", "pivot_root", "umount", "umount2"),   # not chroot (Docker allows it)
    "@keyring": ("add_key", "keyctl", "request_key"),
}
OTHERS = ("unshare", "setns", "bpf", "userfaultfd", "open_by_handle_at", "acct", "quotactl",
          "nfsservctl", "io_uring_setup", "io_uring_enter", "io_uring_register")
#: every system call the default filter refuses with EPERM
DENIED: tuple[str, ...] = tuple(sorted({s for group in SYSTEMD_GROUPS.values() for s in group}
                                       | set(OTHERS)))
#: clone() flags refused (clone's first argument on every architecture but s390)
NAMESPACE_FLAGS = (libc.CLONE_NEWNS, libc.CLONE_NEWUTS, libc.CLONE_NEWIPC, libc.CLONE_NEWUSER,
                   libc.CLONE_NEWPID, libc.CLONE_NEWNET, libc.CLONE_NEWCGROUP)
#: answered with ENOSYS (libc then uses clone, which the filter can check)
NOT_IMPLEMENTED = ("clone3",)

# <seccomp.h>
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
_NR_SCMP_ERROR = -1


def scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class SeccompError(OSError):
    pass


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    try:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)   # (find_library runs ldconfig)
        except OSError:
            lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so", use_errno=True)
    except OSError as exc:
        raise SeccompError(errno.ENOENT, f"libseccomp not found ({exc}); Debian package "
                                         "libseccomp2, or --privileged") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    return lib


def resolve(name: str) -> int | None:
    """The native system call number of `name` as libseccomp knows it (None: not on this arch)."""
    nr = _lib().seccomp_syscall_resolve_name(name.encode())
    return None if nr == _NR_SCMP_ERROR or nr < 0 else nr


class Filter:
    """A libseccomp filter context. Built before the fork (libseccomp cannot be opened once the
    container's root is in place), loaded by the container process right before its exec."""

    def __init__(self, ctx: int) -> None:
        self._ctx = ctx

    def load(self) -> None:
        """Load into the calling thread (needs no_new_privs or CAP_SYS_ADMIN)."""
        rc = _lib().seccomp_load(self._ctx)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_load: {os.strerror(-rc)}")

    def release(self) -> None:
        if self._ctx:
            _lib().seccomp_release(self._ctx)
            self._ctx = 0


def default_filter() -> Filter:
    """The default filter (see the module's doc), not loaded yet."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompError(errno.ENOMEM, "seccomp_init failed")
    filt = Filter(ctx)
    try:
        eperm = scmp_act_errno(errno.EPERM)

        def add(name: str, action: int, cmps: list[_ArgCmp] | None = None) -> None:
            nr = resolve(name)
            if nr is None:
                return
            array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps or ()), array)
            if rc < 0:
                raise SeccompError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

        for name in DENIED:
            add(name, eperm)
        for flag in NAMESPACE_FLAGS:
            add("clone", eperm, [_ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)])
        for name in NOT_IMPLEMENTED:
            add(name, scmp_act_errno(errno.ENOSYS))
    except BaseException:
        filt.release()
        raise
    return filt
