"""Fit the chest-radiograph plausibility gate, and measure it.

Positives: real chest films (prototypes from the training patients only). Negatives: non-chest
images that installed packages ship (scikit-image samples, pydicom's test images) and made-up
documents. The gate scores how far a few features lie outside the real training films' range
(``imaging/plausibility.py``); its refusal threshold is below the lowest real film it was fitted on,
films below the bulk of the real ones are flagged "unusual", and the negatives, which take no part
in the fit, measure what it refuses.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.cluster import KMeans
from tqdm import tqdm

from ..imaging import ImageRejected, load, load_path
from ..imaging.image import stretch
from ..imaging.plausibility import FEATURES, SIDES, GateModel, check_chest_radiograph, features, thumbnail
from ..inference.registry import write_manifest_section
from .datasets import Sample, split

SKIMAGE_SAMPLES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
                   "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
                   "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
                   "binary_blobs")


@dataclass(frozen=True)
class Negative:
    name: str            # source:name
    group: str           # the base image (its variants share it)
    data: bytes | None   # the file as it would be uploaded (PNG, or DICOM for pydicom's files)
    pixels: np.ndarray | None = None  # the same image as the gate sees it, when the upload is refused earlier


def _png(grey: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _to_grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    return stretch(a)


def _variants(name: str, grey: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The image, inverted, its centre and a mirrored 90-degree turn: more negatives from each."""
    h, w = grey.shape
    yield name, grey
    yield f"{name}/inverted", 1.0 - grey
    yield f"{name}/centre", grey[h // 6: h - h // 6, w // 6: w - w // 6]
    yield f"{name}/turned", np.ascontiguousarray(np.rot90(grey)[:, ::-1])


def _upscale(grey: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Small samples enlarged to an uploadable size (the loader refuses under 128 px a side)."""
    h, w = grey.shape
    factor = max(1, int(np.ceil(min_side / min(h, w))))
    return np.kron(grey, np.ones((factor, factor), dtype=np.float32)) if factor > 1 else grey


def skimage_negatives() -> list[Negative]:
    try:
        import skimage.data as data
    except ImportError:
        return []
    out = []
    for name in SKIMAGE_SAMPLES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grey = _upscale(_to_grey(getattr(data, name)()))
        except Exception:  # noqa: BLE001 - a sample that needs a download is not used
            continue
        out += [Negative(f"skimage:{v}", f"skimage:{name}", _png(g)) for v, g in _variants(name, grey)]
    return out


def pydicom_negatives() -> list[Negative]:
    """pydicom's image-bearing test files (CT, MR, NM, US, segmentations ...). Uploaded as DICOM the
    loader refuses them (modality, size, colour); their pixels exported as PNG go to the gate."""
    try:
        import pydicom
        from pydicom.data import get_testdata_files
    except ImportError:
        return []
    out = []
    for path in sorted(get_testdata_files("*.dcm")):
        name = f"pydicom:{Path(path).name}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
                if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or "PixelData" not in ds:
                    continue
                arr = np.asarray(ds.pixel_array, dtype=np.float32)
        except Exception:  # noqa: BLE001 - unreadable or undecodable test files are not images to test
            continue
        arr = arr[0] if arr.ndim == 3 else arr
        if arr.ndim != 2 or min(arr.shape) < 64 or float(arr.std()) == 0.0:
            continue
        grey = stretch(arr)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            grey = 1.0 - grey
        data = Path(path).read_bytes()
        out.append(Negative(name, name, data, _upscale(grey)))
        out += [Negative(f"{name}/png:{v}", name, _png(g)) for v, g in _variants("slice", _upscale(grey))]
    return out


_WORDS = ("patient discharge summary medication dose daily tablet review clinic follow up history examination "
          "findings impression recommendation signature date department emergency radiology report referral "
          "insurance invoice total amount payable account reference consent form name address telephone").split()


def document_negatives(count: int = 12, seed: int = 0) -> list[Negative]:
    """Made-up documents: text pages, forms, tables, a dark screen, a noisy scan."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        w, h = (850, 1100) if i % 3 else (1100, 850)
        dark = i % 6 == 5
        page = Image.new("L", (w, h), 30 if dark else 250)
        draw = ImageDraw.Draw(page)
        ink = 225 if dark else int(rng.integers(0, 60))
        size = int(rng.integers(12, 30))
        font = ImageFont.load_default(size=size)
        y = int(rng.integers(30, 90))
        if i % 4 == 1:  # a form: boxes and labels
            while y < h - 80:
                draw.text((60, y), " ".join(rng.choice(_WORDS, 2)) + ":", fill=ink, font=font)
                draw.rectangle((w // 2, y - 4, w - 60, y + size + 6), outline=ink, width=2)
                y += size * 3
        elif i % 4 == 2:  # a table
            cols = int(rng.integers(3, 6))
            for r in range(int((h - 2 * y) / (size * 2))):
                for c in range(cols + 1):
                    x = 50 + c * (w - 100) // cols
                    draw.line((x, y + r * size * 2, x, y + (r + 1) * size * 2), fill=ink, width=1)
                    if c < cols:
                        draw.text((x + 6, y + r * size * 2 + 4), str(rng.choice(_WORDS)), fill=ink, font=font)
                draw.line((50, y + r * size * 2, w - 50, y + r * size * 2), fill=ink, width=1)
        else:  # prose, with a heading
            heading = ImageFont.load_default(size=size * 2)
            draw.text((60, y), " ".join(rng.choice(_WORDS, 3)).upper(), fill=ink, font=heading)
            y += size * 4
            while y < h - 60:
                line = " ".join(rng.choice(_WORDS, int(rng.integers(4, 12))))
                draw.text((60, y), line, fill=ink, font=font)
                y += int(size * 1.5)
        grey = np.asarray(page, dtype=np.float32) / 255.0
        if i % 5 == 4:  # a photocopied/scanned look: blur, shading and noise
            import cv2
            yy, xx = np.mgrid[0:h, 0:w]
            grey = cv2.GaussianBlur(grey, (0, 0), 1.2) * (0.85 + 0.15 * xx / w) + rng.normal(0, 0.03, grey.shape)
            grey = np.clip(grey, 0, 1).astype(np.float32)
        out.append(Negative(f"document:{i}", f"document:{i}", _png(grey)))
    return out


def negatives() -> list[Negative]:
    return skimage_negatives() + pydicom_negatives() + document_negatives()


def _negative_pixels(neg: Negative) -> tuple[np.ndarray | None, str | None]:
    """(what the gate would see, or None) and the loader's refusal reason when the upload is refused."""
    reason = None
    if neg.data is not None:
        try:
            return load(neg.data).pixels, None
        except ImageRejected as exc:
            reason = exc.code
    return neg.pixels, reason


def _feature_rows(images: Iterable[np.ndarray], prototypes: np.ndarray) -> np.ndarray:
    return np.stack([features(px, prototypes) for px in images])


def fit_gate(samples: list[Sample], weights_dir: Path, command: str, prototypes: int = 16, size: int = 24,
             val_fraction: float = 0.2, split_seed: int = 0, unusual_percentile: float = 1.0, cap: float = 3.0,
             margin: float = 0.25,
             measure: list[tuple[str, list[Path], int]] | None = None) -> dict[str, Any]:
    """Prototypes and feature percentiles from the training patients; thresholds from the training +
    validation films; then measured on the negatives and on ``measure``:
    (label, files, min_side) sets of real films to count false refusals and flags on."""
    train, val = split(samples, val_fraction, split_seed)
    train_px = [load_path(s.path).pixels for s in tqdm(train, desc="gate train", unit="img")]
    thumbs = np.stack([thumbnail(px, size) for px in train_px])
    km = KMeans(prototypes, n_init=3, random_state=0).fit(thumbs)
    centres = (km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)).astype(np.float32)
    centres = np.round(centres, 5).astype(np.float32)
    x_train = _feature_rows(train_px, centres)
    del train_px
    x_val = _feature_rows((load_path(s.path).pixels for s in tqdm(val, desc="gate val", unit="img")), centres)

    negs = negatives()
    neg_px, neg_names, by_loader = [], [], {}
    for neg in tqdm(negs, desc="gate negatives", unit="img"):
        px, reason = _negative_pixels(neg)
        if reason is not None:
            by_loader[neg.name] = reason
        if px is not None:
            neg_px.append(px)
            neg_names.append(neg.name)

    # The model is the real films' own spread: percentiles of the training films' features.
    model = {"kind": "capped deviation from the real films' 1st-99th percentile range", "features": list(FEATURES),
             "low": np.round(np.percentile(x_train, 1, axis=0), 5).tolist(),
             "mid": np.round(np.percentile(x_train, 50, axis=0), 5).tolist(),
             "high": np.round(np.percentile(x_train, 99, axis=0), 5).tolist(), "side": list(SIDES), "cap": cap}
    provisional = GateModel.from_manifest({"prototypes": centres, "model": model, "refuse_below": 0.0,
                                           "unusual_below": 0.0})
    real = np.array([provisional.score_features(f) for f in np.vstack([x_train, x_val])])
    lowest_real = float(real.min())
    # Refuse only well below every training/validation film; films below the bulk of them are flagged.
    refuse = lowest_real - margin
    unusual = max(refuse, float(np.percentile(real, unusual_percentile)))

    section: dict[str, Any] = {
        "name": "cxr-fhir-chest-gate", "version": time.strftime("%Y.%m.%d"), "thumbnail_size": size,
        "prototypes": centres.tolist(), "model": model,
        "refuse_below": round(refuse, 4), "unusual_below": round(unusual, 4),
        "training": {"command": command, "train_images": len(train), "validation_images": len(val),
                     "negatives": len(negs), "negatives_to_gate": len(neg_px),
                     "split": f"patient-wise, {val_fraction:.0%} of patients to validation (seed {split_seed})",
                     "thresholds": f"refuse_below: {margin:g} below the lowest training/validation film "
                                   f"({lowest_real:.3f}); unusual_below: the {unusual_percentile:g}th percentile of "
                                   f"those films"},
    }
    gate = GateModel.from_manifest(section)
    section["validation"] = measure_gate(gate, measure or [], negs, neg_px, neg_names, by_loader)
    write_manifest_section(weights_dir, "gate", section)
    return section


def measure_gate(gate: GateModel, real_sets: list[tuple[str, list[Path], int]], negs: list[Negative],
                 neg_px: list[np.ndarray], neg_names: list[str], by_loader: dict[str, str]) -> dict[str, Any]:
    """False refusals and flags on every real film given; refusals of the negatives."""
    real: dict[str, Any] = {}
    total = refused = flagged = 0
    lowest: tuple[float, str] = (float("inf"), "")
    for label, files, min_side in real_sets:
        r = f = 0
        for path in tqdm(files, desc=f"measure {label}", unit="img"):
            try:
                verdict = check_chest_radiograph(load_path(path, min_side=min_side).pixels, gate)
            except ImageRejected:
                r += 1
                continue
            f += verdict.unusual
            lowest = min(lowest, (verdict.score, f"{label}/{path.name}"))
        real[label] = {"films": len(files), "refused": r, "flagged_unusual": f}
        total, refused, flagged = total + len(files), refused + r, flagged + f
    gate_refused, passed = 0, []
    for px, name in zip(neg_px, neg_names, strict=True):
        try:
            check_chest_radiograph(px, gate)
            passed.append(name)
        except ImageRejected:
            gate_refused += 1
    uploads_refused = sum(1 for n in negs if n.name in by_loader or n.name not in passed)
    return {
        "real_films": total, "real_refused": refused, "real_flagged_unusual": flagged,
        "real_flagged_unusual_rate": round(flagged / total, 4) if total else None,
        "lowest_real": {"score": round(lowest[0], 3), "film": lowest[1]} if total else None, "by_set": real,
        "negatives": len(negs), "negatives_refused": uploads_refused,
        "negatives_refused_by_loader": len(by_loader),
        "negatives_to_gate": len(neg_px), "negatives_refused_by_gate": gate_refused,
        "negatives_passed": passed,
    }
