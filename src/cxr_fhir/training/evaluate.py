"""Evaluate the registered models: AUROC with bootstrap CIs, operating points, ROC curves, detector mAP@0.5,
localisation (expert boxes hit by our boxes, and Grad-CAM pointing game). Writes a results folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..domain.findings import FINDING_NAMES
from ..imaging import load_path
from ..inference.classifier import Classifier
from ..inference.detector import Detector
from ..inference.registry import read_manifest
from . import metrics
from .datasets import OUTPUTS, PEDIATRIC_DOMAIN, PEDIATRIC_PNEUMONIA, Sample, is_validation
from .detector import ORIGINAL_SIDE, read_boxes

IOU_HIT = 0.25


def select(samples: list[Sample], split: str, manifest: dict) -> list[Sample]:
    if split == "all":
        return samples
    cfg = manifest["classifier"]["training"]["config"]
    return [s for s in samples if is_validation(s.patient, cfg["val_fraction"], cfg["split_seed"])]


def iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision(preds: list[tuple[float, int, tuple]], truths: dict[int, list[tuple]],
                      thr: float = 0.5) -> float | None:
    """VOC all-point AP for one class: preds are (score, image index, box), truths image -> boxes."""
    n_true = sum(len(v) for v in truths.values())
    if n_true == 0:
        return None
    used = {k: [False] * len(v) for k, v in truths.items()}
    tp = []
    for _score, img, box in sorted(preds, key=lambda p: -p[0]):
        cands = truths.get(img, [])
        best, best_j = 0.0, -1
        for j, t in enumerate(cands):
            o = iou(box, t)
            if o > best:
                best, best_j = o, j
        if best >= thr and not used[img][best_j]:
            used[img][best_j] = True
            tp.append(1)
        else:
            tp.append(0)
    if not tp:
        return 0.0
    tp_cum = np.cumsum(tp)
    recall = tp_cum / n_true
    precision = tp_cum / np.arange(1, len(tp) + 1)
    mrec = np.concatenate([[0], recall, [1]])
    mpre = np.concatenate([[0], precision, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@dataclass
class _Collected:
    """What the models said on every chosen image, and the expert boxes to score them against."""

    probs: list[list[float]] = field(default_factory=list)
    labels: list[list[float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    raw: list[list[float]] = field(default_factory=list)
    det_preds: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in FINDING_NAMES})
    det_truth: dict[str, dict[int, list[Any]]] = field(default_factory=lambda: {n: {} for n in FINDING_NAMES})
    hits: dict[str, int] = field(default_factory=lambda: {"boxes": 0, "boxes_hit": 0, "pointing_hit": 0})


def _collect(chosen: list[Sample], clf: Classifier, det: Detector | None,
             expert: dict[str, list[Any]]) -> _Collected:
    got = _Collected()
    for i, s in enumerate(tqdm(chosen, desc="evaluate", unit="img")):
        image = load_path(s.path, min_side=32)
        truths = expert.get(s.path.name, []) if s.source == "nih" else []
        wanted = sorted({t[0] for t in truths})
        # Grad-CAMs only where expert boxes exist to point at (the pointing game below).
        result = clf.predict(image.pixels, cam_for=len(FINDING_NAMES) if wanted else 0)
        got.probs.append([result.probabilities[n] for n in FINDING_NAMES])
        got.raw.append([result.outputs[n] for n in OUTPUTS])
        got.labels.append(s.labels)
        got.sources.append(s.source)
        if truths:
            _score_boxes(got, i, image, truths, det, result.cams)
    return got


def _score_boxes(got: _Collected, i: int, image: Any, truths: list[Any], det: Detector | None,
                 cams: dict[str, np.ndarray]) -> None:
    scale = image.width / ORIGINAL_SIDE
    boxes = [b.as_dict() for b in det.detect(image.pixels)] if det else []
    for b in boxes:
        got.det_preds[b["finding"]].append((b["confidence"], i, (b["x1"], b["y1"], b["x2"], b["y2"])))
    for name, x1, y1, x2, y2 in truths:
        t = (x1 * scale, y1 * scale, x2 * scale, y2 * scale)
        got.det_truth[name].setdefault(i, []).append(t)
        got.hits["boxes"] += 1
        got.hits["boxes_hit"] += any(b["finding"] == name and iou((b["x1"], b["y1"], b["x2"], b["y2"]), t) >= IOU_HIT
                                     for b in boxes)
        cam = cams[name]
        py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
        cx, cy = (px + 0.5) * image.width / cam.shape[1], (py + 0.5) * image.height / cam.shape[0]
        got.hits["pointing_hit"] += (t[0] <= cx <= t[2]) and (t[1] <= cy <= t[3])


def _per_finding(labels_a: np.ndarray, probs_a: np.ndarray, nih: np.ndarray, thresholds: dict[str, float],
                 bootstrap: int) -> dict[str, dict[str, Any]]:
    per = {}
    for j, name in enumerate(FINDING_NAMES):
        y, p = labels_a[nih, j], probs_a[nih, j]
        sens, spec = metrics.sens_spec(y, p, thresholds[name]) if len(y) else (None, None)
        per[name] = {"auroc": metrics.auroc(y, p), "ci95": metrics.bootstrap_auroc(y, p, bootstrap),
                     "positives": int(np.nansum(y)), "n": int(len(y)), "threshold": thresholds[name],
                     "sensitivity": sens, "specificity": spec}
    return per


def _pneumonia_heads(labels_a: np.ndarray, raw_a: np.ndarray, nih: np.ndarray, ker: np.ndarray, ky: np.ndarray,
                     kp: np.ndarray, mixed_on_nih: float | None) -> dict[str, float | None]:
    """Why pneumonia has two outputs: each head measured on each population."""
    ny = labels_a[nih, FINDING_NAMES.index("Pneumonia")]
    domain_y = np.concatenate([np.zeros(int(nih.sum())), np.ones(int(ker.sum()))])
    domain = OUTPUTS.index(PEDIATRIC_DOMAIN)
    domain_p = np.concatenate([raw_a[nih, domain], raw_a[ker, domain]])
    return {
        "adult_head_on_nih": metrics.auroc(ny, raw_a[nih, OUTPUTS.index("Pneumonia")]),
        "pediatric_head_on_nih": metrics.auroc(ny, raw_a[nih, OUTPUTS.index(PEDIATRIC_PNEUMONIA)]),
        "adult_head_on_kermany": metrics.auroc(ky, raw_a[ker, OUTPUTS.index("Pneumonia")]),
        "pediatric_head_on_kermany": metrics.auroc(ky, raw_a[ker, OUTPUTS.index(PEDIATRIC_PNEUMONIA)]),
        "mixed_on_nih": mixed_on_nih,
        "mixed_on_kermany": metrics.auroc(ky, kp),
        "domain_gate_auroc": metrics.auroc(domain_y, domain_p),
    }


def _localisation(got: _Collected) -> dict[str, Any]:
    aps = {n: average_precision(got.det_preds[n], got.det_truth[n]) for n in FINDING_NAMES}
    found = {n: a for n, a in aps.items() if a is not None}
    return {
        "images_with_expert_boxes": len({i for t in got.det_truth.values() for i in t}),
        "expert_boxes": got.hits["boxes"],
        "detector_mAP50": float(np.mean(list(found.values()))) if found else None,
        "detector_AP50_per_finding": found,
        "boxes_hit_share": got.hits["boxes_hit"] / got.hits["boxes"],
        "gradcam_pointing_share": got.hits["pointing_hit"] / got.hits["boxes"],
        "hit_rule": f"a box of the same finding with IoU >= {IOU_HIT}; pointing: Grad-CAM peak inside the box",
    }


def evaluate(samples: list[Sample], weights_dir: Path, runtime_dir: Path, out: Path, split: str = "val",
             boxes_csv: Path | None = None, bootstrap: int = 1000) -> dict[str, Any]:
    manifest = read_manifest(weights_dir)
    chosen = select(samples, split, manifest)
    clf = Classifier(weights_dir, manifest["classifier"])
    det = Detector(weights_dir, manifest["detector"], runtime_dir) if "detector" in manifest else None
    got = _collect(chosen, clf, det, read_boxes(boxes_csv) if boxes_csv else {})

    probs_a, labels_a, src = np.asarray(got.probs), np.asarray(got.labels), np.asarray(got.sources)
    nih, ker = np.isin(src, ["nih", "nih64"]), src == "kermany"
    per = _per_finding(labels_a, probs_a, nih, manifest["classifier"]["thresholds"], bootstrap)
    valid = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    ky, kp = labels_a[ker, OUTPUTS.index(PEDIATRIC_PNEUMONIA)], probs_a[ker, FINDING_NAMES.index("Pneumonia")]
    report: dict[str, Any] = {
        "split": split, "images": len(chosen), "nih_images": int(nih.sum()), "kermany_images": int(ker.sum()),
        "model": {"classifier": manifest["classifier"]["version"],
                  "files": [f["path"] for f in manifest["classifier"]["files"]]},
        "per_finding": per, "mean_auroc": float(np.mean(valid)) if valid else None,
        "mean_auroc_ci95": _mean_auroc_ci(labels_a[nih, :14], probs_a[nih], bootstrap),
        "kermany_pneumonia": {"auroc": metrics.auroc(ky, kp), "ci95": metrics.bootstrap_auroc(ky, kp, bootstrap),
                              "n": int(ker.sum()), "positives": int(np.nansum(ky)) if ker.any() else 0},
        "pneumonia_heads": _pneumonia_heads(labels_a, np.asarray(got.raw), nih, ker, ky, kp,
                                            per["Pneumonia"]["auroc"]),
    }
    if got.hits["boxes"]:
        report["localisation"] = _localisation(got)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    _roc_figure(labels_a, probs_a, nih, ker, ky, kp, out / "roc.png")
    (out / "report.md").write_text(_markdown(report))
    return report


def _mean_auroc_ci(y: np.ndarray, p: np.ndarray, n: int, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap CI of the mean over findings of the per-finding AUROC (images resampled together)."""
    if len(y) == 0:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        aurocs = [metrics.auroc(y[i, j], p[i, j]) for j in range(y.shape[1])]
        vals = [v for v in aurocs if v is not None]
        if vals:
            stats.append(np.mean(vals))
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def _roc_figure(labels, probs, nih, ker, ky, kp, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(3, 5, figsize=(17, 10.5))
    curves = [(name, labels[nih, j], probs[nih, j]) for j, name in enumerate(FINDING_NAMES)]
    curves.append(("Pneumonia (pediatric, Kermany)", ky, kp))
    for ax, (name, y, p) in zip(axes.ravel(), curves, strict=False):
        a = metrics.auroc(y, p)
        if a is not None:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"{name}\nAUROC {a:.3f}" if a is not None else f"{name}\n(no positives)", fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _markdown(r: dict) -> str:
    lines = [f"# Evaluation ({r['split']} split, {r['images']} images)", "",
             f"Mean AUROC over the 14 findings (NIH images): **{_fmt(r['mean_auroc'])}**"
             + (f" (95% CI {r['mean_auroc_ci95'][0]:.3f}–{r['mean_auroc_ci95'][1]:.3f})"
                if r["mean_auroc_ci95"] else ""),
             f"Pediatric pneumonia vs normal (Kermany): **{_fmt(r['kermany_pneumonia']['auroc'])}**"
             + (f" (95% CI {r['kermany_pneumonia']['ci95'][0]:.3f}–{r['kermany_pneumonia']['ci95'][1]:.3f})"
                if r["kermany_pneumonia"]["ci95"] else ""), "",
             "| finding | AUROC | 95% CI | positives / n | threshold | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in r["per_finding"].items():
        ci = f"{m['ci95'][0]:.3f}–{m['ci95'][1]:.3f}" if m["ci95"] else "n/a"
        lines.append(f"| {name} | {_fmt(m['auroc'])} | {ci} | {m['positives']} / {m['n']} | {m['threshold']:.3f} "
                     f"| {_fmt(m['sensitivity'])} | {_fmt(m['specificity'])} |")
    heads = r["pneumonia_heads"]
    lines += ["", "Pneumonia outputs (AUROC): "
              + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in heads.items())]
    if "localisation" in r:
        loc = r["localisation"]
        lines += ["", f"Localisation on {loc['images_with_expert_boxes']} images "
                  f"with {loc['expert_boxes']} expert boxes: "
                  f"detector mAP@0.5 {_fmt(loc['detector_mAP50'])}, expert boxes hit {loc['boxes_hit_share']:.1%}, "
                  f"Grad-CAM pointing game {loc['gradcam_pointing_share']:.1%} ({loc['hit_rule']})."]
    return "\n".join(lines) + "\n"
