"""Is this plausibly a chest radiograph? Correlation of a thumbnail with the mean training radiograph.

Colour photographs are refused earlier by the loader; this catches greyscale non-chest images
(documents, natural scenes, other body parts with a different layout). The template and the
minimum correlation come from the classifier's manifest entry.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ImageRejected


def chest_correlation(pixels: np.ndarray, template: np.ndarray) -> float:
    size = template.shape[0]
    thumb = cv2.resize(pixels.astype(np.float32, copy=False), (size, size), interpolation=cv2.INTER_AREA).ravel()
    a, t = thumb - thumb.mean(), template.ravel() - template.mean()
    return float(a @ t / (np.linalg.norm(a) * np.linalg.norm(t) + 1e-8))


def check_chest_radiograph(pixels: np.ndarray, template: np.ndarray, min_correlation: float) -> float:
    score = chest_correlation(pixels, template)
    if score < min_correlation:
        raise ImageRejected("not-a-chest-radiograph",
                            f"this does not look like a frontal chest radiograph (similarity {score:.2f} "
                            f"< {min_correlation:.2f})")
    return score
