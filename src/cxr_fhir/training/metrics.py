"""AUROC with bootstrap confidence intervals, operating points, calibration fits."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    y = np.asarray(y)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, p))


def bootstrap_auroc(y: np.ndarray, p: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile 95% CI of the AUROC over ``n`` resamples of the images."""
    y, p = np.asarray(y), np.asarray(p)
    if auroc(y, p) is None:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        a = auroc(y[i], p[i])
        if a is not None:
            stats.append(a)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def youden_threshold(y: np.ndarray, p: np.ndarray, default: float = 0.5) -> float:
    if auroc(y, p) is None:
        return default
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thr[best], 1e-4), 1 - 1e-4))


def sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    sens = float((pred & y).sum() / y.sum()) if y.sum() else None
    spec = float((~pred & ~y).sum() / (~y).sum()) if (~y).sum() else None
    return sens, spec


def fit_platt(y: np.ndarray, logits: np.ndarray, min_positives: int = 3) -> tuple[float, float]:
    """(a, b) for sigmoid(a*logit + b); identity when there are too few positives to fit."""
    y = np.asarray(y)
    if y.sum() < min_positives or (len(y) - y.sum()) < min_positives:
        return 1.0, 0.0
    lr = LogisticRegression(C=1.0)
    lr.fit(np.asarray(logits, dtype=np.float64).reshape(-1, 1), y.astype(int))
    a = float(lr.coef_[0, 0])
    # A negative slope would invert the model's ranking: keep the ranking, fit only a shift then.
    if a <= 0:
        return 1.0, float(np.log(y.mean() / (1 - y.mean())) - np.median(logits))
    return a, float(lr.intercept_[0])
