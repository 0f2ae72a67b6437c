"""Attention pooling that brings image patch tokens and report token embeddings into one space.

Two designs (params ``pretrain.pool.kind``):

* ``latent`` (a): a learned query attends over the tokens of each side separately (timm's
  ``AttentionPoolLatent``): image ``[N, P, D_img] -> [N, dim]``, text ``[M, L, dim] -> [M, dim]``. Pairs are
  then compared by one matrix product, so negatives are cheap (``O(N M dim)``).
* ``cross`` (b): the report's projected tokens are the queries over the patch tokens of an image: the image
  embedding depends on the report it is compared with, ``u[i, j] = pool_l(attn(text_j -> patches_i))``,
  ``[N, M, dim]``; the report's own embedding is its learned-query pool. Every pair needs its own
  attention, ``O(N M L P)`` memory: use it with small batches.

Padded text tokens never receive attention: masks are ``[B, L]`` bool, True = a real token.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Params ``pretrain.pool``."""

    kind: Literal["latent", "cross"] = "latent"  # (a) learned query per side | (b) text -> image cross-attention
    dim: int = 128  # width of the shared embedding space (text tokens are projected to it)
    num_heads: int = 4  # attention heads of the pools (must divide the encoder width and `dim`)
    mlp_ratio: float = 2.0  # hidden width of the residual MLP after each pool, x dim
    # how a report's tokens become one vector: attention (a learned query over the tokens) | last (the
    # prompt's last token: the "in one word, means:" sentence vector) | mean (of the real tokens)
    text: Literal["attention", "last", "mean"] = "attention"
    # how an image's patch tokens become one vector (pool.kind latent): attention | mean
    image: Literal["attention", "mean"] = "attention"
    dropout: float = 0.0  # dropout in each pool's MLP (and its output projection)


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """bool ``[B, N]`` (True = attend) -> additive ``[B, 1, 1, N]`` (0 or a large negative number).

    A large finite negative instead of -inf: a query whose keys are all masked would give NaN with -inf.
    """
    if mask is None:
        return None
    neg = torch.finfo(dtype).min / 2
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, neg)[:, None, None, :]


class AttentionPool(nn.Module):
    """Learned-query attention pooling of a token sequence: ``[B, N, in_dim]`` (+ mask ``[B, N]``) -> ``[B, dim]``.

    A thin wrapper of timm's ``AttentionPoolLatent`` (one latent query, projection to ``dim``, LayerNorm and
    residual MLP) that takes a key padding mask.
    """

    def __init__(self, in_dim: int, dim: int, num_heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        from timm.layers import AttentionPoolLatent

        self.pool = AttentionPoolLatent(
            in_features=in_dim,
            out_features=dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_layer=nn.LayerNorm,
            drop=dropout,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):  # q/k are in the autocast dtype inside the pool
            dtype = torch.get_autocast_dtype(x.device.type)
        return self.pool(x, attn_mask=additive_mask(mask, dtype))


class TokenPool(nn.Module):
    """Parameter-light pooling: the last real token or the mean of the real tokens ``[B, N, in_dim]`` (+ mask
    ``[B, N]``, True = real; padding is on the right) -> linear map to ``dim`` -> residual MLP, as
    :class:`AttentionPool` ends: ``[B, dim]``."""

    def __init__(self, in_dim: int, dim: int, how: str, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        from timm.layers import Mlp

        if how not in ("last", "mean"):
            raise ValueError(f"TokenPool pools by 'last' or 'mean', got {how!r}")
        self.how = how
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, drop=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.how == "last":
            last = mask.long().sum(dim=1).clamp_min(1) - 1  # [B] index of the last real token
            x = x[torch.arange(x.shape[0], device=x.device), last]  # [B, in_dim]
        else:
            w = mask.to(x.dtype)[..., None]
            x = (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        x = self.proj(x)
        return x + self.mlp(self.norm(x))


def build_pool(in_dim: int, dim: int, how: str, cfg: PoolConfig) -> nn.Module:
    """The pool of one side: :class:`AttentionPool` (``how`` attention) or :class:`TokenPool` (last / mean)."""
    if how == "attention":
        return AttentionPool(in_dim, dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
    return TokenPool(in_dim, dim, how, cfg.mlp_ratio, cfg.dropout)


class CrossAttentionPool(nn.Module):
    """Text tokens attend over an image's patch tokens; the attended values are pooled over the real tokens.

    text ``[M, L, dim]`` (mask ``[M, L]``) x patches ``[N, P, img_dim]`` -> image embeddings per pair
    ``[N, M, dim]``. Per head, the attention maps of the text tokens are averaged over the real tokens
    before the values are read (the mean of per-token attention outputs, computed once per pair).
    """

    def __init__(self, img_dim: int, dim: int, num_heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"pool.dim {dim} is not divisible by pool.num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(img_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        patches: torch.Tensor,
        chunk: int | None = None,
    ) -> torch.Tensor:
        """``chunk`` images at a time bounds the ``[chunk, M, H, L, P]`` score tensor (inference only)."""
        m, length, dim = text.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q(text).reshape(m, length, h, hd).transpose(1, 2) * hd**-0.5  # [M, H, L, hd]
        if text_mask is None:
            text_mask = torch.ones(m, length, dtype=torch.bool, device=text.device)
        w = text_mask.to(q.dtype)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1.0)  # [M, L], mean over real tokens
        outs = []
        step = chunk or patches.shape[0]
        for start in range(0, patches.shape[0], step):
            p = patches[start : start + step]
            n, num_p, _ = p.shape
            k, v = self.kv(p).reshape(n, num_p, 2, h, hd).permute(2, 0, 3, 1, 4)  # each [n, H, P, hd]
            scores = torch.einsum("mhld,nhpd->nmhlp", q, k)  # [n, M, H, L, P]
            attn = scores.softmax(dim=-1)
            attn = torch.einsum("nmhlp,ml->nmhp", attn, w)  # token-averaged attention [n, M, H, P]
            x = torch.einsum("nmhp,nhpd->nmhd", attn, v).reshape(n, m, dim)  # [n, M, dim]
            outs.append(x)
        x = self.proj(torch.cat(outs, dim=0))  # [N, M, dim]
        return x + self.mlp(self.norm(x))


class TextProjection(nn.Module):
    """Per-token normalisation, then a linear map to the shared width: ``[B, L, hidden] -> [B, L, dim]``.

    The raw hidden states of LLaMA-family models carry "massive activations" (a few dimensions up to ~1e4x
    the rest at some tokens); a parameter-free LayerNorm per token puts every token on one scale first.
    """

    def __init__(self, hidden: int, dim: int):
        super().__init__()
        self.hidden = hidden
        self.proj = nn.Linear(hidden, dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(text.float(), (self.hidden,))
        return self.proj(x.to(self.proj.weight.dtype))
