"""Heatmap rendering and heatmap-derived boxes."""

from __future__ import annotations

import cv2
import numpy as np

from ..domain.analysis import Box


def overlay_png(base: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> bytes:
    """A jet-coloured heatmap blended over the display radiograph (see imaging.display), as PNG."""
    h, w = base.shape[:2]
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    colour = cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255.0), cv2.COLORMAP_JET)
    weight = cv2.cvtColor(alpha * heat, cv2.COLOR_GRAY2BGR)  # transparent where the model did not look
    blended = cv2.convertScaleAbs(base * (1 - weight) + colour * weight)
    ok, png = cv2.imencode(".png", blended, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(png.tobytes())


def boxes_from_cam(cam: np.ndarray, width: int, height: int, finding: str, score: float,
                   level: float = 0.6, max_boxes: int = 2) -> list[Box]:
    """Boxes (original pixel coordinates) around the hottest regions of a Grad-CAM."""
    up = cv2.resize(cam.astype(np.float32), (64, 64), interpolation=cv2.INTER_CUBIC)
    mask = (up >= level * up.max()).astype(np.uint8) if up.max() > 0 else np.zeros_like(up, np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    regions = sorted(range(1, n), key=lambda i: int(stats[i, cv2.CC_STAT_AREA]), reverse=True)[:max_boxes]
    sx, sy = width / 64, height / 64
    boxes = []
    for i in regions:
        left, top, w, h = (int(v) for v in stats[i, :4])
        boxes.append(Box(finding=finding, confidence=round(score, 4), source="heatmap",
                         x1=round(left * sx, 1), y1=round(top * sy, 1),
                         x2=round((left + w) * sx, 1), y2=round((top + h) * sy, 1)))
    return boxes
