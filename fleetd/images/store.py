"""The local image store: the only module that knows how images are laid out on disk.

Layout below the root (default ``/var/lib/fleet/images``)::

    images/<hex>/rootfs/      the unpacked filesystem of image sha256:<hex>
    images/<hex>/image.json   metadata (digest, source kind, size, config, ...)
    names/<name>              "sha256:<hex>\\n": a name pointing at an image
    tmp/                      staging area (same filesystem: commits are renames)
    userns/<hex>-<base>-<n>/  fleet-run's copy of an image with owners shifted for a user
                              namespace (where idmapped mounts are not possible); removed with it
    lock                      flock(2) serialising commits and removals

An image is addressed by its digest, the content digest of its tree (see
:mod:`fleetd.images.tree`), and by any number of names. Importing identical content
twice stores it once. Rootfs directories are never modified after the commit: the
launcher mounts them as the read-only lower layer of an overlay.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from fleetd.errors import ImageError, ImageNotFound
from fleetd.images import oci
from fleetd.images.oci import ArchiveSource, ImageConfig

DEFAULT_ROOT = Path("/var/lib/fleet/images")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_FULL_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{6,64})$")


@dataclass(frozen=True)
class Image:
    digest: str                  # "sha256:<64 hex>", content digest of the tree
    names: tuple[str, ...]
    rootfs: Path                 # read-only lower directory for the launcher
    source: str                  # "directory", "tarball", "oci", "docker-archive", "stream"
    source_digest: str | None    # OCI manifest digest / docker image ID, when known
    size: int                    # bytes of regular-file content
    created: float               # import time (epoch seconds)
    config: ImageConfig

    @property
    def short_id(self) -> str:
        return self.digest.split(":", 1)[1][:12]


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("sha256:"):
        raise ImageError(f"invalid image name {name!r} (letters, digits, '_', '.', ':', '-'; "
                         "at most 128; must not start with 'sha256:')")
    return name


class ImageStore:
    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------

    def _images_dir(self) -> Path:
        return self.root / "images"

    def _names_dir(self) -> Path:
        return self.root / "names"

    def _tmp_dir(self) -> Path:
        return self.root / "tmp"

    def _ensure(self) -> None:
        for d in (self._images_dir(), self._names_dir(), self._tmp_dir()):
            d.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- lookup -----------------------------------------------------------------------

    def _names_of(self) -> dict[str, list[str]]:
        by_digest: dict[str, list[str]] = {}
        names_dir = self._names_dir()
        if not names_dir.is_dir():
            return by_digest
        for entry in sorted(os.listdir(names_dir)):
            digest = self._read_name(entry)
            if digest:
                by_digest.setdefault(digest, []).append(entry)
        return by_digest

    def _read_name(self, name: str) -> str | None:
        try:
            text = (self._names_dir() / name).read_text().strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return text if _FULL_DIGEST_RE.match(text) else None

    def _load(self, digest: str, names: list[str] | None = None) -> Image:
        hexd = digest.split(":", 1)[1]
        base = self._images_dir() / hexd
        try:
            meta = json.loads((base / "image.json").read_text())
        except FileNotFoundError:
            raise ImageNotFound(f'image "{digest}" not found in {self.root}') from None
        except ValueError as exc:
            raise ImageError(f"{base / 'image.json'}: invalid JSON: {exc}") from None
        if names is None:
            names = self._names_of().get(digest, [])
        return Image(digest=digest, names=tuple(names), rootfs=base / "rootfs",
                     source=meta.get("source", ""), source_digest=meta.get("source_digest"),
                     size=int(meta.get("size", 0)), created=float(meta.get("created", 0)),
                     config=ImageConfig.from_store(meta.get("config") or {}))

    def _digests(self) -> list[str]:
        images = self._images_dir()
        if not images.is_dir():
            return []
        return sorted(f"sha256:{d}" for d in os.listdir(images)
                      if re.fullmatch(r"[0-9a-f]{64}", d) and (images / d / "image.json").is_file())

    def resolve(self, ref: str) -> str:
        """The full digest for a name, a full digest or a unique digest prefix (>= 6 hex)."""
        if _FULL_DIGEST_RE.match(ref):
            if (self._images_dir() / ref[7:] / "image.json").is_file():
                return ref
        elif _NAME_RE.match(ref) and (digest := self._read_name(ref)):
            return digest
        m = _PREFIX_RE.match(ref)
        if m:
            found = [d for d in self._digests() if d[7:].startswith(m.group(1))]
            if len(found) > 1:
                raise ImageError(f'image reference "{ref}" is ambiguous in {self.root} '
                                 f"({len(found)} images)")
            if found:
                return found[0]
        raise ImageNotFound(f'image "{ref}" not found in {self.root}')

    def get(self, name_or_digest: str) -> Image:
        return self._load(self.resolve(name_or_digest))

    def list(self) -> list[Image]:
        names = self._names_of()
        images = [self._load(d, names.get(d, [])) for d in self._digests()]
        return sorted(images, key=lambda i: (i.created, i.digest))

    # -- import -----------------------------------------------------------------------

    def import_path(self, path: str | os.PathLike, name: str | None = None) -> Image:
        """Import a rootfs directory, a rootfs tarball (.tar, .tar.gz, ...), an OCI image
        layout or a ``docker save`` archive (each as directory or tarball)."""
        src_path = Path(path)
        if name is not None:
            validate_name(name)
        if not src_path.exists():
            raise ImageError(f"{src_path}: no such file or directory")
        from fleetd.images.tree import copy_tree_as_tar  # tarfile: on this path only, not at start-up

        with ArchiveSource(src_path) as src:
            kind = oci.detect_kind(src)
            if kind == "rootfs":
                if src_path.is_dir():
                    return self._import(name, "directory", None, ImageConfig(),
                                        [(str(src_path), lambda: copy_tree_as_tar(src_path))])
                return self._import(name, "tarball", None, ImageConfig(),
                                    [(str(src_path), lambda: open(src_path, "rb"))])
            plan = (oci.read_oci_plan(src) if kind == "oci" else oci.read_docker_plan(src))
            layers = [(f"{src_path}: layer {layer.path}",
                       (lambda layer=layer: src.open_layer(layer))) for layer in plan.layers]
            return self._import(name, plan.kind, plan.source_digest, plan.config, layers)

    def import_stream(self, fileobj: BinaryIO, name: str | None = None, *,
                      expected_digest: str | None = None,
                      config: ImageConfig | None = None) -> Image:
        """Import a rootfs tar stream (e.g. another node's :meth:`export`).

        With `expected_digest` the content must hash to it, or nothing is stored.
        `config` carries the runtime defaults of the exported image (they are not in the tar).
        """
        if name is not None:
            validate_name(name)
        return self._import(name, "stream", None, config or ImageConfig(), [("<stream>", lambda: fileobj)],
                            expected_digest=expected_digest)

    def rootfs_path(self, digest: str) -> Path:
        """Where the rootfs of image `digest` is (or would be, once imported) in this store."""
        m = _FULL_DIGEST_RE.match(digest)
        if not m:
            raise ImageError(f"invalid image digest {digest!r} (expected sha256:<64 hex>)")
        return self._images_dir() / m.group(1) / "rootfs"

    def _import(self, name: str | None, source: str, source_digest: str | None,
                config: ImageConfig, layers: list, *, expected_digest: str | None = None) -> Image:
        from fleetd.images.archive import apply_layer  # tarfile: on this path only, not at start-up
        from fleetd.images.tree import tree_digest

        self._ensure()
        staging = Path(tempfile.mkdtemp(prefix="import-", dir=self._tmp_dir()))
        try:
            rootfs = staging / "rootfs"
            rootfs.mkdir(mode=0o755)
            for what, opener in layers:
                f = opener()
                try:
                    apply_layer(f, rootfs, source=what)
                    if hasattr(f, "verify"):
                        f.verify()
                finally:
                    if hasattr(f, "close"):
                        f.close()
            digest, size = tree_digest(rootfs)
            if expected_digest is not None and digest != expected_digest:
                raise ImageError(f"imported content has digest {digest}, expected {expected_digest}")
            meta = {"digest": digest, "source": source, "source_digest": source_digest,
                    "size": size, "created": time.time(), "config": config.to_json()}
            (staging / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
            with self._locked():
                final = self._images_dir() / digest[7:]
                if not (final / "image.json").is_file():
                    if final.exists():
                        shutil.rmtree(final)  # leftover of an interrupted removal
                    os.rename(staging, final)
                if name is not None:
                    self._write_name(name, digest)
        except OSError as exc:
            raise ImageError(f"import failed: {exc}") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self._load(digest)

    def _write_name(self, name: str, digest: str) -> None:
        tmp = self._names_dir() / f".{name}.tmp"
        tmp.write_text(digest + "\n")
        os.replace(tmp, self._names_dir() / name)

    # -- names, removal, export ---------------------------------------------------------

    def tag(self, name_or_digest: str, name: str) -> Image:
        """Point `name` at an existing image (moving it if it pointed elsewhere)."""
        validate_name(name)
        digest = self.resolve(name_or_digest)
        with self._locked():
            self._write_name(name, digest)
        return self._load(digest)

    def remove(self, name_or_digest: str) -> None:
        """Remove a name, or an image.

        A *name* is untagged; the content goes too once no name points at it. A *digest*
        (or unique prefix) removes the content and every name pointing at it.
        """
        with self._locked():
            is_name = _NAME_RE.match(name_or_digest) and self._read_name(name_or_digest)
            digest = self.resolve(name_or_digest)
            names = self._names_of().get(digest, [])
            if is_name:
                os.unlink(self._names_dir() / name_or_digest)
                if len(names) > 1:
                    return
            else:
                for n in names:
                    os.unlink(self._names_dir() / n)
            # rename first: a half-deleted tree is never visible under its digest
            doomed = Path(tempfile.mkdtemp(prefix="remove-", dir=self._tmp_dir()))
            os.rename(self._images_dir() / digest[7:], doomed / "image")
            # fleet-run's copies of it with shifted owners (user namespaces; fleetd.launcher.userns)
            shifted = self.root / "userns"
            for i, copy in enumerate(shifted.glob(f"{digest[7:]}-*") if shifted.is_dir() else ()):
                os.rename(copy, doomed / f"userns-{i}")
        shutil.rmtree(doomed, ignore_errors=True)

    def export(self, name_or_digest: str) -> Iterator[bytes]:
        """The image's root filesystem as an uncompressed tar stream (bytes chunks).

        :meth:`import_stream` of this stream on another store yields the same digest.
        """
        from fleetd.images.tree import tar_stream  # tarfile: on this path only, not at start-up

        image = self.get(name_or_digest)
        return tar_stream(image.rootfs)

    def export_to(self, name_or_digest: str, out: BinaryIO) -> str:
        """Write :meth:`export` to a binary file object; return the image digest."""
        from fleetd.images.tree import tar_stream

        image = self.get(name_or_digest)
        for chunk in tar_stream(image.rootfs):
            out.write(chunk)
        return image.digest
