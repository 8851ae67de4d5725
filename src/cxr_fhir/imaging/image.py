"""The decoded radiograph and the checks every decoder shares (raster and DICOM alike).

This module sits below both decoders (``loader`` and ``dicom``), so neither imports the other's
internals and there is no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ImageRejected

MIN_SIDE = 128
MAX_SIDE = 16384
DEFAULT_MAX_PIXELS = 80_000_000


@dataclass
class XRayImage:
    pixels: np.ndarray            # float32, (H, W), 0 = black .. 1 = white (bone bright)
    media_type: str               # image/png | image/jpeg | application/dicom
    bits: int                     # bits per sample in the source
    metadata: dict[str, Any] = field(default_factory=dict)  # DICOM UIDs, modality, patient ... when known

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def stretch(arr: np.ndarray) -> np.ndarray:
    """Float32 values mapped onto 0..1 by their own minimum and maximum (all zero when flat)."""
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def check_geometry(width: int, height: int, max_pixels: int, min_side: int = MIN_SIDE) -> None:
    if width * height > max_pixels or max(width, height) > MAX_SIDE:
        raise ImageRejected("too-large", f"the image is too large ({width}x{height} pixels)")
    if min(width, height) < min_side:
        raise ImageRejected("too-small", f"the image is too small ({width}x{height}; at least {min_side} px a side)")
    if max(width, height) / min(width, height) > 2.5:
        raise ImageRejected("not-a-chest-radiograph",
                            f"implausible aspect ratio for a chest radiograph ({width}x{height})")
