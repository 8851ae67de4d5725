"""The lesion detector: an ultralytics YOLO model trained on the expert boxes, loaded from a local file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..domain.analysis import Box
from .registry import ModelRegistryError, verified_file
from .ultralytics_offline import configure


class Detector:
    def __init__(self, weights_dir: Path, entry: dict[str, Any], runtime_dir: Path):
        configure(runtime_dir)
        from ultralytics.models import YOLO  # the package that lists YOLO in __all__ (typed re-export)

        path = verified_file(weights_dir, entry["files"][0])
        try:
            self.model = YOLO(str(path), task="detect")
        except Exception as exc:
            raise ModelRegistryError(f"detector weights {path.name} cannot be loaded: {exc}") from exc
        self.size = int(entry["input_size"])
        self.conf = float(entry.get("confidence", 0.25))
        self.classes: list[str] = entry["classes"]

    def detect(self, pixels: np.ndarray) -> list[Box]:
        """Boxes in the image's own pixel coordinates, each with its finding and confidence."""
        grey = (pixels * 255).astype(np.uint8)
        bgr = np.repeat(grey[..., None], 3, axis=2)
        # ultralytics' predict() is annotated as a union of streams, tensors and Results; for one
        # array without stream=True it is a list of Results, each with its boxes: read them untyped.
        predictions: Any = self.model.predict(bgr, imgsz=self.size, conf=self.conf, device="cpu", verbose=False)
        found: Any = predictions[0].boxes
        xyxy: list[list[float]] = found.xyxy.tolist()
        classes: list[float] = found.cls.tolist()
        confidences: list[float] = found.conf.tolist()
        return [Box(finding=self.classes[int(cls)], confidence=round(float(conf), 4), source="detector",
                    x1=round(x1, 1), y1=round(y1, 1), x2=round(x2, 1), y2=round(y2, 1))
                for (x1, y1, x2, y2), cls, conf in zip(xyxy, classes, confidences, strict=True)]
