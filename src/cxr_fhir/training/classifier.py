"""Train the 14-finding classifier (masked multi-label loss over NIH + Kermany) and register it."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..domain.findings import FINDING_NAMES
from ..imaging import ImageRejected, load_path
from ..inference.outputs import calibrate, report_probabilities
from ..inference.preprocess import normalise, resize_square
from ..inference.registry import write_manifest_section
from . import metrics
from .augment import augment
from .datasets import OUTPUTS, PEDIATRIC_DOMAIN, PEDIATRIC_PNEUMONIA, Sample, split

log = logging.getLogger("cxr_fhir.training")

MIX = {"Pneumonia": [PEDIATRIC_DOMAIN, PEDIATRIC_PNEUMONIA]}


@dataclass
class ClassifierConfig:
    arch: str = "resnet18"
    size: int = 224
    epochs: int = 22
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seed: int = 0
    val_fraction: float = 0.2
    patience: int = 6
    kermany_per_epoch: int = 700
    kermany_val_per_epoch: int = 300
    mean: float = 0.5
    std: float = 0.25
    bf16: bool = True
    threads: int = 2


def load_images(samples: list[Sample], size: int, cache_dir: Path | None) -> np.ndarray:
    """All samples as uint8 (N, size, size), through the same loader and resize as inference."""
    key = hashlib.sha256(("|".join(str(s.path) for s in samples) + f"|{size}").encode()).hexdigest()[:16]
    cache = cache_dir / f"images-{key}.npy" if cache_dir else None
    if cache and cache.exists():
        return np.load(cache)
    out = np.zeros((len(samples), size, size), dtype=np.uint8)
    for i, s in enumerate(tqdm(samples, desc=f"decode@{size}", unit="img")):
        try:
            pixels = load_path(s.path, min_side=32).pixels
        except ImageRejected as exc:
            raise RuntimeError(f"training image {s.path} rejected: {exc.reason}") from exc
        out[i] = np.round(resize_square(pixels, size) * 255).clip(0, 255).astype(np.uint8)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over annotated entries only (NaN target = the source does not say)."""
    mask = ~torch.isnan(targets)
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), pos_weight=pos_weight,
                                              reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def build_model(arch: str, n_outputs: int, drop_rate: float = 0.0) -> torch.nn.Module:
    # pretrained=False always: no model hub is reachable, and all weights come from weights/.
    return timm.create_model(arch, pretrained=False, in_chans=1, num_classes=n_outputs, drop_rate=drop_rate)


def predict_logits(model: torch.nn.Module, images: np.ndarray, cfg: ClassifierConfig) -> np.ndarray:
    model.eval()
    outs = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        for i in range(0, len(images), 64):
            x = torch.from_numpy(normalise(images[i:i + 64].astype(np.float32) / 255.0, cfg.mean, cfg.std))
            outs.append(model(x.unsqueeze(1).contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(outs)


def evaluate_outputs(logits: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                     platt: list[list[float]] | None = None) -> dict:
    """Per-finding AUROC on NIH images, pediatric pneumonia AUROC on Kermany, on reported probabilities."""
    probs = calibrate(logits, platt or [[1.0, 0.0]] * logits.shape[1])
    reported = report_probabilities(probs, list(OUTPUTS), MIX)
    nih = np.isin(sources, ["nih", "nih64"])
    per = {}
    for j, name in enumerate(FINDING_NAMES):
        per[name] = metrics.auroc(labels[nih, j], reported[name][nih])
    valid = [v for v in per.values() if v is not None]
    kermany = sources == "kermany"
    ped = metrics.auroc(labels[kermany, OUTPUTS.index(PEDIATRIC_PNEUMONIA)], reported["Pneumonia"][kermany])
    return {"per_finding": per, "mean_auroc": float(np.mean(valid)) if valid else None, "kermany_pneumonia": ped}


def _epoch_indices(sources: np.ndarray, kermany_per_epoch: int, rng: np.random.Generator) -> np.ndarray:
    """All NIH images every epoch, a fresh random share of the (much larger) Kermany set."""
    nih = np.flatnonzero(sources != "kermany")
    ker = np.flatnonzero(sources == "kermany")
    ker = rng.choice(ker, size=min(kermany_per_epoch, len(ker)), replace=False) if len(ker) else ker
    idx = np.concatenate([nih, ker])
    rng.shuffle(idx)
    return idx


def train_one(cfg: ClassifierConfig, seed: int, train_x: np.ndarray, train_y: np.ndarray, train_src: np.ndarray,
              val_x: np.ndarray, val_y: np.ndarray, val_src: np.ndarray) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(cfg.arch, len(OUTPUTS), drop_rate=0.2).to(memory_format=torch.channels_last)
    # Class imbalance: weigh positives by the negative/positive ratio, capped to keep training stable.
    pos = np.nansum(train_y, 0)
    neg = np.sum(~np.isnan(train_y), 0) - pos
    pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1), 1, 15), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = int(np.ceil((np.sum(train_src != "kermany") + min(cfg.kermany_per_epoch,
                                   np.sum(train_src == "kermany"))) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.15)
    # Per-epoch checks use all NIH validation images but only a fixed share of the Kermany ones (cost).
    ker_val = np.flatnonzero(val_src == "kermany")
    keep = np.concatenate([np.flatnonzero(val_src != "kermany"),
                           np.random.default_rng(0).permutation(ker_val)[:cfg.kermany_val_per_epoch]])
    best, best_score, best_epoch, history = None, -1.0, -1, []
    for epoch in range(cfg.epochs):
        model.train()
        idx = _epoch_indices(train_src, cfg.kermany_per_epoch, rng)
        t0, losses = time.time(), []
        bar = tqdm(range(0, len(idx), cfg.batch_size), desc=f"seed {seed} epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", leave=False)
        for i in bar:
            b = idx[i:i + cfg.batch_size]
            if len(b) < 2:
                continue
            x = torch.from_numpy(train_x[b].astype(np.float32) / 255.0).unsqueeze(1)
            x = (augment(x, gen) - cfg.mean) / cfg.std
            y = torch.from_numpy(train_y[b])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = masked_bce(logits.float(), y, pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        val = evaluate_outputs(predict_logits(model, val_x[keep], cfg), val_y[keep], val_src[keep])
        score = val["mean_auroc"] or 0.0
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_mean_auroc": val["mean_auroc"],
                        "val_kermany_pneumonia": val["kermany_pneumonia"], "seconds": round(time.time() - t0, 1)})
        print(f"seed {seed} epoch {epoch + 1}: loss {np.mean(losses):.4f} val mean AUROC {score:.4f} "
              f"kermany {val['kermany_pneumonia'] or 0:.4f} ({time.time() - t0:.0f}s)", flush=True)
        if score > best_score:
            best, best_score, best_epoch = copy.deepcopy(model.state_dict()), score, epoch + 1
        elif epoch + 1 - best_epoch >= cfg.patience:
            print(f"early stop: no gain for {cfg.patience} epochs (best epoch {best_epoch})", flush=True)
            break
    assert best is not None  # the first epoch always beats the starting score of -1
    model.load_state_dict(best)
    return model, {"seed": seed, "best_epoch": best_epoch, "best_val_mean_auroc": best_score, "history": history}


