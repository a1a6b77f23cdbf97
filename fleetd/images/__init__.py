"""The local image store (import, lookup, export) and the busybox image builder.

Names are loaded on first use (PEP 562), so that importing a light submodule (rootpath, for
fleet-run) does not import the store, OCI and archive code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetd.images.busybox import build_busybox_image
    from fleetd.images.store import DEFAULT_ROOT, Image, ImageStore

__all__ = ["DEFAULT_ROOT", "Image", "ImageStore", "build_busybox_image"]


def __getattr__(name: str) -> Any:
    if name == "build_busybox_image":
        from fleetd.images.busybox import build_busybox_image

        return build_busybox_image
    if name in ("DEFAULT_ROOT", "Image", "ImageStore"):
        from fleetd.images import store

        return getattr(store, name)
    raise AttributeError(f"module 'fleetd.images' has no attribute {name!r}")
