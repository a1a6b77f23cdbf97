"""The uid/gid range of a container's user namespace. Pure (no system calls, no libc).

64 Ki ids per container at a base derived from the container's name, in systemd-nspawn's range
for picked ranges (0x80000 .. 0x6fff0000): both runtimes use it (fleet-run's --private-users,
the nspawn runtime's --private-users=BASE:65536), so a container keeps its range whichever
runtime runs it. Container uid N is host uid BASE+N.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fleetd.errors import LaunchError

#: ids per container, and nspawn's range for picked ranges
USERNS_SIZE = 0x10000
_USERNS_FIRST = 0x80000
_USERNS_LAST = 0x6FFF0000
_USERNS_SLOTS = (_USERNS_LAST - _USERNS_FIRST) // USERNS_SIZE
MAX_USER_NAMESPACES = Path("/proc/sys/user/max_user_namespaces")
_RANGE_RE = re.compile(r"^(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class IdRange:
    """Container ids 0..size-1 are host ids base..base+size-1."""

    base: int
    size: int = USERNS_SIZE

    def __str__(self) -> str:
        return f"{self.base}:{self.size}"

    def map_line(self) -> str:
        return f"0 {self.base} {self.size}\n"


def userns_base(cname: str) -> int:
    """The first host uid/gid of a container's user namespace (pure, stable per container name)."""
    slot = int.from_bytes(hashlib.sha256(cname.encode()).digest()[:4], "big") % _USERNS_SLOTS
    return _USERNS_FIRST + slot * USERNS_SIZE


def kernel_allows() -> bool:
    """Whether this kernel gives root user namespaces (user.max_user_namespaces > 0)."""
    try:
        return int(MAX_USER_NAMESPACES.read_text()) > 0
    except (OSError, ValueError):
        return False


def parse_private_users(text: str | None, name: str, privileged: bool,
                        allowed: bool | None = None) -> IdRange | None:
    """--private-users: None (default: yes unless --privileged, where the kernel allows),
    "yes" (the range derived from the name), "no", or "BASE[:SIZE]". Pure but for `allowed`
    (None: ask the kernel when it matters)."""
    value = (text or "").strip().lower()
    if value in ("", "auto"):
        if privileged:
            return None
        if allowed is None:
            allowed = kernel_allows()
        return IdRange(userns_base(name)) if allowed else None
    if value in ("no", "false", "off", "0"):
        return None
    if value in ("yes", "true", "on", "1"):
        rng = IdRange(userns_base(name))
    else:
        m = _RANGE_RE.match(value)
        if not m:
            raise LaunchError(f'invalid --private-users "{text}" (expected yes, no or BASE[:SIZE])')
        rng = IdRange(int(m.group(1)), int(m.group(2) or USERNS_SIZE))
        if rng.base == 0 or rng.size < 1 or rng.base + rng.size > 0xFFFFFFFF:
            raise LaunchError(f'invalid --private-users "{text}": the range must be above uid 0 '
                              "and below 2^32-1")
    if allowed is None:
        allowed = kernel_allows()
    if not allowed:
        raise LaunchError("--private-users: this kernel gives no user namespaces "
                          f"({MAX_USER_NAMESPACES} is 0); use --private-users=no")
    return rng