def train_classifier(samples: list[Sample], cfg: ClassifierConfig, weights_dir: Path, cache_dir: Path | None,
                     command: str, data_description: dict) -> dict:
    torch.set_num_threads(cfg.threads)
    train, val = split(samples, cfg.val_fraction, cfg.split_seed)
    print(f"patient-wise split (seed {cfg.split_seed}): {len(train)} train / {len(val)} validation images", flush=True)
    all_x = load_images(train + val, cfg.size, cache_dir)
    train_x, val_x = all_x[:len(train)], all_x[len(train):]
    train_y = np.stack([s.labels for s in train])
    val_y = np.stack([s.labels for s in val])
    train_src = np.array([s.source for s in train])
    val_src = np.array([s.source for s in val])

    members, runs = [], []
    for seed in cfg.seeds:
        model, run = train_one(cfg, seed, train_x, train_y, train_src, val_x, val_y, val_src)
        members.append(model)
        runs.append(run)

    # Ensemble = mean of member logits; calibration and thresholds are fitted on that mean.
    val_logits = np.mean([predict_logits(m, val_x, cfg) for m in members], axis=0)
    platt = [list(metrics.fit_platt(val_y[~np.isnan(val_y[:, j]), j], val_logits[~np.isnan(val_y[:, j]), j]))
             for j in range(len(OUTPUTS))]
    reported = report_probabilities(calibrate(val_logits, platt), list(OUTPUTS), MIX)
    nih = np.isin(val_src, ["nih", "nih64"])
    thresholds = {name: metrics.youden_threshold(val_y[nih, j], reported[name][nih])
                  for j, name in enumerate(FINDING_NAMES)}
    val_metrics = evaluate_outputs(val_logits, val_y, val_src, platt)

    weights_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for model, seed in zip(members, cfg.seeds, strict=True):
        path = weights_dir / f"classifier-{cfg.arch}-{cfg.size}-seed{seed}.pt"
        torch.save(model.state_dict(), path)
        files.append({"path": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})

    section = {
        "name": "cxr-fhir-classifier",
        "version": time.strftime("%Y.%m.%d"),
        "architecture": cfg.arch,
        "in_chans": 1,
        "input_size": cfg.size,
        "normalisation": {"mean": cfg.mean, "std": cfg.std, "input_range": [0.0, 1.0]},
        "precision": "bfloat16" if cfg.bf16 else "float32",
        "outputs": list(OUTPUTS),
        "findings": list(FINDING_NAMES),
        "mix": MIX,
        "files": files,
        "calibration": {"method": "platt", "params": platt},
        "thresholds": thresholds,
        "training": {"command": command, "config": asdict(cfg), "data": data_description,
                     "split": f"patient-wise, {cfg.val_fraction:.0%} of patients to validation (seed {cfg.split_seed})",
                     "train_images": len(train), "validation_images": len(val), "runs": runs},
        "validation": val_metrics,
    }
    write_manifest_section(weights_dir, "classifier", section)
    print(json.dumps({"validation": val_metrics, "thresholds": thresholds}, indent=1), flush=True)
    return section
