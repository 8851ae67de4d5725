"""Image -> model input. Training and inference share this, so they can never drift apart."""

from __future__ import annotations

import cv2
import numpy as np


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Float (H, W) in [0, 1] -> float32 (size, size); area filter when shrinking."""
    h, w = pixels.shape
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(pixels.astype(np.float32, copy=False), (size, size), interpolation=interp)


def normalise(square: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((square - mean) / std).astype(np.float32, copy=False)
