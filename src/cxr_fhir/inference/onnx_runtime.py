"""The optimised runtime: the classifier members and the detector as ONNX graphs run by onnxruntime.

torch stays the reference (``cxr-fhir models export --runtime onnxruntime`` writes the graphs from
it, and the parity tests hold the two together). The manifest records the graphs under each
model's ``runtimes.onnxruntime`` with their SHA-256 and the hashes of the torch weights they were
made from: a graph made from other weights than the registered ones is never used.

Heatmaps without gradients: the classifier's head is global average pooling and one linear layer,
so the gradient of an output with respect to the last feature map is that output's weight row
divided by the map's area, the same at every position. Grad-CAM's channel weights are then the
linear weights themselves, and Grad-CAM is the class activation map ReLU(sum_k w_ck A_k) up to a
positive factor, which the normalisation to [0, 1] removes. The exported graph computes the maps
of every output (a 1x1 convolution of the feature map with the linear weights) beside the logits.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..domain.analysis import Box
from .classifier import ClassifierBase, ClassifierOutput
from .registry import ModelRegistryError, verified_file

RUNTIME = "onnxruntime"
RUNTIMES = ("auto", "torch", RUNTIME)
log = logging.getLogger("cxr_fhir.inference")


def installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def unusable(entry: dict[str, Any]) -> str | None:
    """Why the model's onnxruntime graphs cannot stand in for its torch weights, or None when they can."""
    exported = entry.get("runtimes", {}).get(RUNTIME)
    if not exported:
        return "not exported (run 'cxr-fhir models export --runtime onnxruntime')"
    if exported.get("source_sha256") != [f["sha256"] for f in entry["files"]]:
        return "exported from other weights than the registered ones: export again"
    if not installed():
        return "the onnxruntime package is not installed"
    return None


def choose(entry: dict[str, Any], requested: str, model: str) -> str:
    """The runtime to load a model with: ``auto`` takes onnxruntime where it is usable."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}: one of {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch"
    reason = unusable(entry)
    if reason is None:
        return RUNTIME
    if requested == RUNTIME:
        raise ModelRegistryError(f"the {model} cannot run on onnxruntime: {reason}")
    log.info("the %s runs on torch: onnxruntime %s", model, reason)
    return "torch"


def session(path: Path, threads: int) -> Any:
    """An onnxruntime session on the CPU with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle workers sleep instead of spinning: the service shares the cores with its web workers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelRegistryError(f"ONNX graph {path.name} cannot be loaded: {exc}") from exc


class OnnxClassifier(ClassifierBase):
    """The classifier ensemble on onnxruntime (float32); heatmaps are the exported class activation maps."""

    runtime = RUNTIME

    def __init__(self, weights_dir: Path, entry: dict[str, Any], threads: int = 2):
        super().__init__(entry)
        exported = entry["runtimes"][RUNTIME]
        for source in entry["files"]:  # the registered weights stay checked: a corrupt registry is refused
            verified_file(weights_dir, source)
        self.sessions = [session(verified_file(weights_dir, f), threads) for f in exported["files"]]
        if not self.sessions:
            raise ModelRegistryError("the classifier's onnxruntime entry lists no graphs")

    def predict(self, pixels: np.ndarray, cam_for: int = 3) -> ClassifierOutput:
        x = self.input_array(pixels)
        runs: list[list[np.ndarray]] = [s.run(["logits", "cams"], {"image": x}) for s in self.sessions]
        mean_logits = np.stack([r[0][0] for r in runs]).mean(0, dtype=np.float32)
        probs, reported, ranked = self._calibrated(mean_logits)
        cams: dict[str, np.ndarray] = {}
        for name in ranked[:cam_for]:
            out = self._cam_output(name, probs[0])
            # Summed over the ensemble members after the ReLU, as the torch Grad-CAM does.
            cam: np.ndarray = np.maximum(runs[0][1][0, out], 0.0)
            for r in runs[1:]:
                cam = cam + np.maximum(r[1][0, out], 0.0)
            cams[name] = cam / cam.max() if cam.max() > 0 else cam
        return ClassifierOutput(probabilities=reported, cams=cams, ranked=ranked,
                                outputs={k: float(v) for k, v in zip(self.outputs, probs[0], strict=True)})


