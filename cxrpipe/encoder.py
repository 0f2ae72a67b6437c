"""The exported image encoder: ``encoder.safetensors`` (timm ViT key names) + ``config.json`` + ``README.md``.

``config.json`` is timm's own ``local-dir:`` format plus cxrpipe's keys::

    {"architecture": "vit_base_patch16_224",     # timm: the constructor
     "num_classes": 0, "num_features": 768,
     "model_args": {"img_size": 224, "patch_size": 16, "in_chans": 1, ...},   # timm: override its sizes
     "pretrained_cfg": {"input_size": [1, 224, 224], "mean": [0.5], "std": [0.25], "crop_pct": 1.0,
                        "interpolation": "lanczos", ...},   # timm.data.resolve_data_config reads these
     "arch": ..., "kwargs": {...},               # cxrpipe's names for architecture / model_args (kept)
     "pixel_mean": 0.5, "pixel_std": 0.25,       # uint8 image / 255 -> (x - mean) / std
     "description": "ViT, 12 blocks, ...",       # what the encoder IS (the timm name alone misleads)
     "variant": "multimodal", "params": {...}}   # provenance (the resolved pretrain config)

so the folder drops into other code as a timm model, with the training preprocessing::

    model = timm.create_model("local-dir:data/models/multimodal", pretrained=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    features = model(transform(pil_image_L)[None])   # = cxrpipe's, for an image letterboxed square (below)

timm's transform resizes the shorter side and centre-crops; the pipeline letterboxed (longer side to S,
padded with 0). On square images (what ``cxrpipe.data.images.letterbox`` returns) the two are the same
pixels. With cxrpipe, :func:`load_encoder` + :func:`preprocess` (a path, PIL image or uint8 array -> exactly
the pipeline's input) do all of it. ``README.md`` is the model card (:mod:`cxrpipe.model_card`).
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


def describe_architecture(arch: str, kwargs: dict[str, Any]) -> str:
    """What the encoder is, in words: the timm name alone misleads once ``kwargs`` override its sizes
    (``vit_tiny_patch16_224`` with ``patch_size=12, img_size=96, depth=4`` is not a ViT-Ti/16 at 224)."""
    size, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    depth, dim, heads = kwargs.get("depth"), kwargs.get("embed_dim"), kwargs.get("num_heads")
    grid = f"{size // patch} x {size // patch} patches" if isinstance(size, int) and isinstance(patch, int) else ""
    parts = [
        f"ViT, {depth} blocks" if depth is not None else "ViT",
        f"width {dim}" if dim is not None else "",
        f"{heads} heads" if heads is not None else "",
        f"patch {patch} at {size} px ({grid})" if patch is not None and size is not None else "",
        f"{kwargs.get('in_chans', 3)} input channel(s)",
        f"pool {kwargs.get('global_pool', 'token')}",
    ]
    return (", ".join(p for p in parts if p) + f"; built as timm.create_model({arch!r}, **kwargs): the name "
            "gives the constructor, kwargs override its sizes")


def timm_config(config: dict[str, Any], num_features: int) -> dict[str, Any]:
    """timm's ``local-dir:`` keys for a cxrpipe ``config`` (``arch``, ``kwargs``, ``pixel_mean``/``std``):
    ``timm.create_model('local-dir:<folder>', pretrained=True)`` rebuilds the encoder from them and
    ``timm.data.resolve_data_config`` gives the training input: channels and size, mean/std, no crop."""
    kwargs = config["kwargs"]
    size = kwargs.get("img_size", 224)
    size = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    chans = int(kwargs.get("in_chans", 3))
    return {
        "architecture": config["arch"],
        "num_classes": 0,
        "num_features": int(num_features),
        "model_args": dict(kwargs),
        "pretrained_cfg": {
            "input_size": [chans, *size], "fixed_input_size": True,
            "mean": [float(config["pixel_mean"])] * chans, "std": [float(config["pixel_std"])] * chans,
            "crop_pct": 1.0, "crop_mode": "center",
            "interpolation": "lanczos",  # the letterbox's resampling (cxrpipe.data.images.letterbox)
            "num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "see README.md (the training data's terms)",
        },
    }


def save_encoder(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the encoder weights and its config atomically; ``config`` needs ``arch``, ``kwargs`` and
    ``pixel_mean``/``pixel_std``. A ``description`` of the architecture (:func:`describe_architecture`) is
    added when absent, and timm's ``local-dir:`` keys (:func:`timm_config`)."""
    from safetensors.torch import save_file

    from cxrpipe.io import respect_umask

    for key in ("arch", "kwargs", "pixel_mean", "pixel_std"):
        if key not in config:
            raise ValueError(f"encoder config lacks '{key}'")
    config = {"description": describe_architecture(config["arch"], config["kwargs"]), **config,
              **timm_config(config, getattr(model, "num_features", config["kwargs"].get("embed_dim", 0)))}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / (ENCODER_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    respect_umask(tmp)  # safetensors writes 0600
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
    config.setdefault("arch", config.get("architecture"))  # a timm-only config.json loads too
    config.setdefault("kwargs", config.get("model_args", {}))
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


def input_size(config: dict[str, Any]) -> int:
    """The square input side the encoder expects (``config.json``'s ``kwargs.img_size``)."""
    size = config["kwargs"].get("img_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def preprocess(image: Any, config: dict[str, Any], letterbox_size: int | None = None) -> torch.Tensor:
    """One radiograph -> the encoder's input ``[1, 1, S, S]`` (``S`` = :func:`input_size`), exactly as the
    pipeline prepared it: letterbox (longer side -> S, aspect kept, centred, padded with 0; Lanczos), uint8 / 255,
    ``(x - pixel_mean) / pixel_std``.

    ``image``: a file path (JPEG, PNG incl. 16-bit, DICOM: decoded by ``prepare``'s own code, so the result is
    bit-identical to the image cache), a PIL image (converted to 8-bit grayscale "L") or a uint8 array
    ``[H, W]``. ``letterbox_size``: when ``prepare.image_size`` differed from the encoder's input (e.g. 256 vs
    224) the pipeline letterboxed to it, then resized (bilinear, antialiased); pass it to reproduce that.
    """
    import numpy as np

    from cxrpipe.data.images import letterbox, load_image

    size = input_size(config)
    box = letterbox_size or size
    if isinstance(image, (str, os.PathLike)):
        boxed = load_image(image, box)  # decode (+ DICOM windowing) + letterbox, as prepare does
    else:
        if hasattr(image, "convert"):  # PIL
            image = image.convert("L")
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(
                f"preprocess expects a path, a PIL image or a uint8 [H, W] array, got {array.dtype} {array.shape}; "
                "pass 16-bit or DICOM files by path"
            )
        boxed = letterbox(array, box)  # uint8 [box, box]
    x = torch.from_numpy(np.ascontiguousarray(boxed))[None]  # [1, box, box]
    return normalize_uint8(x, float(config["pixel_mean"]), float(config["pixel_std"]), (size, size))  # [1, 1, S, S]
