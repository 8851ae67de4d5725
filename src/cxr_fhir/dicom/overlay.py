"""The overlay a doctor sees, burned into pixels for the PACS: the film (at most 1024 px a side with
its bands), the boxes, a banner that says this is an AI result, the priority and the top findings.

The banner and the findings sit in bands above and below the film, so no text hides anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..domain.analysis import Box, Finding
from ..domain.findings import BY_NAME

MAX_SIDE = 1024
FONT = cv2.FONT_HERSHEY_SIMPLEX
# RGB (the SC is written as RGB): the banner and the boxes must stand out from a grey film.
BANNER_BG, BANNER_FG = (160, 0, 0), (255, 255, 255)
FOOTER_BG, FOOTER_FG = (0, 0, 0), (255, 255, 255)
BOX_PRESENT, BOX_OTHER = (255, 64, 64), (255, 200, 0)
PRIORITY_COLOUR = {"stat": (255, 80, 80), "urgent": (255, 170, 0), "routine": (120, 220, 120)}


def _bands(width: int) -> tuple[int, int, float]:
    """Header and footer height (px) and the text scale for an image ``width`` pixels wide."""
    scale = max(0.4, width / 1400)
    line = int(32 * scale) + 8
    return line * 2, line * 3, scale


def _film(pixels: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
    """The film as 8-bit RGB scaled to fit ``budget`` px of height and MAX_SIDE of width."""
    h, w = pixels.shape
    scale = min(1.0, MAX_SIDE / w, budget / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = cv2.resize(np.clip(pixels, 0, 1).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor((grey * 255 + 0.5).astype(np.uint8), cv2.COLOR_GRAY2RGB), scale


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float, colour: tuple[int, int, int]) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, colour, max(1, round(2 * scale)), cv2.LINE_AA)


def render(pixels: np.ndarray, findings: Sequence[Finding], boxes: Sequence[Box], priority: str,
           banner: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB: header band (banner, priority), the film with boxes, footer band (findings)."""
    h, w = pixels.shape
    # The bands are sized for the film's final width, which the bands' height may itself reduce.
    header, footer, scale = _bands(min(MAX_SIDE, w))
    film, factor = _film(pixels, MAX_SIDE - header - footer)
    fh, fw = film.shape[:2]
    header, footer, scale = _bands(fw)
    present = {f.finding for f in findings if f.present}
    for box in boxes:
        colour = BOX_PRESENT if box.finding in present else BOX_OTHER
        p1 = (round(box.x1 * factor), round(box.y1 * factor))
        p2 = (round(box.x2 * factor), round(box.y2 * factor))
        cv2.rectangle(film, p1, p2, colour, max(2, round(3 * scale)))
        _text(film, BY_NAME[box.finding].display if box.finding in BY_NAME else box.finding,
              p1[0] + 4, max(p1[1] - 6, int(20 * scale)), 0.8 * scale, colour)
    top = np.zeros((header, fw, 3), np.uint8)
    top[:] = BANNER_BG
    line = header // 2
    _text(top, banner, 8, line - 8, scale, BANNER_FG)
    _text(top, f"Priority: {priority.upper()}", 8, 2 * line - 8, scale,
          PRIORITY_COLOUR.get(priority.lower(), BANNER_FG))
    bottom = np.zeros((footer, fw, 3), np.uint8)
    bottom[:] = FOOTER_BG
    line = footer // 3
    for n, f in enumerate(findings[:3]):
        name = BY_NAME[f.finding].display if f.finding in BY_NAME else f.finding
        mark = "present" if f.present else "below threshold"
        _text(bottom, f"{name}: {f.probability:.0%} ({mark})", 8, (n + 1) * line - 8, 0.9 * scale,
              BOX_PRESENT if f.present else FOOTER_FG)
    return np.ascontiguousarray(np.vstack([top, film, bottom]))
