"""The 14-finding classifier: a (seed-ensembled) timm backbone with calibrated outputs and Grad-CAM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from .outputs import calibrate, report_probabilities
from .preprocess import normalise, resize_square
from .registry import ModelRegistryError, verified_file


@dataclass
class ClassifierOutput:
    probabilities: dict[str, float]     # the 14 findings, calibrated
    cams: dict[str, np.ndarray]         # finding -> (h, w) Grad-CAM in [0, 1], for the requested findings
    outputs: dict[str, float]           # every model output, calibrated (incl. pediatric head and gate)
    ranked: list[str]                   # the findings, most likely first (ties by catalogue order)


class ClassifierBase:
    """What every runtime of the classifier shares: the manifest entry, calibration and ranking."""

    def __init__(self, entry: dict[str, Any]):
        self.outputs: list[str] = entry["outputs"]
        self.size = int(entry["input_size"])
        self.mean = float(entry["normalisation"]["mean"])
        self.std = float(entry["normalisation"]["std"])
        self.platt = entry["calibration"]["params"]
        self.mix: dict[str, list[str]] = entry.get("mix", {})
        self.thresholds: dict[str, float] = entry["thresholds"]

    def input_array(self, pixels: np.ndarray) -> np.ndarray:
        """(1, 1, size, size) float32, normalised as in training."""
        return normalise(resize_square(pixels, self.size), self.mean, self.std)[None, None]

    def _calibrated(self, mean_logits: np.ndarray) -> tuple[np.ndarray, dict[str, float], list[str]]:
        """Calibrated outputs (1, n_outputs), the 14 reported probabilities, and the findings ranked."""
        probs = calibrate(mean_logits[None], self.platt)
        reported = {k: float(v[0]) for k, v in report_probabilities(probs, self.outputs, self.mix).items()}
        ranked = sorted(reported, key=lambda k: reported[k], reverse=True)
        return probs, reported, ranked

    def predict(self, pixels: np.ndarray, cam_for: int = 3) -> ClassifierOutput:
        """Probabilities for all 14, and heatmaps for the ``cam_for`` most likely findings."""
        raise NotImplementedError

    def _cam_output(self, name: str, probs: np.ndarray) -> int:
        """The output behind a finding; for a mixed finding, the one its gate favours."""
        if name in self.mix:
            gate, specialist = self.mix[name]
            if probs[self.outputs.index(gate)] >= 0.5:
                return self.outputs.index(specialist)
        return self.outputs.index(name)


class Classifier(ClassifierBase):
    """The reference runtime: the timm models in torch, Grad-CAM by autograd."""

    runtime = "torch"

    def __init__(self, weights_dir: Path, entry: dict[str, Any], precision: str | None = None):
        super().__init__(entry)
        # The calibration was fitted on logits computed under the same precision: keep them equal.
        # (``precision="float32"`` overrides it, for the parity checks of the exported runtimes.)
        self.bf16 = (precision or entry.get("precision", "float32")) == "bfloat16"
        # timm models: forward_features/forward_head are not part of nn.Module's (typed) interface.
        self.members: list[Any] = []
        for file_entry in entry["files"]:
            path = verified_file(weights_dir, file_entry)
            model = timm.create_model(entry["architecture"], pretrained=False, in_chans=entry.get("in_chans", 1),
                                      num_classes=len(self.outputs))
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except Exception as exc:
                raise ModelRegistryError(
                    f"weight file {path.name} does not fit {entry['architecture']}: {exc}") from exc
            self.members.append(model.eval().to(memory_format=torch.channels_last))

    def input_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.input_array(pixels))

    def predict(self, pixels: np.ndarray, cam_for: int = 3) -> ClassifierOutput:
        """Probabilities for all 14, and Grad-CAMs for the ``cam_for`` most likely findings.

        Grad-CAM is cheap here: the backbone runs once per member; gradients flow through the
        head alone, from the logits back to the last feature map.
        """
        x = self.input_tensor(pixels).contiguous(memory_format=torch.channels_last)
        feats: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for m in self.members:
                feats.append(m.forward_features(x).float())
        for m, f in zip(self.members, feats, strict=True):
            f.requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits.append(m.forward_head(f).float())
        mean_logits = torch.stack(logits).mean(0)[0]
        probs, reported, ranked = self._calibrated(mean_logits.detach().numpy())
        cams: dict[str, np.ndarray] = {}
        for name in ranked[:cam_for]:
            out = self._cam_output(name, probs[0])
            grads = torch.autograd.grad(mean_logits[out], feats, retain_graph=True)
            total: torch.Tensor | None = None
            for g, f in zip(grads, feats, strict=True):  # summed over the ensemble members
                term = torch.relu((g.mean(dim=(2, 3), keepdim=True) * f).sum(1))[0]
                total = term if total is None else total + term
            if total is None:
                raise ModelRegistryError("the classifier manifest entry lists no weight files")
            cam = total.detach().numpy()
            cams[name] = cam / cam.max() if cam.max() > 0 else cam
        return ClassifierOutput(probabilities=reported, cams=cams, ranked=ranked,
                                outputs={k: float(v) for k, v in zip(self.outputs, probs[0], strict=True)})

