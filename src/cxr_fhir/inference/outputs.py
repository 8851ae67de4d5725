"""Raw model outputs -> the 14 reported finding probabilities (shared by inference and training)."""

from __future__ import annotations

import numpy as np

from ..domain.findings import FINDING_NAMES


def calibrate(logits: np.ndarray, platt: list[list[float]]) -> np.ndarray:
    """Per-output Platt scaling fitted on validation: p = sigmoid(a * logit + b)."""
    ab = np.asarray(platt, dtype=np.float64)
    z = logits.astype(np.float64) * ab[:, 0] + ab[:, 1]
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def report_probabilities(probs: np.ndarray, outputs: list[str], mix: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Probabilities for the 14 findings, (N,) each.

    ``mix`` maps a finding to [gate, specialist]: the gate's probability weighs the specialist
    output against the finding's own (pediatric pneumonia vs adult NIH pneumonia).
    """
    idx = {name: i for i, name in enumerate(outputs)}
    out = {}
    for name in FINDING_NAMES:
        p = probs[:, idx[name]]
        if name in mix:
            gate, specialist = mix[name]
            g = probs[:, idx[gate]]
            p = g * probs[:, idx[specialist]] + (1.0 - g) * p
        out[name] = p
    return out
