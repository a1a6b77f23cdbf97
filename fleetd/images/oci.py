"""Reading OCI image layouts and ``docker save`` archives (as a directory or a tarball).

Only reading: :func:`read_plan` turns the archive's index/manifest into an ordered list
of layer references plus the runtime config; the store applies the layers with
:func:`fleetd.images.archive.apply_layer`. Blobs addressed by digest are verified while
they are read (a mismatch is an :class:`UnsafeArchive`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fleetd.errors import ImageError, UnsafeArchive
from fleetd.images.rootpath import resolve_in_root

_DIGEST_RE = re.compile(r"^(sha256):([0-9a-f]{64})$")

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_INDEX_TYPES = {MT_OCI_INDEX, MT_DOCKER_LIST}

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


@dataclass(frozen=True)
class ImageConfig:
    """The runtime defaults an image declares (informational: fleet-run takes flags)."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""

    @classmethod
    def from_json(cls, data: Any) -> "ImageConfig":
        cfg = (data or {}).get("config") or (data or {}).get("Config") or {}
        def strs(key: str) -> tuple[str, ...]:
            value = cfg.get(key) or ()
            return tuple(str(v) for v in value) if isinstance(value, list) else ()
        return cls(env=strs("Env"), entrypoint=strs("Entrypoint"), cmd=strs("Cmd"),
                   workdir=str(cfg.get("WorkingDir") or ""), user=str(cfg.get("User") or ""))

    def to_json(self) -> dict[str, Any]:
        return {"env": list(self.env), "entrypoint": list(self.entrypoint),
                "cmd": list(self.cmd), "workdir": self.workdir, "user": self.user}

    @classmethod
    def from_store(cls, data: dict[str, Any]) -> "ImageConfig":
        return cls(env=tuple(data.get("env", ())), entrypoint=tuple(data.get("entrypoint", ())),
                   cmd=tuple(data.get("cmd", ())), workdir=data.get("workdir", ""),
                   user=data.get("user", ""))


@dataclass(frozen=True)
class LayerRef:
    path: str                 # path of the layer inside the archive
    digest: str | None        # expected sha256 of the blob, when the format names it
    media_type: str = ""


@dataclass(frozen=True)
class ImagePlan:
    kind: str                                  # "oci" or "docker-archive"
    layers: tuple[LayerRef, ...]
    config: ImageConfig = field(default_factory=ImageConfig)
    source_digest: str | None = None           # OCI manifest digest / docker image ID


# -- archive access --------------------------------------------------------------------


class _HashingReader:
    """Pass-through reader that checks the sha256 of everything read against `expected`."""

    def __init__(self, raw: BinaryIO, expected: str, what: str) -> None:
        self.raw = raw
        self.expected = expected
        self.what = what
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.h.update(data)
        return data

    def close(self) -> None:
        self.raw.close()

    def verify(self) -> None:
        while chunk := self.raw.read(1 << 20):
            self.h.update(chunk)
        actual = "sha256:" + self.h.hexdigest()
        if actual != self.expected:
            raise UnsafeArchive(f"{self.what}: content digest {actual} does not match {self.expected}")


