"""Is this plausibly a chest radiograph? Similarity of a thumbnail to prototype radiographs.

Colour photographs are refused earlier by the loader; this catches greyscale images that are not
chest films (documents, natural scenes, textures). The prototypes are k-means centres of training
thumbnails, so portable AP films, collimated films and pediatric films each have their own; they
and the minimum similarity come from the ``gate`` entry of the weights manifest.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ImageRejected


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """Zero-mean, unit-norm (size*size,) vector: invariant to brightness and contrast."""
    small: np.ndarray = cv2.resize(pixels.astype(np.float32, copy=False), (size, size), interpolation=cv2.INTER_AREA)
    t = small.ravel()
    t = t - t.mean()
    unit: np.ndarray = t / (np.linalg.norm(t) + 1e-8)
    return unit


def similarity(pixels: np.ndarray, prototypes: np.ndarray) -> float:
    """Highest correlation with any prototype (rows: unit vectors)."""
    size = round(float(np.sqrt(prototypes.shape[1])))
    return float((prototypes @ thumbnail(pixels, size)).max())


def check_chest_radiograph(pixels: np.ndarray, prototypes: np.ndarray, min_similarity: float) -> float:
    score = similarity(pixels, prototypes)
    if not score >= min_similarity:  # also refuses NaN
        raise ImageRejected("not-a-chest-radiograph",
                            f"this does not look like a frontal chest radiograph (similarity {score:.2f} "
                            f"< {min_similarity:.2f})")
    return score
