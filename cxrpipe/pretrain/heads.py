"""The alignment heads of a pretrained model, exported beside the encoder: the text side and the image pool.

``encoder.safetensors`` stays a plain timm ViT; what the evaluations that compare images with text need
(zero-shot, retrieval, attention maps) goes to two more files in the same folder:

* ``text_head.safetensors`` the weights of ``text_proj`` (per-token norm + linear map of the LLM's hidden
  states), ``text_pool`` (learned-query pool of the text tokens), ``image_pool`` (``pool.kind: latent``) or
  ``cross_pool`` (``pool.kind: cross``: text tokens attend over patches), and ``contrastive`` (the loss's
  learnable state, e.g. InfoNCE's temperature): the same key names as in :class:`PretrainModel`.
* ``text_head.json`` what rebuilds them: ``pool`` and ``loss`` (params ``pretrain.pool`` / ``pretrain.loss``),
  ``text_hidden`` (the LLM width), ``embed_dim`` (the encoder width) and ``max_text_tokens`` (the LAST
  tokens of a text that pretraining kept), plus the variant.

Both variants export them: ``mae``'s heads were never trained (weight 0), so they are the chance reference.
:class:`AlignmentHeads` scores image patch tokens ``[N, P, D]`` (``encoder.forward_features``, cls dropped)
against text token states exactly as the training loss did (``contrastive.scores``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrpipe.config import build, to_dict
from cxrpipe.pretrain.losses import LossConfig, build_contrastive_loss
from cxrpipe.pretrain.pooling import (
    AttentionPool,
    CrossAttentionPool,
    PoolConfig,
    TextProjection,
    additive_mask,
    build_pool,
)

HEADS_FILE = "text_head.safetensors"
HEADS_CONFIG = "text_head.json"
HEAD_PREFIXES = ("text_proj.", "text_pool.", "image_pool.", "cross_pool.", "contrastive.")


def add_alignment_modules(module: nn.Module, pool: PoolConfig, loss: LossConfig, text_hidden: int,
                          embed_dim: int) -> None:
    """Give ``module`` the alignment heads under their exported names: ``text_proj``, ``text_pool``,
    ``image_pool`` (``pool.kind: latent``) or ``cross_pool`` (cross), ``contrastive`` (the loss)."""
    module.pool_kind = pool.kind
    module.text_proj = TextProjection(text_hidden, pool.dim)
    module.text_pool = build_pool(pool.dim, pool.dim, pool.text, pool)
    if pool.kind == "latent":
        module.image_pool = build_pool(embed_dim, pool.dim, pool.image, pool)
    else:
        module.cross_pool = CrossAttentionPool(embed_dim, pool.dim, pool.num_heads, pool.mlp_ratio)
    module.contrastive = build_contrastive_loss(loss)


class AlignmentHeads(nn.Module):
    """Text projection + pools + the loss's score, rebuilt outside :class:`PretrainModel` (same key names)."""

    def __init__(self, pool: PoolConfig, loss: LossConfig, text_hidden: int, embed_dim: int):
        super().__init__()
        add_alignment_modules(self, pool, loss, text_hidden, embed_dim)

    def embed_text(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw hidden states ``[M, L, hidden]`` + mask ``[M, L]`` -> pooled text embeddings ``[M, dim]``."""
        return self.text_pool(self.text_proj(text), mask)

    def embed_image(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[N, P, D]`` -> pooled image embeddings ``[N, dim]`` (latent pool only)."""
        if self.pool_kind != "latent":
            raise ValueError("pool.kind cross has no text-independent image embedding")
        return self.image_pool(patches)

    def scores(self, patches: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """The loss's similarity of every image with every text: ``[N, P, D] x [M, L, hidden] -> [N, M]``."""
        if self.pool_kind == "latent":
            return self.contrastive.scores(self.embed_image(patches), self.embed_text(text, mask))
        tokens = self.text_proj(text)  # [M, L, dim]
        pair = self.cross_pool(tokens, mask, patches, chunk=chunk)  # [N, M, dim]
        return self.contrastive.scores(pair, self.text_pool(tokens, mask))


def latent_attention(pool: AttentionPool, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The learned query's attention over the tokens of ``x`` ``[B, N, C]`` -> ``[B, heads, N]``, each row a
    softmax over the real (``mask`` True) tokens: recomputed from timm ``AttentionPoolLatent``'s own
    projections (its forward does not return the weights)."""
    p = pool.pool
    b, n, _ = x.shape
    if p.pos_embed is not None:
        x = x + p.pos_embed.unsqueeze(0).to(x.dtype)
    q = p.q(p.latent.expand(b, -1, -1)).reshape(b, p.latent_len, p.num_heads, p.head_dim).transpose(1, 2)
    k = p.kv(x).reshape(b, n, 2, p.num_heads, p.head_dim).permute(2, 0, 3, 1, 4)[0]  # [B, H, N, hd]
    q, k = p.q_norm(q), p.k_norm(k)
    scores = (q * p.scale) @ k.transpose(-2, -1)  # [B, H, 1, N]
    add = additive_mask(mask, scores.dtype)
    if add is not None:
        scores = scores + add
    return scores.softmax(dim=-1)[:, :, 0, :]


def cross_attention(pool: CrossAttentionPool, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Each projected text token's attention over one image's patches: text ``[L, dim]``, patches ``[P, D]``
    -> ``[heads, L, P]`` (softmax over patches, as inside :class:`CrossAttentionPool`)."""
    h, hd = pool.num_heads, pool.head_dim
    length = text.shape[0]
    q = pool.q(text).reshape(length, h, hd).transpose(0, 1) * hd**-0.5  # [H, L, hd]
    k = pool.kv(patches).reshape(patches.shape[0], 2, h, hd)[:, 0].transpose(0, 1)  # [H, P, hd]
    return (q @ k.transpose(-2, -1)).softmax(dim=-1)


def save_heads(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the heads of a :class:`PretrainModel` (keys starting with :data:`HEAD_PREFIXES`) and ``config``
    (needs ``pool``, ``loss``, ``text_hidden``, ``embed_dim``) atomically into ``out_dir``."""
    from safetensors.torch import save_file

    from cxrpipe.io import respect_umask

    for key in ("pool", "loss", "text_hidden", "embed_dim"):
        if key not in config:
            raise ValueError(f"text head config lacks '{key}'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    tmp = out_dir / (HEADS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    respect_umask(tmp)  # safetensors writes 0600
    os.replace(tmp, out_dir / HEADS_FILE)
    tmpc = out_dir / (HEADS_CONFIG + ".tmp")
    tmpc.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    os.replace(tmpc, out_dir / HEADS_CONFIG)


def load_heads(model_dir: str | Path) -> tuple[AlignmentHeads, dict[str, Any]]:
    """Rebuild the heads from ``text_head.json`` and load ``text_head.safetensors`` strictly (eval mode)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    path = model_dir / HEADS_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path}: no exported text side (pretrain writes it; re-run pretrain)")
    config = json.loads(path.read_text())
    pool = build(PoolConfig, config["pool"], "pool")
    loss = build(LossConfig, config["loss"], "loss")
    heads = AlignmentHeads(pool, loss, int(config["text_hidden"]), int(config["embed_dim"]))
    heads.load_state_dict(load_file(str(model_dir / HEADS_FILE)), strict=True)
    return heads.eval(), config
