"""The launcher process itself: it builds the container, then supervises it or hands it over.

Two modes. With ``--detach`` (what a fleet unit uses: Type=forking, PIDFile=) nothing stays::

    systemd (the node's PID 1)
      `- fleet-run: forks the container, writes its PID 1 to init.pid (PIDFile=), exits
      `- tini (PID 1 of a new PID namespace; /dev/init, read-only): reaps, forwards signals
           `- CMD (PID 2) and whatever it starts

  systemd takes the container's PID 1 as the unit's main process (it became its parent when
  fleet-run exited, so it gets the exit status itself): stop (SIGTERM to the main
  process, SIGKILL to the cgroup after TimeoutStopSec=), kill, Restart= and exit codes are
  systemd's own. tini exits with the command's status, or 128+N when it died of signal N.
  The state directory stays until ``ExecStopPost=`` removes it; a later launcher of the same
  name refuses while the recorded PID 1 (init.pid + its start time) is alive.

Without it, in the foreground (a shell, tests), the launcher supervises::

    fleet-run (unit's main PID, host namespaces)  -- supervisor: signals, exit status
      `- CMD  (PID 1 of a new PID namespace; new mount/UTS/IPC[/net] namespaces)
           `- whatever CMD starts

* The supervisor never execs into the container: it stays the unit's main process, in
  the unit's cgroup, as does everything it forks (so the unit's cgroup limits apply).
* SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are forwarded to the
  container's PID 1. The kernel drops signals to a namespace's init that has no handler
  for them (a shell as PID 1 ignores SIGTERM), so after a stopping signal (TERM, INT,
  HUP, QUIT) the supervisor waits ``stop_timeout`` seconds and then SIGKILLs PID 1, like
  ``docker stop``. When PID 1 of a PID namespace exits, the kernel kills every other
  process in it.
* The container's PID 1 has PR_SET_PDEATHSIG=SIGKILL: if the supervisor dies (even by
  SIGKILL), the whole container dies with it.
* Exit status: the command's exit code, or 128+N when it was killed by signal N.
  Launcher errors: 125 (bad flag, image, mount, user, network), 126 (command cannot be
  executed), 127 (command not found).
* The overlay's upper and work directories live in ``<state_root>/<name>/`` and are
  removed when the container ends (unless keep_state). All mounts are made inside the
  container's private mount namespace, so none is ever left on the host.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import time
from pathlib import Path

from fleetd.errors import LaunchError
from fleetd.launcher import container, libc, seccomp, userns
from fleetd.launcher.container import UsernsPlan
from fleetd.launcher.spec import ContainerSpec

FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH}
STOPPING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): a PID plus it names one process.
    None if there is no such process or it is a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()


def _recorded_init_alive(state: Path) -> bool:
    """Whether the container PID 1 recorded in `state` (init.pid, init.start) still runs."""
    try:
        pid = int((state / "init.pid").read_text())
        started = (state / "init.start").read_text().strip()
    except (OSError, ValueError):
        return False
    return _start_time(pid) == started


def _record_init(state: Path, pid: int) -> None:
    (state / "init.start").write_text(f"{_start_time(pid)}\n")
    (state / "init.pid").write_text(f"{pid}\n")


def _lock_state_dir(state: Path, name: str) -> int:
    """Create `state` if needed and take its lock; the lock lives as long as the returned fd.

    A state dir whose lock nobody holds belongs to a launcher that died (e.g. SIGKILL):
    it is reused. The lock file is re-checked after locking, in case the previous owner
    removed the directory between our open() and flock().
    """
    for _ in range(10):
        state.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # removed under our feet by the previous owner: retry
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LaunchError(f'container name "{name}" is already in use ({state})') from None
        try:
            if os.fstat(fd).st_ino == os.stat(state / "lock").st_ino:
                if _recorded_init_alive(state):   # handed to systemd by an earlier launcher
                    os.close(fd)
                    raise LaunchError(f'container name "{name}" is already in use ({state})')
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise LaunchError(f"cannot lock state directory {state}")


def prepare_userns(spec: ContainerSpec) -> UsernsPlan | None:
    """The container's user namespace (fd) and how its image is shown inside (see
    :mod:`fleetd.launcher.userns`): an idmapped mount of the image where its filesystem takes
    one, else the cached shifted copy. None without --private-users."""
    if spec.userns is None:
        return None
    fd = userns.create_userns(spec.userns)
    try:
        try:
            idmap = userns.can_idmap(spec.rootfs, fd)
        except OSError as exc:
            raise LaunchError(f'image "{spec.image_ref}": cannot make an idmapped mount of '
                              f"{spec.rootfs}: {exc.strerror or exc}") from None
        if idmap:
            return UsernsPlan(fd, spec.userns, spec.rootfs, idmap=True)
        from fleetd.images.store import DEFAULT_ROOT

        lower = userns.shifted_copy(spec.rootfs, spec.images_dir or DEFAULT_ROOT, spec.userns,
                                    spec.image_ref)
        return UsernsPlan(fd, spec.userns, lower, idmap=False)
    except BaseException:
        os.close(fd)
        raise


def create_state_dir(spec: ContainerSpec, plan: UsernsPlan | None = None) -> tuple[Path, int]:
    """Make and lock <state_root>/<name>/ with fresh upper/, work/, lower/ and rootfs/.

    Returns the directory and the lock fd (keep it open while the container runs).
    """
    state = spec.state_dir
    spec.state_root.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock_state_dir(state, spec.name)
    try:
        for entry in os.listdir(state):         # leftovers of a launcher that was killed
            if entry != "lock":
                path = state / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        (state / "supervisor.pid").write_text(f"{os.getpid()}\n")
        (state / "image").write_text(f"{spec.image_ref}\n{spec.rootfs}\n")
        lower = os.stat(spec.rootfs)
        for sub in ("upper", "work", "rootfs", "lower"):
            (state / sub).mkdir(mode=0o755)
        # the merged root takes the upper directory's owner and mode: copy the image's (as
        # seen from the container's user namespace, if any)
        if plan is None:
            os.chown(state / "upper", lower.st_uid, lower.st_gid)
        else:
            os.chown(state / "upper", *userns.upper_owner(spec.rootfs, plan.ids,
                                                          None if plan.idmap else plan.lower))
        os.chmod(state / "upper", lower.st_mode & 0o7777)
    except BaseException:
        os.close(lock_fd)
        raise
    return state, lock_fd


def remove_state_dir(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run(spec: ContainerSpec) -> int:
    """Run the container to completion; return the launcher's exit code.

    Raises LaunchError for problems found before the container started. Safe to call
    from a long-lived process only if nothing else in it forks concurrently (it briefly
    switches the namespace for new children with unshare(CLONE_NEWPID)).
    """
    netns_fd = None
    if spec.net.kind == "netns":
        try:
            netns_fd = os.open(spec.net.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LaunchError(f'network namespace "{spec.net.path}": {exc.strerror}') from None
    plan = None
    try:
        plan = prepare_userns(spec)
        state, lock_fd = create_state_dir(spec, plan)
        if spec.detach:
            try:
                return _hand_over(spec, state, netns_fd, plan)
            except BaseException:
                if not spec.keep_state:
                    remove_state_dir(state)
                raise
            finally:
                os.close(lock_fd)
        try:
            return _run_in(spec, state, netns_fd, plan)
        finally:
            if not spec.keep_state:
                remove_state_dir(state)
            os.close(lock_fd)
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
        if plan is not None:
            os.close(plan.fd)


def _start_container(spec: ContainerSpec, netns_fd: int | None,
                     old_mask: set[signal.Signals], plan: UsernsPlan | None) -> tuple[int, int]:
    """Fork the container and wait until its PID 1 exec'd (or failed: LaunchError).

    Returns (pid, alive_w): the write end of the pipe whose EOF tells the child that the
    launcher died before the exec (close it when done)."""
    filt = None
    if not spec.privileged:
        try:
            filt = seccomp.default_filter()
        except OSError as exc:
            raise LaunchError(f"cannot build the seccomp filter: {exc.strerror or exc}") from None
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    pid = _fork_into_new_pidns()
    if pid == 0:
        os.close(err_r)
        os.close(alive_w)
        container.enter_and_exec(spec, err_fd=err_w, alive_fd=alive_r, netns_fd=netns_fd,
                                 parent_mask=old_mask, userns_plan=plan, seccomp_filter=filt)
    os.close(err_w)
    os.close(alive_r)
    if filt is not None:
        filt.release()
    try:
        error = _read_all(err_r)
        if error:
            os.waitpid(pid, 0)
            code_text, _, message = error.decode(errors="replace").partition("\t")
            raise LaunchError(message, int(code_text) if code_text.isdigit() else 125)
    except BaseException:
        os.close(alive_w)
        raise
    return pid, alive_w


def _hand_over(spec: ContainerSpec, state: Path, netns_fd: int | None,
               plan: UsernsPlan | None) -> int:
    """--detach: start the container, record its PID 1 in init.pid (the unit's PIDFile=), return 0.

    The unit is Type=forking: when this process exits the kernel re-parents the container's
    PID 1 to systemd, which then reads init.pid and takes it as the unit's main process, *its
    own child*. (Type=notify with MAINPID= from here would name a process that is not yet
    systemd's child: systemd 252 then marks it "alien" for good and, at stop, SIGKILLs the
    whole unit at once instead of waiting TimeoutStopSec= after SIGTERM.)"""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        pid, alive_w = _start_container(spec, netns_fd, old_mask, plan)
        try:
            _record_init(state, pid)
        finally:
            os.close(alive_w)
        return 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _run_in(spec: ContainerSpec, state: Path, netns_fd: int | None,
            plan: UsernsPlan | None) -> int:
    waited = FORWARDED | {signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        pid, alive_w = _start_container(spec, netns_fd, old_mask, plan)
        try:
            _record_init(state, pid)
            return _supervise(pid, spec.stop_timeout, waited)
        finally:
            os.close(alive_w)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _fork_into_new_pidns() -> int:
    """fork() with the child as PID 1 of a new PID namespace; the parent stays where it is.

    unshare(CLONE_NEWPID) only changes where *future children* go; setns() back to our
    own namespace right after the fork restores that for the rest of this process.
    """
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.unshare(libc.CLONE_NEWPID)
        try:
            pid = os.fork()
        finally:
            if os.getpid() != 1:
                libc.setns(own, libc.CLONE_NEWPID)
        return pid
    finally:
        os.close(own)


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _supervise(pid: int, stop_timeout: float, waited: set[signal.Signals]) -> int:
    deadline: float | None = None
    killed = False
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid == pid:
            return _exit_code(status)
        timeout = 1.0
        if deadline is not None and not killed:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        info = signal.sigtimedwait(waited, timeout)
        if info is not None and info.si_signo in FORWARDED:
            sig = signal.Signals(info.si_signo)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            if sig in STOPPING and deadline is None:
                deadline = time.monotonic() + stop_timeout
        if deadline is not None and not killed and time.monotonic() >= deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed = True
