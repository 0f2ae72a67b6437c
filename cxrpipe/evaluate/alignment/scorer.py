"""An exported encoder with its exported heads, scoring images against texts as the training loss did.

Shared by the evaluations that compare images with text (:mod:`.zeroshot`, :mod:`.retrieval`,
:mod:`.attention_maps`). Images come from ``images.h5`` (uint8, prepared exactly as stage three prepares
them: :func:`cxrpipe.encoder.normalize_uint8`); texts are rows of a text cache (the reports' ``text.h5`` or
the zero-shot prompts' cache), cut to the LAST ``max_text_tokens`` tokens as pretraining cut them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cxrpipe.data.image_cache import ImageCache
from cxrpipe.pretrain.data import pad_texts as pad_tensors
from cxrpipe.pretrain.heads import AlignmentHeads, load_heads
from cxrpipe.text.cache import TextCache


@dataclasses.dataclass
class AlignedModel:
    """A timm encoder + its :class:`AlignmentHeads`, on one device, in eval mode."""

    encoder: nn.Module
    heads: AlignmentHeads
    encoder_config: dict[str, Any]
    heads_config: dict[str, Any]
    device: torch.device

    @property
    def max_text_tokens(self) -> int:
        return int(self.heads_config.get("max_text_tokens", 256))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of the encoder input."""
        return tuple(self.encoder.patch_embed.grid_size)  # type: ignore[return-value]

    @torch.inference_mode()
    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[n, S, S]`` -> patch tokens ``[n, P, D]`` (the final norm applied, prefix tokens dropped):
        the tokens pretraining pooled (``MaskedAutoencoder.forward_encoder`` with mask ratio 0)."""
        from cxrpipe.encoder import normalize_uint8

        cfg = self.encoder_config
        size = cfg["kwargs"].get("img_size")
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if size else None
        x = normalize_uint8(images.to(self.device), float(cfg["pixel_mean"]), float(cfg["pixel_std"]), size)
        feats = self.encoder.forward_features(x)  # [n, prefix + P, D]
        return feats[:, self.encoder.num_prefix_tokens :].float()


def load_aligned(model_dir: str | Path, device: str | torch.device = "cpu") -> AlignedModel:
    """Encoder (``encoder.safetensors``) + heads (``text_head.safetensors``) of one pretrained variant."""
    from cxrpipe.encoder import load_encoder

    device = torch.device(device)
    encoder, enc_cfg = load_encoder(model_dir)
    heads, head_cfg = load_heads(model_dir)
    return AlignedModel(encoder.to(device).eval(), heads.to(device).eval(), enc_cfg, head_cfg, device)


def image_batches(cache: ImageCache, rows: Sequence[int], batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 ``[n, S, S]`` batches of the given ``images.h5`` rows, in order."""
    rows = [int(r) for r in rows]
    for a in range(0, len(rows), batch_size):
        yield torch.from_numpy(np.stack([np.asarray(cache[r]) for r in rows[a : a + batch_size]]))


def pad_texts(texts: Sequence[np.ndarray], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states ``[L_i, hidden]`` -> (float32 ``[M, L, hidden]`` zero-padded, mask ``[M, L]`` True = real);
    each text keeps its LAST ``max_tokens`` tokens (as pretraining did), padded as pretraining's batches are."""
    return pad_tensors([torch.from_numpy(np.asarray(t)[-max_tokens:].astype(np.float32)) for t in texts])


@torch.inference_mode()
def score_matrix(
    model: AlignedModel,
    cache: ImageCache,
    image_rows: Sequence[int],
    text: TextCache,
    text_rows: Sequence[int],
    batch_size: int = 128,
) -> np.ndarray:
    """The training loss's score (higher = closer) of every image with every text -> ``[N, M]`` float64.

    Latent pool: images and texts are pooled once each, then compared. Cross pool: every (image, text)
    pair has its own image embedding, computed by blocks of ``batch_size`` texts.
    """
    heads, dev = model.heads, model.device

    def text_blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for a in range(0, len(text_rows), batch_size):
            t, m = pad_texts([text.text_row(int(r)) for r in text_rows[a : a + batch_size]], model.max_text_tokens)
            yield t.to(dev), m.to(dev)

    if heads.pool_kind == "latent":
        txt = torch.cat([heads.embed_text(t, m) for t, m in text_blocks()])  # [M, dim]
        out = [heads.contrastive.scores(heads.embed_image(model.patch_tokens(b)), txt) for b in image_batches(cache, image_rows, batch_size)]
        return torch.cat(out).double().cpu().numpy()
    rows = []
    for b in image_batches(cache, image_rows, batch_size):
        p = model.patch_tokens(b)
        rows.append(torch.cat([heads.scores(p, t, m) for t, m in text_blocks()], dim=1))  # [n, M]
    return torch.cat(rows).double().cpu().numpy()
