"""The local image store (import, lookup, export) and the busybox image builder."""

from fleetd.images.busybox import build_busybox_image
from fleetd.images.store import DEFAULT_ROOT, Image, ImageStore

__all__ = ["DEFAULT_ROOT", "Image", "ImageStore", "build_busybox_image"]