class OnnxDetector:
    """The YOLO detector on onnxruntime, with ultralytics' letterbox, NMS and box scaling done in numpy."""

    runtime = RUNTIME

    def __init__(self, weights_dir: Path, entry: dict[str, Any], threads: int = 2):
        exported = entry["runtimes"][RUNTIME]
        verified_file(weights_dir, entry["files"][0])
        self.session = session(verified_file(weights_dir, exported["files"][0]), threads)
        self.size = int(entry["input_size"])
        self.conf = float(entry.get("confidence", 0.25))
        self.classes: list[str] = entry["classes"]
        self.iou = float(exported.get("iou", 0.7))
        self.max_det = int(exported.get("max_det", 300))
        self.stride = int(exported.get("stride", 32))
        # A graph with free height and width takes ultralytics' minimal rectangle, as the torch model does.
        self.dynamic = bool(exported.get("dynamic", True))
        self.input = str(exported.get("input", "images"))

    def letterbox(self, grey: np.ndarray) -> np.ndarray:
        """ultralytics' LetterBox (centred, padding 114, bilinear) for one grey film, as (1, 3, h, w) in [0, 1]."""
        h0, w0 = grey.shape
        r = min(self.size / h0, self.size / w0)
        new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
        dw, dh = float(self.size - new_w), float(self.size - new_h)
        if self.dynamic:
            dw, dh = float(np.mod(dw, self.stride)), float(np.mod(dh, self.stride))
        dw, dh = dw / 2, dh / 2
        top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
        img = grey if (w0, h0) == (new_w, new_h) else cv2.resize(grey, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=114)
        x = img.astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(np.broadcast_to(x[None, None], (1, 3, *x.shape)))

    def detect(self, pixels: np.ndarray) -> list[Box]:
        """Boxes in the image's own pixel coordinates, each with its finding and confidence."""
        grey = (pixels * 255).astype(np.uint8)
        x = self.letterbox(grey)
        pred: np.ndarray = self.session.run(None, {self.input: x})[0][0]  # (4 + classes, anchors)
        scores = pred[4:4 + len(self.classes)]
        best = scores.max(0)
        keep = best > self.conf
        if not keep.any():
            return []
        cls = scores[:, keep].argmax(0)
        conf = best[keep]
        cx, cy, w, h = pred[:4, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        chosen = _nms(boxes + (cls * 7680.0)[:, None].astype(np.float32), conf, self.iou)[:self.max_det]
        boxes, cls, conf = self._scale(boxes[chosen], x.shape[2:], grey.shape), cls[chosen], conf[chosen]
        return [Box(finding=self.classes[int(c)], confidence=round(float(p), 4), source="detector",
                    x1=round(float(b[0]), 1), y1=round(float(b[1]), 1), x2=round(float(b[2]), 1),
                    y2=round(float(b[3]), 1))
                for b, c, p in zip(boxes, cls, conf, strict=True)]

    @staticmethod
    def _scale(boxes: np.ndarray, shape: tuple[int, ...], original: tuple[int, ...]) -> np.ndarray:
        """ultralytics' scale_boxes: letterboxed coordinates back to the original image, clipped to it."""
        (h1, w1), (h0, w0) = shape, original
        gain = min(h1 / h0, w1 / w0)
        new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
        pad_x, pad_y = round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / (new_w / w0)).clip(0, w0)
        out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / (new_h / h0)).clip(0, h0)
        return out


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision's): indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    kept: list[int] = []
    while order.size:
        i = int(order[0])
        kept.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return np.asarray(kept, dtype=np.int64)
