"""Resolve ``--user`` against the image's own /etc/passwd and /etc/group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetd.errors import LaunchError
from fleetd.images.rootpath import resolve_in_root


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    groups: tuple[int, ...]     # supplementary groups (setgroups)
    home: str


@dataclass(frozen=True)
class _Passwd:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _Group:
    name: str
    gid: int
    members: tuple[str, ...]


def _read_db(rootfs: Path, path: str) -> list[list[str]]:
    try:
        target = resolve_in_root(rootfs, path)
        text = target.read_text(errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _passwd(rootfs: Path) -> list[_Passwd]:
    out = []
    for f in _read_db(rootfs, "/etc/passwd"):
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            out.append(_Passwd(f[0], int(f[2]), int(f[3]), f[5] or "/"))
    return out


def _groups(rootfs: Path) -> list[_Group]:
    out = []
    for f in _read_db(rootfs, "/etc/group"):
        if len(f) >= 4 and f[2].isdigit():
            out.append(_Group(f[0], int(f[2]), tuple(m for m in f[3].split(",") if m)))
    return out


def resolve_user(rootfs: Path, spec: str | None, image_ref: str) -> ResolvedUser:
    """`spec` is None (root), "uid", "uid:gid", "name", "name:group" (group name or gid)."""
    spec = spec or "0"
    user_part, _, group_part = spec.partition(":")
    if not user_part:
        raise LaunchError(f"invalid --user {spec!r}")
    users = _passwd(rootfs)
    entry: _Passwd | None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((u for u in users if u.uid == uid), None)
    else:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            raise LaunchError(f'user "{user_part}" not found in /etc/passwd of image {image_ref}')
        uid = entry.uid
    groups = _groups(rootfs)
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            found = next((g for g in groups if g.name == group_part), None)
            if found is None:
                raise LaunchError(f'group "{group_part}" not found in /etc/group of image {image_ref}')
            gid = found.gid
    else:
        gid = entry.gid if entry is not None else 0
    supplementary = [gid]
    if entry is not None:
        supplementary += [g.gid for g in groups if entry.name in g.members and g.gid != gid]
    home = entry.home if entry is not None else "/"
    if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
        raise LaunchError(f"invalid --user {spec!r}: id out of range")
    return ResolvedUser(uid, gid, tuple(dict.fromkeys(supplementary)), home)

