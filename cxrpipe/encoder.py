"""The exported image encoder: ``encoder.safetensors`` (timm ViT key names) + ``config.json``.

``config.json``::

    {"arch": "vit_base_patch16_224",            # a timm model name
     "kwargs": {"img_size": 224, "patch_size": 16, "in_chans": 1, "embed_dim": 768, "depth": 12,
                "num_heads": 12, "num_classes": 0, ...},   # timm.create_model(arch, **kwargs) rebuilds it
     "pixel_mean": 0.5, "pixel_std": 0.25,       # uint8 image / 255 -> (x - mean) / std
     "description": "ViT-B/16 ...",              # what the encoder IS: ``arch`` names the timm constructor,
                                                 # ``kwargs`` override its sizes (written by save_encoder)
     "variant": "multimodal", "params": {...}}   # provenance (the resolved pretrain config)

Anyone can rebuild the encoder without cxrpipe::

    model = timm.create_model(cfg["arch"], pretrained=False, **cfg["kwargs"])
    model.load_state_dict(safetensors.torch.load_file("encoder.safetensors"))

With cxrpipe, :func:`load_encoder` + :func:`preprocess` (a PIL image or uint8 array -> the exact input the
pipeline fed the encoder: letterbox, /255, ``(x - pixel_mean) / pixel_std``).
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


def save_encoder(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the encoder weights and its config atomically; ``config`` needs ``arch`` and ``kwargs``.
    A ``description`` of the architecture (:func:`describe_architecture`) is added when absent."""
    from safetensors.torch import save_file

    from cxrpipe.io import respect_umask

    for key in ("arch", "kwargs", "pixel_mean", "pixel_std"):
        if key not in config:
            raise ValueError(f"encoder config lacks '{key}'")
    config = {"description": describe_architecture(config["arch"], config["kwargs"]), **config}
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
