"""The ``random`` reference: the pretraining encoder at its initialisation, never trained.

Why: a pretrained encoder is only worth its pretraining if it beats the very same network before any
training. ``random`` is built exactly as :func:`cxrpipe.pretrain.train.run_pretrain` builds its model:
``accelerate.utils.set_seed(seed)`` then :class:`~cxrpipe.pretrain.mae.MaskedAutoencoder` from
``pretrain.model`` (the first module :class:`~cxrpipe.pretrain.model.PretrainModel` creates), so its
weights are bit-identical to the ``mae`` and ``multimodal`` runs' weights at step 0 (tested). With
``pretrain.model.init`` set to a checkpoint, the reference is that checkpoint: the starting point, untouched.

It is exported like the pretrained encoders (:func:`cxrpipe.encoder.save_encoder`, ``config.json`` with
``variant: random``) and goes through the same ``finetune`` matrix (``fc``, ``linear`` and ``finetune``).
The other reference, logistic regression on raw pixels, is :mod:`cxrpipe.evaluate.probe.pixels`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from cxrpipe.config import to_dict
from cxrpipe.pretrain.data import PretrainDataConfig
from cxrpipe.pretrain.mae import MAEConfig

log = logging.getLogger(__name__)

RANDOM_VARIANT = "random"


def build_random_encoder(model: MAEConfig, seed: int) -> nn.Module:
    """The timm ViT of ``MaskedAutoencoder(model)`` right after ``set_seed(seed)``: pretraining's step 0."""
    from accelerate.utils import set_seed

    from cxrpipe.pretrain.mae import MaskedAutoencoder

    set_seed(seed)  # what run_pretrain does before it builds PretrainModel (whose first module is the MAE)
    return MaskedAutoencoder(model).encoder


def write_random_encoder(
    model: MAEConfig, data: PretrainDataConfig, seed: int, out_dir: str | Path
) -> dict[str, Any]:
    """Export the ``random`` reference to ``out_dir`` (encoder.safetensors + config.json); returns the config."""
    from cxrpipe.encoder import save_encoder
    from cxrpipe.model_card import write_model_card

    encoder = build_random_encoder(model, seed)
    config = {
        "arch": model.arch,
        "kwargs": model.timm_kwargs(),
        "pixel_mean": data.pixel_mean,
        "pixel_std": data.pixel_std,
        "variant": RANDOM_VARIANT,
        # provenance: what it was initialised from, and that nothing trained it
        "params": {"seed": seed, "model": to_dict(model), "trained": False},
    }
    save_encoder(encoder, out_dir, config)
    write_model_card(out_dir)  # README.md: an untrained reference, not for use
    n = sum(p.numel() for p in encoder.parameters())
    log.info("random reference: %s (%d parameters, seed %d, init %s) -> %s", model.arch, n, seed, model.init, out_dir)
    return config
