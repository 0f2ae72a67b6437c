"""Contrastive losses between image and report embeddings, with negatives over the global batch.

Each loss is a module whose ``forward(image, text)`` returns a named dict (``{"contrastive_loss": ...}`` plus
diagnostics). ``image`` is ``[N, D]`` (one embedding per image) or ``[N, M, D]`` (one per image-report pair,
the cross-attention pool); ``text`` is ``[M, D]``; pair ``(i, i)`` is the match. Under data parallelism the
features are gathered from every process WITH their gradients (a differentiable all-gather), so
negatives span the global batch and every process computes the same global loss; DDP's gradient averaging
then gives exactly the gradient of that loss (the gather's backward sums the W identical copies).

Margin loss, the report's Eq. 1, with ``d_ij = ||u_i - v_j||^2`` (``u``, ``v`` L2-normalised first when
``normalize``; then ``d_ij = 2 - 2 cos(u_i, v_j)`` lies in [0, 4])::

    L = (1 / N) sum_i d_ii  +  (1 / (N (N - 1))) sum_{i != j} max(0, eps - d_ij)^2

i.e. the mean over matched pairs plus the mean over all N (N - 1) mismatched pairs of the batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Params ``pretrain.loss``: total = MAE loss + weight_text x contrastive loss."""

    weight_text: float = 1.0  # the `mae` variant forces 0 (same modules and compute, no text gradient)
    kind: Literal["margin", "infonce"] = "margin"  # the report's Eq. 1 | CLIP's symmetric InfoNCE
    normalize: bool = True  # L2-normalise both embeddings before comparing them
    margin: float = 1.0  # eps of Eq. 1, on squared distance (normalised: 1.0 pushes negatives to cos <= 0.5)
    temperature: float = 0.07  # InfoNCE initial temperature (CLIP's)
    learn_temperature: bool = True  # InfoNCE: learn log(1/T), clamped to T >= 0.01
    visible_tokens: bool = True  # FLIP: contrast the masked image's visible tokens (no second encoder pass)


# --------------------------------------------------------------------------------------- distributed


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[n, ...]`` of every process along dim 0 -> ``[W n, ...]``; gradients flow back."""
    if world_size() == 1:
        return x
    # torch >= 2.x deprecates torch.distributed.nn.all_gather (open_clip's) for this differentiable
    # collective; its backward reduce-scatters the gradients (sums the W copies), on NCCL and gloo alike.
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


def gather_padded(x: torch.Tensor, dim: int = 1, value: float = 0) -> torch.Tensor:
    """:func:`gather_with_grad` for tensors whose ``dim`` differs across processes (text lengths): each is
    padded with ``value`` to the longest first."""
    if world_size() == 1:
        return x
    size = torch.tensor([x.shape[dim]], device=x.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    pad = int(size.item()) - x.shape[dim]
    if pad:
        widths = [0, 0] * (x.ndim - 1 - dim) + [0, pad]
        x = F.pad(x, widths, value=value)
    return gather_with_grad(x)


# ------------------------------------------------------------------------------------------- pairwise


def pairwise(image: torch.Tensor, text: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity ``[N, M]`` = <u_ij, v_j>, squared distance ``[N, M]`` = ||u_ij - v_j||^2), in float32."""
    image, text = image.float(), text.float()
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    if image.ndim == 2:
        sim = image @ text.T
        sq = (image * image).sum(-1)[:, None] + (text * text).sum(-1)[None, :] - 2 * sim
    elif image.ndim == 3:
        sim = (image * text[None]).sum(-1)
        sq = ((image - text[None]) ** 2).sum(-1)
    else:
        raise ValueError(f"image features must be [N, D] or [N, M, D], got {tuple(image.shape)}")
    return sim, sq.clamp_min(0.0)


def _gather_pair(image: torch.Tensor, text: torch.Tensor, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if gather and image.ndim == 2:
        return gather_with_grad(image), gather_with_grad(text)
    return image, text  # pairwise features are made from already gathered tokens (see the cross pool)


class MarginContrastiveLoss(nn.Module):
    """The report's Eq. 1 (see the module docstring for the exact normalisation)."""

    def __init__(self, margin: float = 1.0, normalize: bool = True):
        super().__init__()
        self.margin = margin
        self.normalize = normalize

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Retrieval scores ``[N, M]``, higher = closer: minus the squared distance the loss uses."""
        return -pairwise(image, text, self.normalize)[1]

    def forward(self, image: torch.Tensor, text: torch.Tensor, gather: bool = True) -> dict[str, torch.Tensor]:
        image, text = _gather_pair(image, text, gather)
        _, d = pairwise(image, text, self.normalize)  # [N, N]
        n = d.shape[0]
        if n < 2 or d.shape[1] != n:
            raise ValueError(f"margin loss needs a square batch of at least 2 pairs, got {tuple(d.shape)}")
        eye = torch.eye(n, dtype=torch.bool, device=d.device)
        positive = d.diagonal().mean()
        hinge = F.relu(self.margin - d).pow(2)
        negative = hinge.masked_fill(eye, 0.0).sum() / (n * (n - 1))
        return {
            "contrastive_loss": positive + negative,
            "positive_distance": positive.detach(),
            "negative_distance": d.masked_fill(eye, 0.0).sum().detach() / (n * (n - 1)),
        }


class InfoNCELoss(nn.Module):
    """CLIP's symmetric InfoNCE: mean of image->text and text->image cross-entropy over ``scale x sim``,
    with ``scale = exp(logit_scale)`` learnable (clamped to at most 100, i.e. temperature >= 0.01)."""

    def __init__(self, temperature: float = 0.07, learn_temperature: bool = True, normalize: bool = True):
        super().__init__()
        self.normalize = normalize
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Retrieval scores ``[N, M]``: the (scaled) similarities the loss uses."""
        return self.scale().detach() * pairwise(image, text, self.normalize)[0]

    def forward(self, image: torch.Tensor, text: torch.Tensor, gather: bool = True) -> dict[str, torch.Tensor]:
        image, text = _gather_pair(image, text, gather)
        sim, _ = pairwise(image, text, self.normalize)
        logits = self.scale() * sim  # [N, N]
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return {"contrastive_loss": loss, "temperature": (1.0 / self.scale()).detach()}


def build_contrastive_loss(cfg: LossConfig) -> nn.Module:
    if cfg.kind == "margin":
        return MarginContrastiveLoss(margin=cfg.margin, normalize=cfg.normalize)
    return InfoNCELoss(cfg.temperature, cfg.learn_temperature, cfg.normalize)
