"""The exported image encoder: ``encoder.safetensors`` (timm ViT key names) + ``config.json``.

``config.json``::

    {"arch": "vit_base_patch16_224",            # a timm model name
     "kwargs": {"img_size": 224, "patch_size": 16, "in_chans": 1, "embed_dim": 768, "depth": 12,
                "num_heads": 12, "num_classes": 0, ...},   # timm.create_model(arch, **kwargs) rebuilds it
     "pixel_mean": 0.5, "pixel_std": 0.25,       # uint8 image / 255 -> (x - mean) / std
     "variant": "multimodal", "params": {...}}   # provenance (the resolved pretrain config)

Anyone can rebuild the encoder without cxrpipe::

    model = timm.create_model(cfg["arch"], pretrained=False, **cfg["kwargs"])
    model.load_state_dict(safetensors.torch.load_file("encoder.safetensors"))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

ENCODER_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"


def save_encoder(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the encoder weights and its config atomically; ``config`` needs ``arch`` and ``kwargs``."""
    from safetensors.torch import save_file

    for key in ("arch", "kwargs", "pixel_mean", "pixel_std"):
        if key not in config:
            raise ValueError(f"encoder config lacks '{key}'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / (ENCODER_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / ENCODER_FILE)
    tmpc = out_dir / (CONFIG_FILE + ".tmp")
    tmpc.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmpc, out_dir / CONFIG_FILE)


def load_encoder(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the timm encoder from ``config.json`` and load its weights strictly."""
    import timm
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = timm.create_model(config["arch"], pretrained=False, **config["kwargs"])
    state = load_file(str(model_dir / ENCODER_FILE))
    model.load_state_dict(state, strict=True)
    return model, config


def to_unit_float(images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, 1, H, W]`` -> float ``[N, 1, h, w]`` in [0, 1]; resized (bilinear,
    antialiased) to ``size`` when the image cache was made at another size than the encoder's input.
    Pretraining and fine-tuning both go through here, so they see identically prepared pixels."""
    import torch.nn.functional as F

    if images.ndim == 3:
        images = images.unsqueeze(1)
    x = images.float() / 255.0
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return x


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """[0, 1] pixels -> the encoder's input scale (``config.json``'s ``pixel_mean`` / ``pixel_std``)."""
    return (x - mean) / std


def normalize_uint8(
    images: torch.Tensor, mean: float, std: float, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, 1, H, W]`` -> float ``[N, 1, h, w]`` normalised as the encoder expects."""
    return normalize(to_unit_float(images, size), mean, std)
