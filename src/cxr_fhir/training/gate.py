"""Fit the chest-radiograph plausibility gate: k-means prototypes of training thumbnails."""

from __future__ import annotations

import time

import numpy as np
from sklearn.cluster import KMeans
from tqdm import tqdm

from ..imaging import load_path
from ..imaging.plausibility import similarity, thumbnail
from ..inference.registry import write_manifest_section
from .datasets import Sample, split


def fit_gate(samples: list[Sample], weights_dir, command: str, prototypes: int = 16, size: int = 24,
             margin: float = 0.1, val_fraction: float = 0.2, split_seed: int = 0) -> dict:
    """Prototypes from the training patients; the threshold sits ``margin`` below the least similar
    validation radiograph, so no validation film is refused."""
    train, val = split(samples, val_fraction, split_seed)
    thumbs = np.stack([thumbnail(load_path(s.path).pixels, size) for s in tqdm(train, desc="gate train", unit="img")])
    km = KMeans(prototypes, n_init=3, random_state=0).fit(thumbs)
    centres = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    scores = np.array([similarity(load_path(s.path).pixels, centres) for s in tqdm(val, desc="gate val", unit="img")])
    section = {
        "name": "cxr-fhir-chest-gate", "version": time.strftime("%Y.%m.%d"), "thumbnail_size": size,
        "prototypes": np.round(centres, 5).tolist(), "min_similarity": round(float(scores.min()) - margin, 4),
        "training": {"command": command, "train_images": len(train), "validation_images": len(val),
                     "split": f"patient-wise, {val_fraction:.0%} of patients to validation (seed {split_seed})"},
        "validation": {"min_similarity": round(float(scores.min()), 4),
                       "p1_similarity": round(float(np.percentile(scores, 1)), 4),
                       "median_similarity": round(float(np.median(scores)), 4)},
    }
    write_manifest_section(weights_dir, "gate", section)
    return section
