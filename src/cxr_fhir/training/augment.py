"""Batch augmentation suited to radiographs: small rotations, zoom and shifts, exposure and gamma.

No horizontal flips: the heart's side is anatomy, and flipping would teach dextrocardia as normal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x: (N, 1, S, S) in [0, 1] -> augmented, still in [0, 1]."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = u(-8, 8) * math.pi / 180
    scale = u(0.9, 1.12)
    tx, ty = u(-0.06, 0.06), u(-0.06, 0.06)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = u(0.75, 1.33).view(n, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    contrast = u(0.85, 1.15).view(n, 1, 1, 1)
    brightness = u(-0.06, 0.06).view(n, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    return x.clamp(0, 1)
