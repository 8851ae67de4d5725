"""Train the YOLO lesion detector on the expert boxes (NIH BBox_List_2017 + ChestX-Det) and register it."""

from __future__ import annotations

import csv
import hashlib
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from ..domain.findings import FINDING_NAMES, canonical
from ..inference.registry import write_manifest_section
from ..inference.ultralytics_offline import configure
from .datasets import is_validation, read_label_table

ORIGINAL_SIDE = 1024.0  # NIH boxes are given in the 1024 px originals' coordinates


@dataclass
class DetectorConfig:
    size: int = 512
    epochs: int = 60
    batch_size: int = 8
    background_images: int = 60
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.2
    patience: int = 20
    confidence: float = 0.1


def read_boxes(boxes_csv: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """image name -> [(finding, x1, y1, x2, y2)] in original 1024 px coordinates; other findings dropped."""
    out: dict[str, list] = defaultdict(list)
    with open(boxes_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            name = canonical(row["finding"])
            if name:
                out[row["image"]].append((name, float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"])))
    return out


def build_dataset(image_dirs: list[Path], boxes_csv: Path, table: Path, out: Path, cfg: DetectorConfig,
                  val_dirs: set[Path]) -> dict:
    """A YOLO dataset of links to the images (never copies) and label files; returns counts."""
    labels = read_label_table(table)
    boxes = read_boxes(boxes_csv)
    if out.exists():
        shutil.rmtree(out)
    counts = {"train": 0, "val": 0, "train_boxes": 0, "val_boxes": 0, "background": 0}
    backgrounds = 0
    for folder in image_dirs:
        for path in sorted(Path(folder).iterdir()):
            entry = labels.get(path.name)
            if entry is None:
                continue
            patient = f"nih:{int(entry[1])}"
            part = "val" if is_validation(patient, cfg.val_fraction, cfg.split_seed) else "train"
            if part == "val" and Path(folder) not in val_dirs:
                continue  # validate on full-resolution images only
            items = boxes.get(path.name, [])
            if not items:
                if entry[0] != "No Finding" or part == "val" or backgrounds >= cfg.background_images:
                    continue
                backgrounds += 1
                counts["background"] += 1
            (out / "images" / part).mkdir(parents=True, exist_ok=True)
            (out / "labels" / part).mkdir(parents=True, exist_ok=True)
            (out / "images" / part / path.name).symlink_to(path.resolve())
            lines = []
            for name, x1, y1, x2, y2 in items:
                cx, cy = (x1 + x2) / 2 / ORIGINAL_SIDE, (y1 + y2) / 2 / ORIGINAL_SIDE
                w, h = (x2 - x1) / ORIGINAL_SIDE, (y2 - y1) / ORIGINAL_SIDE
                lines.append(f"{FINDING_NAMES.index(name)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (out / "labels" / part / f"{path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            counts[part] += 1
            counts[f"{part}_boxes"] += len(items)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(FINDING_NAMES))
    (out / "data.yaml").write_text(f"path: {out}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return counts


def train_detector(image_dirs: list[Path], boxes_csv: Path, table: Path, cfg: DetectorConfig, weights_dir: Path,
                   runtime_dir: Path, command: str) -> dict:
    configure(runtime_dir)
    from ultralytics import YOLO

    data_dir = runtime_dir / "yolo-dataset"
    counts = build_dataset(image_dirs, boxes_csv, table, data_dir, cfg, val_dirs={Path(image_dirs[0])})
    print(f"detector data: {counts}", flush=True)
    # yolov8n.yaml builds the architecture from the package's own config: no download, random init.
    model = YOLO("yolov8n.yaml", task="detect")
    run_dir = runtime_dir / "yolo-runs"
    model.train(data=str(data_dir / "data.yaml"), imgsz=cfg.size, epochs=cfg.epochs, batch=cfg.batch_size,
                device="cpu", workers=0, seed=cfg.seed, deterministic=True, amp=False, plots=False,
                project=str(run_dir), name="detector", exist_ok=True, patience=cfg.patience, verbose=False,
                fliplr=0.0, degrees=5.0, mosaic=1.0, hsv_h=0.0, hsv_s=0.0, pretrained=False)
    best = run_dir / "detector" / "weights" / "best.pt"
    metrics = YOLO(str(best)).val(data=str(data_dir / "data.yaml"), imgsz=cfg.size, device="cpu", workers=0,
                                  plots=False, verbose=False, project=str(run_dir), name="detector-val", exist_ok=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / f"detector-yolov8n-{cfg.size}.pt"
    _strip_checkpoint(best, target)
    section = {
        "name": "cxr-fhir-detector", "version": time.strftime("%Y.%m.%d"), "architecture": "yolov8n",
        "input_size": cfg.size, "classes": list(FINDING_NAMES), "confidence": cfg.confidence,
        "files": [{"path": target.name, "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}],
        "training": {"command": command, "config": asdict(cfg), "data": counts,
                     "split": f"patient-wise, {cfg.val_fraction:.0%} of patients to validation "
                              f"(seed {cfg.split_seed})"},
        "validation": {"mAP50": round(float(metrics.box.map50), 4), "mAP50_95": round(float(metrics.box.map), 4),
                       "images": counts["val"], "boxes": counts["val_boxes"]},
    }
    write_manifest_section(weights_dir, "detector", section)
    print(f"detector validation: {section['validation']}", flush=True)
    return section


def _strip_checkpoint(src: Path, dst: Path) -> None:
    """Keep the model, drop the optimiser state and the training machine's paths from the checkpoint."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    for key in ("optimizer", "train_args", "git", "date", "version", "license", "docs", "train_results"):
        ckpt.pop(key, None)
    ckpt["ema"] = None
    torch.save(ckpt, dst)
