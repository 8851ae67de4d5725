"""Browser renditions of stored radiographs: every upload (PNG, JPEG or DICOM) is shown as an
8-bit PNG decoded by the same loader as the analysis, so a DICOM looks as the model saw it."""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from ..imaging import load
from ..imaging.display import OVERLAY_MAX_SIDE, display_base
from ..storage.image_store import ImageStore

FULL = OVERLAY_MAX_SIDE * 2   # the result view (overlays are OVERLAY_MAX_SIDE; the browser scales both)
THUMB = 256


class Renditions:
    """A small in-process cache of rendered PNGs keyed by (content digest, size)."""

    def __init__(self, images: ImageStore, max_pixels: int, capacity: int = 64):
        self.images, self.max_pixels, self.capacity = images, max_pixels, capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, sha256: str, max_side: int) -> bytes:
        key = (sha256, max_side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = render(self.images.get(sha256), self.max_pixels, max_side)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


def render(data: bytes, max_pixels: int, max_side: int) -> bytes:
    pixels = load(data, max_pixels).pixels
    if max_side == OVERLAY_MAX_SIDE:
        img = display_base(pixels)  # exactly the base the heatmap overlays were blended on
    else:
        h, w = pixels.shape
        scale = min(1.0, max_side / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.convertScaleAbs(cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA),
                                  alpha=255.0)
    ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
