"""Readers for the NIH ChestX-ray14 layout and folder-per-class layouts, and patient-wise splits.

A sample's label vector has one entry per model output; NaN means "not annotated by this source",
which the masked loss ignores.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..domain.findings import FINDING_NAMES

# Model outputs: the 14 NIH findings, pediatric (Kermany-style) pneumonia, and a pediatric-domain
# gate. Kermany pneumonia does not transfer to adult NIH pneumonia, so each has its own output and
# the reported Pneumonia mixes them by the gate (see inference/classifier.py).
PEDIATRIC_PNEUMONIA = "Pneumonia_pediatric"
PEDIATRIC_DOMAIN = "pediatric_domain"
OUTPUTS: tuple[str, ...] = FINDING_NAMES + (PEDIATRIC_PNEUMONIA, PEDIATRIC_DOMAIN)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


@dataclass(frozen=True)
class Sample:
    path: Path
    labels: np.ndarray   # float32 (len(OUTPUTS),), NaN = unannotated
    patient: str
    source: str          # nih | kermany | ...


def _vector(**known: float) -> np.ndarray:
    v = np.full(len(OUTPUTS), np.nan, dtype=np.float32)
    for name, value in known.items():
        v[OUTPUTS.index(name)] = value
    return v


def find_label_table(root: Path) -> Path:
    """The NIH label table beside the image folder, above it, or in a sibling dataset (nih64 shares nih's)."""
    for folder in (root, root.parent, *sorted(p for p in root.parent.parent.iterdir() if p.is_dir())):
        for pattern in ("Data_Entry_2017*.csv.gz", "Data_Entry_2017*.csv"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    raise FileNotFoundError(f"no Data_Entry_2017*.csv(.gz) near {root}; pass the table explicitly")


def read_label_table(table: Path) -> dict[str, tuple[str, str]]:
    """Image Index -> (Finding Labels, Patient ID)."""
    opener = gzip.open if table.suffix == ".gz" else open
    with opener(table, "rt", newline="") as fh:
        return {row["Image Index"]: (row["Finding Labels"], row["Patient ID"]) for row in csv.DictReader(fh)}


def read_nih(image_dir: Path, table: Path | None = None, source: str = "nih") -> list[Sample]:
    """Every image in ``image_dir`` that the NIH label table knows (any subset of the 112,120)."""
    image_dir = Path(image_dir)
    labels = read_label_table(table or find_label_table(image_dir))
    samples = []
    for path in sorted(image_dir.iterdir()):
        entry = labels.get(path.name)
        if entry is None or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        present = set(entry[0].split("|"))
        vec = _vector(**{name: float(name in present) for name in FINDING_NAMES}, **{PEDIATRIC_DOMAIN: 0.0})
        samples.append(Sample(path, vec, f"nih:{int(entry[1])}", source))
    return samples


_KERMANY_PATIENT = re.compile(r"^(person\d+|(?:NORMAL2-)?IM-\d+)")


def read_kermany(root: Path, normal_negative_for_all: bool = False) -> list[Sample]:
    """Folder-per-class pediatric set: PNEUMONIA -> pediatric pneumonia positive, NORMAL -> negative.

    With ``normal_negative_for_all`` a NORMAL image also counts as negative for the 14 NIH findings.
    """
    samples = []
    for cls, positive in (("NORMAL", 0.0), ("PNEUMONIA", 1.0)):
        for path in sorted((Path(root) / cls).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            known = {PEDIATRIC_PNEUMONIA: positive, PEDIATRIC_DOMAIN: 1.0}
            if normal_negative_for_all and not positive:
                known.update({name: 0.0 for name in FINDING_NAMES})
            m = _KERMANY_PATIENT.match(path.name)
            samples.append(Sample(path, _vector(**known), f"kermany:{m.group(1) if m else path.stem}", "kermany"))
    return samples


def is_validation(patient: str, fraction: float, seed: int) -> bool:
    """Deterministic patient-wise assignment: a patient's images never straddle the split."""
    h = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def split(samples: list[Sample], fraction: float = 0.2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if not is_validation(s.patient, fraction, seed)]
    val = [s for s in samples if is_validation(s.patient, fraction, seed)]
    return train, val
