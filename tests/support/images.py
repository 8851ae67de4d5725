"""Small synthetic radiograph-like images made in the tests (real ones come from ../shared/data)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def chest_like(size: int = 256) -> np.ndarray:
    """A smooth grey field with two darker 'lungs': contrast without being a real radiograph."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + \
        np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    return (0.8 - 0.5 * lungs).clip(0, 1)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def png8() -> bytes:
    return encode((chest_like() * 255).astype(np.uint8))
