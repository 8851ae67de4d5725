"""image -> AnalysisResult: plausibility gate, classifier, Grad-CAM, detector. Models load once.

The result is what the models say, typed: no triage, no HTTP, no FHIR (the services add those).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..domain.analysis import Box, Finding, ModelInfo
from ..imaging import XRayImage
from ..imaging.display import display_base
from ..imaging.plausibility import GateModel, GateVerdict, check_chest_radiograph
from .classifier import Classifier, ClassifierBase
from .detector import Detector
from .heatmap import boxes_from_cam, overlay_png
from .onnx_runtime import RUNTIME, OnnxClassifier, OnnxDetector, choose
from .registry import ModelRegistryError, manifest_sha256, read_manifest


@dataclass(frozen=True)
class AnalysisResult:
    """What the models found on one image."""

    probabilities: dict[str, float]       # the 14 findings, calibrated, rounded to 4 places
    thresholds: dict[str, float]          # their operating thresholds, rounded to 4 places
    top3: list[Finding]                   # the three most likely, most likely first
    boxes: list[Box]                      # detector boxes, plus heatmap boxes for present top-3 findings
    model: ModelInfo
    heatmaps: dict[str, np.ndarray] = field(repr=False)      # top-3 finding -> Grad-CAM in [0, 1]
    overlays: dict[str, bytes] = field(default_factory=dict, repr=False)  # top-3 finding -> PNG
    timings_ms: dict[str, float] = field(default_factory=dict)  # classify_ms, detect_ms, heatmap_ms, total_ms
    runtime: str = "torch"       # what ran the models: torch (the reference), onnxruntime, or mixed

    def as_json(self) -> dict[str, Any]:
        """The plain-data view (the dict shapes storage keeps), without heatmaps and overlays."""
        return {"probabilities": self.probabilities, "thresholds": self.thresholds,
                "top3": [f.as_dict() for f in self.top3], "boxes": [b.as_dict() for b in self.boxes],
                "model": self.model.as_dict(), "timings_ms": self.timings_ms}


class Pipeline:
    """``runtime``: "auto" runs each model on onnxruntime when the manifest has its exported graphs
    (``cxr-fhir models export --runtime onnxruntime``), else on torch; "torch" forces the reference;
    "onnxruntime" refuses to load without the graphs."""

    def __init__(self, weights_dir: Path, runtime_dir: Path, threads: int = 2, runtime: str = "auto"):
        manifest = read_manifest(weights_dir)
        gate = manifest.get("gate")
        if gate is None:  # checked before the slow model loading
            raise ModelRegistryError("the model manifest has no 'gate' entry: run 'cxr-fhir train gate'")
        self.gate = GateModel.from_manifest(gate)
        self.runtimes = {"classifier": choose(manifest["classifier"], runtime, "classifier")}
        self.classifier: ClassifierBase = (
            OnnxClassifier(weights_dir, manifest["classifier"], threads) if self.runtimes["classifier"] == RUNTIME
            else Classifier(weights_dir, manifest["classifier"]))
        self.detector: Detector | OnnxDetector | None = None
        if "detector" in manifest:
            self.runtimes["detector"] = choose(manifest["detector"], runtime, "detector")
            self.detector = (OnnxDetector(weights_dir, manifest["detector"], threads)
                             if self.runtimes["detector"] == RUNTIME
                             else Detector(weights_dir, manifest["detector"], runtime_dir))
        used = set(self.runtimes.values())
        self.runtime = used.pop() if len(used) == 1 else "mixed"
        self.threads = threads
        self.model_info = ModelInfo(
            name=str(manifest["classifier"]["name"]), version=str(manifest["classifier"]["version"]),
            manifest_sha256=manifest_sha256(weights_dir),
            classifier=str(manifest["classifier"]["architecture"]),
            detector=str(manifest["detector"]["architecture"]) if self.detector else None,
        )
        # torch modules are not re-entrant with autograd (Grad-CAM); one image at a time per pipeline.
        self._lock = threading.Lock()
        self._encoders = ThreadPoolExecutor(max_workers=3, thread_name_prefix="overlay")
        self.warm_up()

    @property
    def thresholds(self) -> dict[str, float]:
        """The classifier's operating thresholds, unrounded (a copy: changing it changes nothing here)."""
        return dict(self.classifier.thresholds)

    def warm_up(self) -> None:
        """One throw-away run so the first patient does not pay for lazy initialisation."""
        yy, xx = np.mgrid[0:512, 0:512] / 512.0
        fake = XRayImage(pixels=(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32),
                         media_type="image/png", bits=8)
        self.run(fake, check_plausible=False, render_overlays=True)

    def check_plausible(self, image: XRayImage) -> GateVerdict:
        """Raise ImageRejected when the image is clearly not a chest radiograph; otherwise the
        verdict, ``unusual`` when the film is atypical (analysed, but flagged 'read with care')."""
        return check_chest_radiograph(image.pixels, self.gate)

    def run(self, image: XRayImage, check_plausible: bool = True, render_overlays: bool = True) -> AnalysisResult:
        with self._lock:
            return self._run(image, check_plausible, render_overlays)

    def _run(self, image: XRayImage, check_plausible: bool, render_overlays: bool) -> AnalysisResult:
        # Ultralytics sets torch to (cores - 1) threads when it loads and predicts: take them back.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        t: dict[str, float] = {}
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
        top3 = [Finding(finding=k, probability=probs[k], threshold=round(thresholds[k], 4),
                        present=probs[k] >= thresholds[k]) for k in ranked]
        for item in top3:
            if item.present and not any(b.finding == item.finding for b in boxes):
                boxes += boxes_from_cam(out.cams[item.finding], image.width, image.height,
                                        item.finding, item.probability)
        if render_overlays:
            base = display_base(image.pixels)
            # OpenCV releases the GIL while encoding: the three PNGs are made side by side.
            pngs = self._encoders.map(lambda k: overlay_png(base, out.cams[k]), ranked)
            overlays = dict(zip(ranked, pngs, strict=True))
        else:
            overlays = {}
        t["heatmap_ms"] = (time.perf_counter() - mark) * 1000
        t["total_ms"] = (time.perf_counter() - start) * 1000
        return AnalysisResult(probabilities=probs, thresholds={k: round(v, 4) for k, v in thresholds.items()},
                              top3=top3, boxes=boxes, model=self.model_info,
                              heatmaps={k: out.cams[k] for k in ranked}, overlays=overlays,
                              timings_ms={k: round(v, 1) for k, v in t.items()}, runtime=self.runtime)