class ArchiveSource:
    """Read-only access to the files of an image archive: a directory or a tarball."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: Any = None  # a tarball's tarfile.TarFile
        self._members: dict[str, Any] = {}  # its tarfile.TarInfo by normalised name
        if path.is_dir():
            return
        import tarfile  # by the first tarball read: not at fleetd's start-up (docs/performance.md)

        try:
            self._tar = tarfile.open(path, mode="r:*")
            for info in self._tar.getmembers():
                self._members[os.path.normpath(info.name).lstrip("/")] = info
        except (tarfile.TarError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable tar archive: {exc}") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> "ArchiveSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self, rel: str) -> bool:
        if self._tar is None:
            return resolve_in_root(self.path, rel).is_file()
        return os.path.normpath(rel) in self._members

    def open(self, rel: str) -> BinaryIO:
        norm = os.path.normpath(rel)
        if norm.startswith("..") or os.path.isabs(norm):
            raise UnsafeArchive(f"{self.path}: reference {rel!r} escapes the archive")
        if self._tar is None:
            target = resolve_in_root(self.path, norm)
            try:
                return open(target, "rb")
            except OSError as exc:
                raise ImageError(f"{self.path}: cannot read {rel!r}: {exc.strerror}") from None
        info = self._members.get(norm)
        if info is None:
            raise ImageError(f"{self.path}: archive has no member {rel!r}")
        import tarfile

        try:
            f = self._tar.extractfile(info)
        except (KeyError, tarfile.TarError) as exc:
            raise ImageError(f"{self.path}: cannot read member {rel!r}: {exc}") from None
        if f is None:
            raise ImageError(f"{self.path}: member {rel!r} is not a regular file")
        return f  # type: ignore[return-value]

    def read_json(self, rel: str, digest: str | None = None) -> Any:
        with self.open(rel) as f:
            data = f.read()
        if digest is not None:
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise UnsafeArchive(f"{self.path}: {rel}: content digest {actual} does not "
                                    f"match {digest}")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageError(f"{self.path}: {rel}: invalid JSON: {exc}") from None

    def open_layer(self, layer: LayerRef) -> BinaryIO | _HashingReader:
        f = self.open(layer.path)
        if layer.digest is None:
            return f
        return _HashingReader(f, layer.digest, f"{self.path}: layer {layer.path}")


# -- format detection and parsing ----------------------------------------------------


def detect_kind(src: ArchiveSource) -> str:
    """ "docker-archive", "oci" or "rootfs" (a plain filesystem tree/tarball)."""
    if src.exists("manifest.json"):
        try:
            manifest = src.read_json("manifest.json")
        except ImageError:
            manifest = None
        if (isinstance(manifest, list) and manifest and isinstance(manifest[0], dict)
                and "Layers" in manifest[0]):
            return "docker-archive"
    if src.exists("oci-layout") and src.exists("index.json"):
        return "oci"
    return "rootfs"


def _blob_path(digest: str, where: str) -> str:
    m = _DIGEST_RE.match(digest or "")
    if not m:
        raise UnsafeArchive(f"{where}: invalid or unsupported digest {digest!r}")
    return f"blobs/{m.group(1)}/{m.group(2)}"


def _check_layer_type(media_type: str, where: str) -> None:
    if "zstd" in media_type:
        raise ImageError(f"{where}: zstd-compressed layers ({media_type}) are not supported")
    if "nondistributable" in media_type or "foreign" in media_type:
        raise ImageError(f"{where}: foreign layers ({media_type}) are not supported")


def _pick_manifest(src: ArchiveSource, descriptors: list[Any], where: str,
                   depth: int = 0) -> dict[str, Any]:
    if depth > 4:
        raise ImageError(f"{where}: image indexes nested too deeply")
    arch = _ARCH.get(platform.machine(), platform.machine())
    candidates = [d for d in descriptors if isinstance(d, dict)]
    if not candidates:
        raise ImageError(f"{where}: index lists no manifests")
    with_platform = [d for d in candidates if isinstance(d.get("platform"), dict)]
    if with_platform:
        matching = [d for d in with_platform
                    if d["platform"].get("os", "linux") == "linux"
                    and d["platform"].get("architecture") == arch]
        if not matching:
            raise ImageError(f"{where}: no manifest for linux/{arch}")
        chosen = matching[0]
    else:
        chosen = candidates[0]
    digest = chosen.get("digest", "")
    doc = src.read_json(_blob_path(digest, where), digest)
    media_type = chosen.get("mediaType") or doc.get("mediaType", "")
    if media_type in _INDEX_TYPES or "manifests" in doc:
        return _pick_manifest(src, doc.get("manifests") or [], where, depth + 1)
    return {"digest": digest, "manifest": doc}


def read_oci_plan(src: ArchiveSource) -> ImagePlan:
    where = str(src.path)
    index = src.read_json("index.json")
    if not isinstance(index, dict):
        raise ImageError(f"{where}: index.json is not an object")
    picked = _pick_manifest(src, index.get("manifests") or [], where)
    manifest = picked["manifest"]
    config_desc = manifest.get("config") or {}
    config: Any = {}
    if config_desc.get("digest"):
        config = src.read_json(_blob_path(config_desc["digest"], where), config_desc["digest"])
    layers = []
    for desc in manifest.get("layers") or []:
        media_type = desc.get("mediaType", "")
        _check_layer_type(media_type, where)
        layers.append(LayerRef(_blob_path(desc.get("digest", ""), where), desc["digest"],
                               media_type))
    return ImagePlan("oci", tuple(layers), ImageConfig.from_json(config), picked["digest"])


def read_docker_plan(src: ArchiveSource) -> ImagePlan:
    where = str(src.path)
    manifest = src.read_json("manifest.json")
    entry = manifest[0]
    if len(manifest) > 1:
        raise ImageError(f"{where}: archive holds {len(manifest)} images; import one at a time")
    config: Any = {}
    source_digest = None
    if entry.get("Config"):
        with src.open(entry["Config"]) as f:
            raw = f.read()
        source_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise ImageError(f"{where}: {entry['Config']}: invalid JSON: {exc}") from None
    layers = []
    for path in entry.get("Layers") or []:
        if not isinstance(path, str):
            raise ImageError(f"{where}: manifest.json: layer {path!r} is not a path")
        m = re.match(r"^blobs/sha256/([0-9a-f]{64})$", path)
        layers.append(LayerRef(path, f"sha256:{m.group(1)}" if m else None))
    return ImagePlan("docker-archive", tuple(layers), ImageConfig.from_json(config),
                     source_digest)
