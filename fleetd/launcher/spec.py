"""What to run: the container spec and the parsing of its command-line pieces.

Everything the launcher needs is checked here, before any namespace is created, so that
user mistakes (missing image, bind source, netns, user) end with one clear line and
exit code 125 and nothing to clean up.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fleetd.errors import ImageNotFound, LaunchError
from fleetd.launcher.users import ResolvedUser
from fleetd.launcher.idrange import IdRange

DEFAULT_STATE_ROOT = Path("/run/fleet/containers")
#: the container's init with --init (Debian's tini-static: static, so it runs in any image)
DEFAULT_INIT = Path("/usr/bin/tini-static")
#: where the init is bind-mounted (read-only) inside the container, as docker's --init does
INIT_IN_CONTAINER = "/dev/init"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# characters overlayfs' option parser would take for separators
_OVERLAY_UNSAFE = re.compile(r"[,:\\\n]")


@dataclass(frozen=True)
class BindMount:
    source: Path
    target: str          # absolute path inside the container
    readonly: bool

    @classmethod
    def parse(cls, text: str) -> "BindMount":
        parts = text.split(":")
        readonly = False
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            readonly = parts[2] == "ro"
            parts = parts[:2]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise LaunchError(f'invalid --bind "{text}" (expected SRC:DST[:ro])')
        source, target = Path(os.path.abspath(parts[0])), parts[1]
        if not target.startswith("/"):
            raise LaunchError(f'invalid --bind "{text}": destination must be an absolute path')
        if not os.path.lexists(source):
            raise LaunchError(f'bind source "{parts[0]}" does not exist')
        return cls(source, os.path.normpath(target), readonly)


@dataclass(frozen=True)
class NetMode:
    kind: str                  # "host", "none" or "netns"
    path: str | None = None    # for "netns": the namespace file

    @classmethod
    def parse(cls, text: str) -> "NetMode":
        if text in ("host", "none"):
            return cls(text)
        if text.startswith("netns:") and len(text) > len("netns:"):
            path = text[len("netns:"):]
            if "/" not in path:
                path = f"/run/netns/{path}"   # `ip netns` name
            return cls("netns", path)
        raise LaunchError(f'invalid --net "{text}" (expected host, none or netns:PATH)')


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image_ref: str                      # as the user wrote it (for messages)
    rootfs: Path                        # lower directory of the overlay
    command: tuple[str, ...]
    hostname: str
    env: tuple[tuple[str, str], ...]    # the complete environment, in order
    binds: tuple[BindMount, ...]
    workdir: str
    user: ResolvedUser
    net: NetMode
    state_root: Path = DEFAULT_STATE_ROOT
    keep_state: bool = False
    stop_timeout: float = 10.0
    privileged: bool = False
    init: Path | None = None            # --init: PID 1 is this binary (tini), the command PID 2
    detach: bool = False                # --detach: leave PID 1 to systemd (Type=forking) and exit
    userns: IdRange | None = None       # --private-users: the container's uid/gid range (None: host ids)
    images_dir: Path | None = None      # the image store (for the shifted copy of an image)

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    def env_value(self, key: str, default: str = "") -> str:
        for k, v in reversed(self.env):
            if k == key:
                return v
        return default


def resolve_image(ref: str, images_dir: Path) -> Path:
    """The rootfs directory for --image: a store name/digest, or a directory path."""
    if "/" in ref or ref.startswith("."):
        path = Path(ref).resolve()
        if not path.is_dir():
            raise LaunchError(f'image directory "{ref}" does not exist')
        rootfs = path
    elif _DIGEST_RE.match(ref) and (images_dir / "images" / ref[7:] / "image.json").is_file():
        rootfs = images_dir / "images" / ref[7:] / "rootfs"     # what a rendered unit passes
    else:
        from fleetd.images.store import ImageStore   # (~0.1 s of imports: only when needed)

        try:
            rootfs = ImageStore(images_dir).get(ref).rootfs
        except ImageNotFound:
            raise LaunchError(f'image "{ref}" not found in {images_dir}') from None
    if _OVERLAY_UNSAFE.search(os.fspath(rootfs)):
        raise LaunchError(f'image path "{rootfs}" contains a character overlayfs cannot take '
                          "(',', ':', '\\' or newline)")
    return rootfs


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise LaunchError(f'invalid container name "{name}" (letters, digits, "_", ".", "-"; '
                          "at most 63)")
    return name


def default_name(image_ref: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(image_ref.rstrip("/")) or "container")
    base = base.lstrip("-_.")[:40] or "container"
    return f"{base}-{secrets.token_hex(4)}"


def parse_env(items: list[str], host_env: dict[str, str]) -> list[tuple[str, str]]:
    """--env K=V (or K alone: the launcher's own value of K, skipped if unset)."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not _ENV_NAME_RE.match(key):
            raise LaunchError(f'invalid --env "{item}" (expected KEY=VALUE)')
        if not eq:
            if key not in host_env:
                continue
            value = host_env[key]
        out.append((key, value))
    return out


def build_env(user_env: list[tuple[str, str]], hostname: str, home: str) -> tuple[tuple[str, str], ...]:
    """Defaults (PATH, HOSTNAME, HOME) then --env values; later entries win."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home}
    for key, value in user_env:
        env[key] = value
    return tuple(env.items())
