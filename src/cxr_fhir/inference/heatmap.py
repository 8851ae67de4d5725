"""Heatmap rendering and heatmap-derived boxes."""

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


def overlay_png(base: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> bytes:
    """A jet-coloured heatmap blended over the display radiograph (see display_base), as PNG."""
    h, w = base.shape[:2]
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    colour = cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255.0), cv2.COLORMAP_JET)
    weight = cv2.cvtColor(alpha * heat, cv2.COLOR_GRAY2BGR)  # transparent where the model did not look
    blended = cv2.convertScaleAbs(base * (1 - weight) + colour * weight)
    ok, png = cv2.imencode(".png", blended, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def boxes_from_cam(cam: np.ndarray, width: int, height: int, finding: str, score: float,
                   level: float = 0.6, max_boxes: int = 2) -> list[dict]:
    """Boxes (original pixel coordinates) around the hottest regions of a Grad-CAM."""
    up = cv2.resize(cam.astype(np.float32), (64, 64), interpolation=cv2.INTER_CUBIC)
    mask = (up >= level * up.max()).astype(np.uint8) if up.max() > 0 else np.zeros_like(up, np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    regions = sorted(range(1, n), key=lambda i: stats[i, cv2.CC_STAT_AREA], reverse=True)[:max_boxes]
    sx, sy = width / 64, height / 64
    return [{"finding": finding, "confidence": round(score, 4), "source": "heatmap",
             "x1": round(stats[i, 0] * sx, 1), "y1": round(stats[i, 1] * sy, 1),
             "x2": round((stats[i, 0] + stats[i, 2]) * sx, 1), "y2": round((stats[i, 1] + stats[i, 3]) * sy, 1)}
            for i in regions]
