"""The container side: runs in the forked child, which is PID 1 of a new PID namespace.

:func:`enter_and_exec` sets up the remaining namespaces and the root filesystem, then
execs the command (so the command itself is PID 1). It never returns: on failure it
writes "<exit code>\\t<message>" to the error pipe and exits with that code.

Filesystem, built in a private mount namespace (so nothing is ever visible on the host
and everything disappears with the namespace):

* overlay: lower = image rootfs (read-only), upper/work in the state dir; merged root
  at ``<state>/rootfs``, which becomes "/" by pivot_root(".", ".") + detach of the old root;
* /proc: a fresh proc for the new PID namespace; /proc/{sys,sysrq-trigger,irq,bus,fs}
  read-only and /proc/{kcore,keys,timer_list,sched_debug} masked (unless privileged);
* /dev: a tmpfs with null zero full random urandom tty bind-mounted from the host's
  /dev, a new devpts instance (+ ptmx link), /dev/shm, /dev/mqueue, fd/stdin/... links;
* /sys: sysfs mounted read-only (a read-only recursive bind of the host's as fallback);
* --bind mounts last (recursive; ":ro" makes the whole subtree read-only);
* with a user namespace (--private-users, the default), the image is the overlay's lower layer
  through an idmapped mount or as a cached copy with shifted owners (see
  :mod:`fleetd.launcher.userns`); /dev and /dev/shm belong to the container's root;
* with --init, the init binary (tini-static) bind-mounted read-only on /dev/init: it is exec'd
  as PID 1 and runs the command as PID 2 (the command is looked up first, so that a missing
  one still fails with 127 and one line).

Then, in this order: sethostname; join the user namespace (every mount and namespace above
stays owned by the host's user namespace, so root inside cannot undo any of it); chdir; drop
the capability bounding set to Docker's default set; setgroups/setgid/setuid; no_new_privs and
the seccomp filter (:mod:`fleetd.launcher.seccomp`) — the last two not with --privileged.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from fleetd.errors import LaunchError
from fleetd.images.rootpath import resolve_in_root
from fleetd.launcher import libc, userns
from fleetd.launcher.seccomp import Filter
from fleetd.launcher.spec import INIT_IN_CONTAINER, BindMount, ContainerSpec
from fleetd.launcher.idrange import IdRange

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_MASKED = ("kcore", "keys", "timer_list", "sched_debug")
# docker's default capability set (capability numbers from <linux/capability.h>)
DEFAULT_CAPS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class UsernsPlan:
    """The container's user namespace (an fd for setns) and its image's lower directory."""

    fd: int
    ids: IdRange
    lower: Path        # the image rootfs (idmap) or its shifted copy
    idmap: bool        # mount `lower` idmapped through `fd`


def _fail(err_fd: int, code: int, message: str) -> None:
    try:
        os.write(err_fd, f"{code}\t{message}".encode(errors="replace"))
    finally:
        os._exit(code)


def enter_and_exec(spec: ContainerSpec, *, err_fd: int, alive_fd: int, netns_fd: int | None,
                   parent_mask: set[signal.Signals], userns_plan: UsernsPlan | None = None,
                   seccomp_filter: Filter | None = None) -> None:
    """Child entry point after fork(); never returns."""
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        _exit_if_parent_gone(alive_fd)
        _setup(spec, netns_fd, userns_plan, seccomp_filter)
        _exec(spec, err_fd, parent_mask, alive_fd)
    except LaunchError as exc:
        _fail(err_fd, exc.exit_code, str(exc))
    except BaseException as exc:  # noqa: BLE001 - anything here must end the child
        _fail(err_fd, 125, f"container setup failed: {exc}")
    os._exit(125)


def _exit_if_parent_gone(alive_fd: int) -> None:
    """The supervisor holds the write end open; EOF means it died before PDEATHSIG was set."""
    readable, _, _ = select.select([alive_fd], [], [], 0)
    if readable:
        os._exit(125)


def _lower_dir(spec: ContainerSpec, plan: UsernsPlan | None) -> Path:
    if plan is None:
        return spec.rootfs
    if not plan.idmap:
        return plan.lower
    target = spec.state_dir / "lower"
    tree = userns.idmapped_tree(plan.lower, plan.fd)
    try:
        libc.move_mount(tree, target)
    finally:
        os.close(tree)
    return target


def _setup(spec: ContainerSpec, netns_fd: int | None, plan: UsernsPlan | None,
           seccomp_filter: Filter | None) -> None:
    if netns_fd is not None:
        libc.setns(netns_fd, libc.CLONE_NEWNET)
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
    if spec.net.kind == "none":
        flags |= libc.CLONE_NEWNET
    libc.unshare(flags)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    if spec.net.kind == "none":
        _loopback_up()
    state = spec.state_dir
    root = state / "rootfs"
    lower = _lower_dir(spec, plan)
    libc.mount("overlay", root, "overlay", 0,
               f"lowerdir={lower},upperdir={state / 'upper'},workdir={state / 'work'}")
    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    _mount_proc(root, spec.privileged)
    _mount_dev(root, spec.init, plan.ids if plan else None)
    _mount_sys(root)
    for bind in spec.binds:
        _bind(root, bind)
    _pivot(root)
    libc.sethostname(spec.hostname)
    if plan is not None:
        # from here on root is the range's first uid; joining resets the bounding set to full
        libc.setns(plan.fd, libc.CLONE_NEWUSER)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    _chdir(spec.workdir)
    if not spec.privileged:
        for cap in range(cap_last + 1):
            if cap not in DEFAULT_CAPS:
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
    user = spec.user
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    # a credential change clears the parent-death signal: set it again
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if not spec.privileged:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp_filter is not None:
        seccomp_filter.load()


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def _mountpoint(root: Path, inside: str, *, directory: bool = True) -> Path:
    path = resolve_in_root(root, inside, make_dirs=True)
    if directory:
        if not path.is_dir():
            if os.path.lexists(path):
                raise LaunchError(f'cannot mount on "{inside}": not a directory in the image')
            path.mkdir(mode=0o755)
    elif not os.path.lexists(path):
        path.touch(mode=0o644)
    elif path.is_dir():
        raise LaunchError(f'cannot mount a file on "{inside}": it is a directory in the image')
    return path


def _mount_proc(root: Path, privileged: bool) -> None:
    proc = _mountpoint(root, "/proc")
    libc.mount("proc", proc, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    if privileged:
        return
    for name in PROC_READONLY:
        path = proc / name
        if os.path.exists(path):
            libc.mount(os.fspath(path), path, None, libc.MS_BIND | libc.MS_REC)
            libc.make_readonly_recursive(path)
    for name in PROC_MASKED:
        path = proc / name
        if os.path.isfile(path):
            libc.mount("/dev/null", path, None, libc.MS_BIND)


def _mount_dev(root: Path, init: Path | None = None, ids: IdRange | None = None) -> None:
    dev = _mountpoint(root, "/dev")
    owner = f",uid={ids.base},gid={ids.base}" if ids else ""
    tty_gid = ids.base + 5 if ids else 5
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_STRICTATIME,
               "mode=755,size=65536k" + owner)
    for name in DEVICES:
        target = dev / name
        target.touch(mode=0o666)
        libc.mount(f"/dev/{name}", target, None, libc.MS_BIND)
    (dev / "pts").mkdir(mode=0o755)
    libc.mount("devpts", dev / "pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               f"newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}")
    os.symlink("pts/ptmx", dev / "ptmx")
    (dev / "shm").mkdir(mode=0o1777)
    libc.mount("shm", dev / "shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
               "mode=1777,size=65536k" + owner)
    (dev / "mqueue").mkdir(mode=0o755)
    try:
        libc.mount("mqueue", dev / "mqueue", "mqueue",
                   libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    except OSError:
        os.rmdir(dev / "mqueue")  # no mqueue filesystem: leave it out
    if init is not None:
        target = dev / INIT_IN_CONTAINER.rsplit("/", 1)[1]
        target.touch(mode=0o755)
        libc.mount(os.fspath(init), target, None, libc.MS_BIND)
        libc.mount(None, target, None,
                   libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / name)
    if os.isatty(0):
        try:
            (dev / "console").touch(mode=0o620)
            libc.mount(os.ttyname(0), dev / "console", None, libc.MS_BIND)
        except OSError:
            pass


def _mount_sys(root: Path) -> None:
    sys_dir = _mountpoint(root, "/sys")
    try:
        libc.mount("sysfs", sys_dir, "sysfs",
                   libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    except PermissionError:
        libc.mount("/sys", sys_dir, None, libc.MS_BIND | libc.MS_REC)
        libc.make_readonly_recursive(sys_dir)


def _bind(root: Path, bind: BindMount) -> None:
    label = f'"{bind.source}:{bind.target}"'
    try:
        target = _mountpoint(root, bind.target, directory=bind.source.is_dir())
        libc.mount(os.fspath(bind.source), target, None, libc.MS_BIND | libc.MS_REC)
        if bind.readonly:
            libc.make_readonly_recursive(target)
    except LaunchError as exc:
        raise LaunchError(f"bind mount {label} failed: {exc}") from None
    except OSError as exc:
        raise LaunchError(f"bind mount {label} failed: "
                          f"{os.strerror(exc.errno) if exc.errno else exc}") from None


def _pivot(root: Path) -> None:
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def _chdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, mode=0o755, exist_ok=True)
        os.chdir(workdir)
    except OSError as exc:
        raise LaunchError(f'cannot use working directory "{workdir}": {exc.strerror}') from None


def _exec(spec: ContainerSpec, err_fd: int, parent_mask: set[signal.Signals],
          alive_fd: int) -> None:
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, parent_mask)
    env = {k: v for k, v in spec.env}
    argv = list(spec.command)
    cmd = argv[0]
    if "/" in cmd:
        candidates = [cmd]
    else:
        candidates = [os.path.join(d or ".", cmd) for d in spec.env_value("PATH").split(":")]
    where = f"image {spec.image_ref}"
    if spec.init is not None:
        _check_command(candidates, cmd, where, err_fd)
        candidates = [INIT_IN_CONTAINER]
        argv = [INIT_IN_CONTAINER, "--", *argv]
    if spec.detach:
        # the launcher exits after the hand-over: the container must outlive it from here
        libc.prctl(libc.PR_SET_PDEATHSIG, 0)
        _exit_if_parent_gone(alive_fd)
    denied: OSError | None = None
    exists = False
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            if os.path.lexists(path):
                exists = True
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if exc.errno == errno.EACCES:
                denied = denied or exc
                continue
            denied = exc
            break
    _exec_failed(err_fd, cmd if spec.init is None else INIT_IN_CONTAINER, where, denied, exists)


def _exec_failed(err_fd: int, cmd: str, where: str, denied: OSError | None, exists: bool) -> None:
    if denied is not None:
        _fail(err_fd, 126, f'command "{cmd}" cannot be executed in {where}: '
                           f"{os.strerror(denied.errno or 0)}")
    if exists:
        _fail(err_fd, 127, f'command "{cmd}" cannot be executed in {where}: its interpreter '
                           "(ELF loader or #! line) is missing")
    _fail(err_fd, 127, f'command "{cmd}" not found in {where}')


def _check_command(candidates: list[str], cmd: str, where: str, err_fd: int) -> None:
    """With an init, the command is exec'd by the init: find it first (as execvp would), so
    that a missing or non-executable command fails here with its one-line message."""
    denied: OSError | None = None
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            denied = denied or exc
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return
        denied = denied or OSError(errno.EACCES, os.strerror(errno.EACCES))
    _exec_failed(err_fd, cmd, where, denied, False)
