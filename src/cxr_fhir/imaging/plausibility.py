"""Is this plausibly a chest radiograph? A tiny, explainable model on a few cheap image features.

Colour photographs, non-radiograph DICOM modalities and absurd aspect ratios are refused earlier by
the loader; this catches greyscale images that are not chest films (documents, natural scenes,
textures, CT/MR slices exported as PNG). Two thresholds, one score:

- ``score < refuse_below``: clearly not a chest radiograph. The image is refused.
- ``refuse_below <= score < unusual_below``: analysed, but the result carries the flag
  "unusual film, read with care" (portable AP films crowded with lines and electrodes, films
  with wide borders, over- or under-exposed films).

The score sums, over the features below, how far the image lies outside the range of real training
films (each feature's share capped, see GateModel); it is 0 for a typical film. The refusal
threshold is never above the lowest real film it was fitted on, so the gate flags rather than
refuses; the negatives (non-chest images) measure it (``training/gate.py``). Everything comes from
the ``gate`` entry of the weights manifest. Features (all from small thumbnails, about 2 ms):

1. ``prototype``: highest correlation of a 24 px thumbnail (of the image or one of a few crops of
   it) with k-means prototypes of training films.
2. ``symmetry``: correlation of a 32 px thumbnail with its mirror image (chests are near symmetric).
3. ``fine_detail``: share of the 64 px thumbnail's contrast in its finest detail (text, textures).
4. ``extremes``: share of pixels at the darkest or brightest tenth (documents, drawings, masks).
5. ``entropy``: spread of the grey-level histogram (radiographs use many grey levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .errors import ImageRejected

FEATURES: tuple[str, ...] = ("prototype", "symmetry", "fine_detail", "extremes", "entropy")
SIDES = (-1, -1, 1, 1, -1)  # which way each feature is atypical: -1 too low, +1 too high


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


# Crops (top, bottom, left, right as fractions) tried by crop_similarity: a film set off-centre in a
# wide border, or with a burnt-out band along one edge, still matches its prototype in one of them.
CROPS = ((0, 1, 0, 1), (0, .85, 0, .85), (.15, 1, 0, .85), (0, .85, .15, 1), (.15, 1, .15, 1),
         (.075, .925, .075, .925), (.15, 1, .075, .925), (0, .85, .075, .925))


def crop_similarity(pixels: np.ndarray, prototypes: np.ndarray) -> float:
    """``similarity`` at its best over CROPS."""
    h, w = pixels.shape
    small: np.ndarray = pixels
    if min(h, w) > 256:  # the crops are made from a 256 px copy: same thumbnails, a fraction of the work
        small = cv2.resize(pixels.astype(np.float32, copy=False), (256, round(256 * h / w)) if w >= h
                           else (round(256 * w / h), 256), interpolation=cv2.INTER_AREA)
        h, w = small.shape
    return max(similarity(small[int(a * h):int(b * h), int(c * w):int(d * w)], prototypes) for a, b, c, d in CROPS)


def trim_border(pixels: np.ndarray, flat: float = 0.04) -> np.ndarray:
    """The image without uniform bands along its edges (rows or columns whose values span less than
    ``flat``): a film scanned or exported inside a wide white or black border."""
    rows = np.ptp(pixels, axis=1) >= flat
    cols = np.ptp(pixels, axis=0) >= flat
    if rows.sum() < 16 or cols.sum() < 16:
        return pixels
    r = np.flatnonzero(rows)
    c = np.flatnonzero(cols)
    return pixels[r[0]: r[-1] + 1, c[0]: c[-1] + 1]


def features(pixels: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """The FEATURES of one image (its uniform border trimmed), in order, as float64."""
    px = pixels.astype(np.float32, copy=False)
    h, w = px.shape
    if max(h, w) > 512:  # every feature works on thumbnails: start from a 512 px copy
        px = np.asarray(cv2.resize(px, (512, max(1, round(512 * h / w))) if w >= h
                                   else (max(1, round(512 * w / h)), 512), interpolation=cv2.INTER_AREA))
    px = trim_border(px)
    g: np.ndarray = cv2.resize(px, (64, 64), interpolation=cv2.INTER_AREA)
    lo, hi = float(g.min()), float(g.max())
    g = (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)
    t32 = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA)
    a = t32 - t32.mean()
    b = a[:, ::-1]
    symmetry = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-8))
    smooth = cv2.GaussianBlur(g, (0, 0), 1.0)
    fine_detail = float(np.std(g - smooth) / (np.std(g) + 1e-8))
    extremes = float(np.mean((g < 0.1) | (g > 0.9)))
    hist = np.histogram(g, bins=16, range=(0.0, 1.0))[0].astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum() / 4.0)  # 0..1 (4 bits = 16 equally used levels)
    return np.array([crop_similarity(px, prototypes), symmetry, fine_detail, extremes, entropy])


@dataclass(frozen=True)
class GateModel:
    """The fitted gate: prototypes, the real films' 1st/50th/99th percentile of each feature, and
    the thresholds. A feature's deviation is how far it lies beyond the real films' 1st (or 99th)
    percentile, in units of that percentile's distance from the median, capped at ``cap`` so one odd
    feature alone (a film in a wide border) cannot refuse a film; the score is minus their sum."""

    prototypes: np.ndarray
    low: np.ndarray
    mid: np.ndarray
    high: np.ndarray
    side: np.ndarray      # -1: too low is atypical, +1: too high is atypical
    cap: float
    refuse_below: float
    unusual_below: float

    @classmethod
    def from_manifest(cls, gate: dict[str, Any]) -> GateModel:
        prototypes = np.asarray(gate["prototypes"], dtype=np.float32)
        if "model" not in gate:  # a gate fitted before the feature model: the similarity alone decides
            n = len(FEATURES)
            refuse = float(gate["min_similarity"])
            median = float(gate.get("validation", {}).get("median_similarity", 0.9))
            unusual = float(gate.get("validation", {}).get("p1_similarity", refuse))
            low, mid, high = np.full(n, -np.inf), np.zeros(n), np.full(n, np.inf)
            low[0], mid[0] = median, median + 1.0  # deviation = median - similarity
            return cls(prototypes, low, mid, high, -np.ones(n), np.inf, refuse - median, unusual - median)
        m = gate["model"]
        if list(m["features"]) != list(FEATURES):
            raise ValueError(f"the gate was fitted on features {m['features']}, this code computes {FEATURES}")
        low, mid, high, side = (np.asarray(m[k], dtype=np.float64) for k in ("low", "mid", "high", "side"))
        return cls(prototypes, low, mid, high, side, float(m["cap"]), float(gate["refuse_below"]),
                   float(gate["unusual_below"]))

    def deviations(self, f: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            below = (self.low - f) / (self.mid - self.low)
            above = (f - self.high) / (self.high - self.mid)
        dev = np.where(self.side < 0, below, above)
        out: np.ndarray = np.clip(np.nan_to_num(dev, nan=0.0, posinf=self.cap, neginf=0.0), 0.0, self.cap)
        return out

    def score_features(self, f: np.ndarray) -> float:
        return -float(self.deviations(f).sum())

    def score(self, pixels: np.ndarray) -> float:
        """0 for a film typical in every feature; more negative the more atypical."""
        return self.score_features(features(pixels, self.prototypes))


@dataclass(frozen=True)
class GateVerdict:
    """A film the gate let through: its score, and whether it is unusual (analysed, flagged)."""

    score: float
    unusual: bool


UNUSUAL_FILM = "unusual film, read with care"


def check_chest_radiograph(pixels: np.ndarray, gate: GateModel) -> GateVerdict:
    """Raise ImageRejected when clearly not a chest radiograph; else the verdict (maybe unusual)."""
    score = gate.score(pixels)
    if not score >= gate.refuse_below:  # also refuses NaN
        raise ImageRejected("not-a-chest-radiograph",
                            f"this does not look like a frontal chest radiograph (plausibility {score:.2f} "
                            f"< {gate.refuse_below:.2f})")
    return GateVerdict(score=round(score, 3), unusual=score < gate.unusual_below)
