"""fleet-run: run a command in a container made from a fleet image (no external runtime).

    fleet-run [--name N] --image NAME_OR_PATH [--images-dir DIR] [--hostname H]
              [--env K=V]... [--bind SRC:DST[:ro]]... [--workdir D] [--user U]
              [--net host|none|netns:PATH] [--keep-state] [--stop-timeout S]
              [--privileged] [--private-users yes|no|BASE[:SIZE]]
              [--init [--init-path PATH]] [--detach] -- CMD ARGS...

By default the container runs in its own user namespace (root inside is host uid BASE, an
unprivileged range derived from the name; see :mod:`fleetd.launcher.userns`), with Docker's
default capability bounding set, no_new_privs and a seccomp filter (see
:mod:`fleetd.launcher.seccomp`); --privileged drops all three (and the user namespace unless
--private-users asks for one).

Without --detach it stays in the foreground as the container's supervisor (see
:mod:`fleetd.launcher.supervisor` for signals, exit codes and cleanup). With --detach (a
unit's ExecStart with Type=forking and PIDFile=<state>/init.pid) it builds the container,
writes the PID of the container's PID 1 and exits: systemd itself supervises the container.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fleetd.errors import LaunchError
from fleetd.launcher import spec as specmod
from fleetd.launcher.supervisor import run
from fleetd.launcher.users import resolve_user
from fleetd.launcher.idrange import parse_private_users

PROG = "fleet-run"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise LaunchError(message, 125)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, allow_abbrev=False,
                description="Run a command in a container made from a fleet image.")
    p.add_argument("--name", help="container name (default: IMAGE-<random>)")
    p.add_argument("--image", required=True, help="image name, digest or rootfs directory")
    p.add_argument("--images-dir", type=Path, default=None,
                   help="image store root (default /var/lib/fleet/images)")
    p.add_argument("--hostname", help="hostname inside (default: the container name)")
    p.add_argument("--env", "-e", action="append", default=[], metavar="K=V",
                   help="environment variable (the environment starts empty)")
    p.add_argument("--bind", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="bind-mount a host path")
    p.add_argument("--workdir", "-w", default="/", help="working directory inside")
    p.add_argument("--user", "-u", help="uid[:gid] or name[:group] from the image")
    p.add_argument("--net", default="host", help="host (default), none or netns:PATH")
    p.add_argument("--keep-state", action="store_true",
                   help="keep the overlay upper/work directories after exit")
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds between a forwarded SIGTERM and SIGKILL (default 10)")
    p.add_argument("--privileged", action="store_true",
                   help="keep all capabilities, no seccomp filter or no_new_privs, /proc "
                        "unmasked, and no user namespace unless --private-users asks for one")
    p.add_argument("--private-users", metavar="yes|no|BASE[:SIZE]", default=None,
                   help="run in a user namespace mapping container uid/gid 0.. to host BASE.. "
                        "(default: yes where the kernel allows, with a 65536-id range derived "
                        "from the name, as the nspawn runtime's; no: the host's ids)")
    p.add_argument("--init", action="store_true",
                   help="run a minimal init (tini) as PID 1: it reaps zombies and forwards "
                        "signals to the command (PID 2)")
    p.add_argument("--init-path", type=Path, default=specmod.DEFAULT_INIT,
                   help=f"the init binary for --init (default {specmod.DEFAULT_INIT}; "
                        "a static one, bind-mounted read-only on /dev/init)")
    p.add_argument("--detach", action="store_true",
                   help="for a systemd unit with Type=forking and PIDFile=STATE/NAME/init.pid: "
                        "exit once the container runs, leaving its PID 1 to systemd")
    p.add_argument("--state-root", type=Path, default=specmod.DEFAULT_STATE_ROOT,
                   help=argparse.SUPPRESS)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return p


def build_spec(argv: list[str], host_env: dict[str, str]) -> specmod.ContainerSpec:
    args = _parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("no command given (fleet-run --image IMAGE -- CMD ARGS...)")
    if not args.workdir.startswith("/"):
        raise LaunchError(f'invalid --workdir "{args.workdir}": must be an absolute path')
    if args.stop_timeout < 0:
        raise LaunchError("invalid --stop-timeout: must not be negative")
    images_dir = args.images_dir
    if images_dir is None:
        from fleetd.images.store import DEFAULT_ROOT as images_dir
    rootfs = specmod.resolve_image(args.image, images_dir)
    name = specmod.validate_name(args.name or specmod.default_name(args.image))
    hostname = args.hostname or name
    if len(hostname.encode()) > 64 or not hostname:
        raise LaunchError(f'invalid --hostname "{hostname}" (1 to 64 bytes)')
    net = specmod.NetMode.parse(args.net)
    binds = tuple(specmod.BindMount.parse(b) for b in args.bind)
    user = resolve_user(rootfs, args.user, args.image)
    init = None
    if args.init:
        init = args.init_path.resolve()
        if not init.is_file() or not os.access(init, os.X_OK):
            raise LaunchError(f'init "{args.init_path}" not found or not executable '
                              "(Debian package tini: /usr/bin/tini-static)")
    ids = parse_private_users(args.private_users, name, args.privileged)
    if ids is not None and max(user.uid, user.gid, *user.groups) >= ids.size:
        raise LaunchError(f'--user "{args.user}": id {max(user.uid, user.gid, *user.groups)} is '
                          f"outside the container's user namespace (0..{ids.size - 1})")
    env = specmod.build_env(specmod.parse_env(args.env, host_env), hostname, user.home)
    return specmod.ContainerSpec(
        name=name, image_ref=args.image, rootfs=rootfs, command=tuple(command),
        hostname=hostname, env=env, binds=binds, workdir=os.path.normpath(args.workdir),
        user=user, net=net, state_root=args.state_root, keep_state=args.keep_state,
        stop_timeout=args.stop_timeout, privileged=args.privileged, init=init,
        detach=args.detach, images_dir=images_dir,
        userns=ids)


def main(argv: list[str] | None = None) -> int:
    try:
        spec = build_spec(sys.argv[1:] if argv is None else argv, dict(os.environ))
        return run(spec)
    except LaunchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
