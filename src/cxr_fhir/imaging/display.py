"""How a radiograph is shown: the 8-bit display rendition that pages and heatmap overlays share."""

from __future__ import annotations

import cv2
import numpy as np

OVERLAY_MAX_SIDE = 512


def display_base(pixels: np.ndarray) -> np.ndarray:
    """The radiograph as 8-bit BGR at display size (at most 512 px a side), shared by all overlays."""
    h, w = pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(cv2.convertScaleAbs(grey, alpha=255.0), cv2.COLOR_GRAY2BGR)
