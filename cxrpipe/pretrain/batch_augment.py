"""Stage two's augmentation for a whole batch at once, on tensors (on the accelerator in a real run).

The same random draws per sample as :func:`cxrpipe.pretrain.data.augment` (7 uniforms from the sample's own
seed), applied as one ``affine_grid`` / ``grid_sample`` over the batch instead of one torchvision call per
image in a DataLoader worker. torchvision.transforms.v2's batched transforms draw one set of parameters for
the whole batch; per-sample parameters need the grid form. Measured in benchmarks/data_path.py.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from cxrpipe.pretrain.data import AugmentConfig


def batch_params(seeds: Sequence[int], cfg: AugmentConfig, side: int) -> torch.Tensor:
    """``[B, 7]``: angle (deg), shift x, shift y (px), scale, contrast factor, brightness shift, flip (0/1)."""
    u = torch.stack([torch.rand(7, generator=torch.Generator().manual_seed(int(s))) for s in seeds])  # [B, 7]
    angle = (2 * u[:, 0] - 1) * cfg.rotate
    tx = torch.round((2 * u[:, 1] - 1) * cfg.translate * side)
    ty = torch.round((2 * u[:, 2] - 1) * cfg.translate * side)
    scale = cfg.scale[0] + u[:, 3] * (cfg.scale[1] - cfg.scale[0])
    contrast = 1 + (2 * u[:, 4] - 1) * cfg.contrast
    bright = (2 * u[:, 5] - 1) * cfg.brightness
    flip = (u[:, 6] < 0.5).float() * float(cfg.hflip)
    return torch.stack([angle, tx, ty, scale, contrast, bright, flip], dim=1)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, seeds: Sequence[int]) -> torch.Tensor:
    """``images [B, 1, S, S]`` in [0, 1] -> augmented ``[B, 1, S, S]`` (rotation about the centre, shift,
    zoom, contrast, brightness, optional flip), bilinear, filled with 0."""
    b, _, h, w = images.shape
    p = batch_params(seeds, cfg, w).to(images.device)  # [B, 7]
    a = -p[:, 0] * (math.pi / 180)  # torchvision: positive angle = counter-clockwise on screen
    cos, sin = torch.cos(a) / p[:, 3], torch.sin(a) / p[:, 3]
    # output -> input map in normalised coordinates: inverse rotation and zoom, minus the shift
    tx, ty = 2 * p[:, 1] / w, 2 * p[:, 2] / h
    theta = torch.stack([
        torch.stack([cos, -sin, -(cos * tx - sin * ty)], dim=1),
        torch.stack([sin, cos, -(sin * tx + cos * ty)], dim=1),
    ], dim=1)  # [B, 2, 3]
    grid = F.affine_grid(theta.to(images.dtype), [b, 1, h, w], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * p[:, 4, None, None, None] + mean + p[:, 5, None, None, None]
    flip = p[:, 6].bool()
    if flip.any():
        out[flip] = out[flip].flip(-1)
    return out.clamp_(0.0, 1.0)
