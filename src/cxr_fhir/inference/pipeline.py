"""image -> AnalysisResult: plausibility gate, classifier, Grad-CAM, detector, triage. Models load once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..domain.triage import load_rules, triage
from ..imaging import XRayImage
from ..imaging.plausibility import check_chest_radiograph
from .classifier import Classifier
from .detector import Detector
from .heatmap import boxes_from_cam, display_base, overlay_png
from .registry import ModelRegistryError, manifest_sha256, read_manifest


@dataclass
class AnalysisResult:
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    top3: list[dict[str, Any]]
    boxes: list[dict[str, Any]]
    priority: str
    priority_reasons: list[str]
    model: dict[str, Any]
    heatmaps: dict[str, np.ndarray] = field(repr=False)
    overlays: dict[str, bytes] = field(default_factory=dict, repr=False)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The plain-data view (what `cxr-fhir analyze --json` prints and storage keeps)."""
        return {"probabilities": self.probabilities, "thresholds": self.thresholds, "top3": self.top3,
                "boxes": self.boxes, "priority": self.priority, "priority_reasons": self.priority_reasons,
                "model": self.model, "timings_ms": self.timings_ms}


class Pipeline:
    def __init__(self, weights_dir: Path, runtime_dir: Path, threads: int = 2):
        manifest = read_manifest(weights_dir)
        gate = manifest.get("gate")
        if gate is None:  # checked before the slow model loading
            raise ModelRegistryError("the model manifest has no 'gate' entry: run 'cxr-fhir train gate'")
        self.prototypes = np.asarray(gate["prototypes"], dtype=np.float32)
        self.min_similarity = float(gate["min_similarity"])
        self.classifier = Classifier(weights_dir, manifest["classifier"])
        self.detector = Detector(weights_dir, manifest["detector"], runtime_dir) if "detector" in manifest else None
        self.threads = threads
        self.rules = load_rules()
        self.model_info = {
            "name": manifest["classifier"]["name"], "version": manifest["classifier"]["version"],
            "manifest_sha256": manifest_sha256(weights_dir),
            "classifier": manifest["classifier"]["architecture"],
            "detector": manifest["detector"]["architecture"] if self.detector else None,
        }
        # torch modules are not re-entrant with autograd (Grad-CAM); one image at a time per pipeline.
        self._lock = threading.Lock()
        self._encoders = ThreadPoolExecutor(max_workers=3, thread_name_prefix="overlay")
        self.warm_up()

    def warm_up(self) -> None:
        """One throw-away run so the first patient does not pay for lazy initialisation."""
        yy, xx = np.mgrid[0:512, 0:512] / 512.0
        fake = XRayImage(pixels=(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32),
                         media_type="image/png", bits=8)
        self.run(fake, check_plausible=False, render_overlays=True)

    def check_plausible(self, image: XRayImage) -> None:
        """Raise ImageRejected when the image is not plausibly a chest radiograph."""
        check_chest_radiograph(image.pixels, self.prototypes, self.min_similarity)

    def run(self, image: XRayImage, check_plausible: bool = True, render_overlays: bool = True) -> AnalysisResult:
        with self._lock:
            return self._run(image, check_plausible, render_overlays)

    def _run(self, image: XRayImage, check_plausible: bool, render_overlays: bool) -> AnalysisResult:
        # Ultralytics sets torch to (cores - 1) threads when it loads and predicts: take them back.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        t = {}
        start = time.perf_counter()
        if check_plausible:
            self.check_plausible(image)
        out = self.classifier.predict(image.pixels, cam_for=3)
        t["classify_ms"] = (time.perf_counter() - start) * 1000
        mark = time.perf_counter()
        boxes = self.detector.detect(image.pixels) if self.detector else []
        t["detect_ms"] = (time.perf_counter() - mark) * 1000
        mark = time.perf_counter()
        thresholds = self.classifier.thresholds
        probs = {k: round(v, 4) for k, v in out.probabilities.items()}
        ranked = out.ranked[:3]  # the order the CAMs were made in (rounding could reorder near-ties)
        top3 = [{"finding": k, "probability": probs[k], "threshold": round(thresholds[k], 4),
                 "present": probs[k] >= thresholds[k]} for k in ranked]
        for item in top3:
            if item["present"] and not any(b["finding"] == item["finding"] for b in boxes):
                boxes += boxes_from_cam(out.cams[item["finding"]], image.width, image.height,
                                        item["finding"], item["probability"])
        if render_overlays:
            base = display_base(image.pixels)
            # OpenCV releases the GIL while encoding: the three PNGs are made side by side.
            overlays = dict(zip(ranked, self._encoders.map(lambda k: overlay_png(base, out.cams[k]), ranked)))
        else:
            overlays = {}
        t["heatmap_ms"] = (time.perf_counter() - mark) * 1000
        result = triage(probs, thresholds, boxes, float(image.width * image.height), self.rules)
        t["total_ms"] = (time.perf_counter() - start) * 1000
        return AnalysisResult(probabilities=probs, thresholds={k: round(v, 4) for k, v in thresholds.items()},
                              top3=top3, boxes=boxes, priority=result.priority, priority_reasons=result.reasons,
                              model=self.model_info, heatmaps={k: out.cams[k] for k in ranked}, overlays=overlays,
                              timings_ms={k: round(v, 1) for k, v in t.items()})
