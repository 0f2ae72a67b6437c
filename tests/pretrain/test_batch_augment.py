"""Batched augmentation on tensors draws what the per-sample loader augmentation draws and does the same."""

from __future__ import annotations

import torch

from cxrpipe.pretrain.batch_augment import augment_batch
from cxrpipe.pretrain.data import AugmentConfig, augment


def test_batched_equals_per_sample_augmentation():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 72, 72, generator=g), 5, 1, 2)[0]  # smooth [1, S, S]
    img[:, 8:20, 40:48] = 1.0  # an off-centre block: rotation and shift directions matter
    cfg = AugmentConfig(rotate=20, translate=0.1, scale=(0.8, 1.2), brightness=0.1, contrast=0.1, hflip=True)
    seeds = list(range(8))
    batch = augment_batch(img[None].repeat(8, 1, 1, 1), cfg, seeds)
    for s in seeds:
        want = augment(img.clone(), cfg, torch.Generator().manual_seed(s))
        assert (batch[s] - want).abs().mean() < 5e-3  # sampling grids differ at the borders only
        assert (batch[s] - img).abs().mean() > 1e-2  # and it did change the image
    other = augment_batch(img[None].repeat(8, 1, 1, 1), cfg, [s + 100 for s in seeds])
    assert (other - batch).abs().mean() > 1e-2  # other seeds, other draws
