"""Contrastive losses between image and report embeddings, with negatives over the global batch.

Each loss is a module whose ``forward(image, text, ids)`` returns a named dict (``{"contrastive_loss": ...}``
plus diagnostics). ``image`` is ``[N, D]`` (one embedding per image) or ``[N, M, D]`` (one per image-report
pair, the cross-attention pool); ``text`` is ``[M, D]`` (M = N); pair ``(i, i)`` is the match. Under data
parallelism the features are gathered from every process WITH their gradients (a differentiable
all-gather), so negatives span the global batch and every process computes the same global loss; DDP's
gradient averaging then gives exactly the gradient of that loss (the gather's backward sums the W copies).

Which pairs are positive. ``ids`` ``[N, 2]`` int64 holds each item's (text.h5 text row, study id): pair
``(i, j)`` is positive iff ``i == j``, or the two reports are the same text row (identical cleaned texts share
one row of the cache), or the two images come from the same study. On MIMIC-CXR short normal reports repeat
thousands of times, and a study often has two frontal images: those pairs say the same thing, so pushing them
apart would teach the encoder to separate images whose reports are identical. ``ids`` are gathered across
processes with the features (a plain, gradient-free all_gather), so the mask of the global batch is the one a
single process would build. ``ids=None`` = only the diagonal is positive (the plain CLIP/Eq. 1 batch).

Margin loss, the report's Eq. 1 (``kind: margin``, the default). With ``u``, ``v`` L2-normalised first when
``normalize`` (then ``D`` lies in [0, 2], ``D^2 = 2 - 2 cos``)::

    D_ij = ||u_i - v_j||_2
    L = (1 / |P|) sum_{(i,j) in P} D_ij^2  +  (1 / |Q|) sum_{(i,j) in Q} max(0, eps - D_ij)^2

over the N x N pairs of the (global) batch, P = the positive pairs (the diagonal and every duplicate pair), Q =
the rest (the negatives): the mean over positive pairs plus the mean over negative pairs, so the two terms keep
equal weight whatever the batch size and however many duplicates it holds (an empty Q adds 0). Eq. 1 itself is a
plain sum over pairs; the two means are this project's normalisation (docs/pretrain-loss.md).
``positive_weighting: anchor`` replaces the first mean by the mean over images i of (1 / k_i) sum_{j in P_i}
D_ij^2 (k_i = |P_i|): an image with k duplicate reports in the batch is pulled once, not k times.
``negatives: hardest`` replaces the second mean by VSE++'s hardest negative, per image and per report:
(1 / 2N) sum_i [max_{j in Q_i} h_ij + max_{j in Q^i} h_ji], h = the hinge.
``kind: margin_sqdist`` is this project's earlier form, kept as a named option for comparison only: the hinge
is on the SQUARED distance, ``max(0, eps - D^2)^2``. It has the same zero set as Eq. 1 when ``eps`` is
squared, but its gradient vanishes as a negative collapses onto its anchor (d/dD of ``(eps - D^2)^2`` is
``-4 D (eps - D^2)``, 0 at D = 0), exactly where Eq. 1 pushes hardest (``-2 (eps - D)``).

InfoNCE (``kind: infonce``, CLIP's symmetric cross-entropy over ``scale x cos``). Duplicate pairs are MASKED:
their off-diagonal logits are set to -inf in both directions, so a duplicate is neither a negative nor an
extra target. Why masking and not multi-positive soft targets: with masking every row stays a one-target
cross-entropy that equals CLIP exactly when the batch has no duplicates, its minimum stays 0, and a row's loss
does not depend on how many copies of its report the batch happens to hold. Soft targets (1/k on each of k
copies) add a floor of log k to the loss and a pull whose weight shrinks with the group size, so the
commonest normal report (the largest group) would get the weakest target and the logged loss would move with
the batch's composition. Pulling duplicates together is the margin loss's job (its D^2 term on P).
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
    """Params ``pretrain.loss``: total = weight_mae x MAE loss + weight_text x contrastive loss."""

    weight_text: float = 1.0  # the `mae` and `continued` variants force 0 (same modules and compute)
    weight_mae: float = 1.0  # the MAE reconstruction term's weight (0 = contrastive only; not for mae/continued)
    # margin: the report's Eq. 1 | margin_sqdist: the earlier hinge on D^2 (comparison only) | infonce: CLIP's
    # symmetric InfoNCE | sigmoid: SigLIP's pairwise sigmoid (every pair its own binary term)
    kind: Literal["margin", "margin_sqdist", "infonce", "sigmoid"] = "margin"
    normalize: bool = True  # L2-normalise both embeddings before comparing them (then D in [0, 2])
    margin: float = 1.0  # eps of Eq. 1 on the distance D (margin_sqdist: on D^2); 1.0 = cos <= 0.5 for both
    # margin losses: the negative term over all negatives (mean) or, per anchor and direction, only the
    # hardest one (VSE++'s max of hinges, Faghri et al. 2018)
    negatives: Literal["mean", "hardest"] = "mean"
    # margin losses' positive term: `pair` = mean over positive pairs (an image in a group of k duplicate
    # reports is pulled k times); `anchor` = each image's positives weighted 1/k, then the mean over images
    positive_weighting: Literal["pair", "anchor"] = "pair"
    temperature: float = 0.07  # InfoNCE / sigmoid initial temperature (CLIP's 0.07; SigLIP's 0.1)
    learn_temperature: bool = True  # InfoNCE / sigmoid: learn log(1/T), clamped to T >= 0.01
    sigmoid_bias: float = -10.0  # sigmoid: initial logit bias (SigLIP's -10; learned)
    visible_tokens: bool = True  # FLIP: contrast the masked image's visible tokens (no second encoder pass)
    contrastive_mask_ratio: float = 0.0  # visible_tokens false: the second pass's own mask (0 = unmasked)
    # the report sentences' term (cxrpipe.text.sentences): contrastive = (1 - w) x report term + w x the same loss
    # against ONE sentence drawn from the report (its own cache, `cxrpipe embed-sentences`); 0 = reports only
    sentence_weight: float = 0.0


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


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Concatenate integer ids ``[n, ...]`` of every process along dim 0 -> ``[W n, ...]`` (no gradient; every
    process holds the same local batch size)."""
    if world_size() == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------- pairwise


def positive_mask(ids: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """``[N, N]`` bool: the diagonal, plus pairs that share any id column (ids ``[N, K]``: text row, study)."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if ids is None:
        return eye
    if ids.ndim != 2 or ids.shape[0] != n:
        raise ValueError(f"ids must be [N={n}, K] (one row per item of the global batch), got {tuple(ids.shape)}")
    ids = ids.to(device)
    return eye | (ids[:, None, :] == ids[None, :, :]).any(-1)


def duplicate_counts(ids: torch.Tensor | None, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Off-diagonal positive pairs of a batch (unordered, i < j), split into ``pairs_same_study`` (two images
    of one study) and ``pairs_same_text`` (identical report text, different studies). ids ``[N, 2]``."""
    if ids is None:
        zero = torch.zeros((), device=device)
        return {"pairs_same_study": zero, "pairs_same_text": zero}
    ids = ids.to(device)
    upper = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
    text = (ids[:, None, 0] == ids[None, :, 0]) & upper
    study = (ids[:, None, 1] == ids[None, :, 1]) & upper
    return {"pairs_same_study": study.sum().float(), "pairs_same_text": (text & ~study).sum().float()}




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


def _gather_pair(
    image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor | None, gather: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gather per-image features ``[n, D]`` and their ids across processes. Pairwise features ``[N, M, D]``
    are made from already gathered tokens (see the cross pool): they and their ids arrive global."""
    if gather and image.ndim == 2:
        return gather_with_grad(image), gather_with_grad(text), None if ids is None else gather_ids(ids)
    return image, text, ids


def _square(d: torch.Tensor) -> int:
    n = d.shape[0]
    if n < 2 or d.shape[1] != n:
        raise ValueError(f"contrastive loss needs a square batch of at least 2 pairs, got {tuple(d.shape)}")
    return n


class MarginContrastiveLoss(nn.Module):
    """The report's Eq. 1 (``squared_hinge=False``, the default) or the earlier hinge on D^2 (``True``); see
    the module docstring for the exact normalisation and the positive pairs."""

    def __init__(self, margin: float = 1.0, normalize: bool = True, squared_hinge: bool = False,
                 negatives: str = "mean", positive_weighting: str = "pair"):
        super().__init__()
        if negatives not in ("mean", "hardest") or positive_weighting not in ("pair", "anchor"):
            raise ValueError(f"negatives {negatives!r} / positive_weighting {positive_weighting!r} not known")
        self.margin = margin
        self.normalize = normalize
        self.squared_hinge = squared_hinge
        self.negatives = negatives
        self.positive_weighting = positive_weighting

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Retrieval scores ``[N, M]``, higher = closer: minus the distance D (the same ranking as -D^2)."""
        return -pairwise(image, text, self.normalize)[1].sqrt()

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor | None = None, gather: bool = True
    ) -> dict[str, torch.Tensor]:
        image, text, ids = _gather_pair(image, text, ids, gather)
        _, sq = pairwise(image, text, self.normalize)  # [N, N] D^2
        n = _square(sq)
        pos = positive_mask(ids, n, sq.device)  # [N, N]
        neg = ~pos
        if self.squared_hinge:
            hinge = F.relu(self.margin - sq).pow(2)
        else:
            # D = sqrt(D^2); clamped so that the (masked) gradient of a collapsed pair stays finite
            hinge = F.relu(self.margin - sq.clamp_min(1e-12).sqrt()).pow(2)
        if self.positive_weighting == "anchor":  # each image's k positives weighted 1/k, mean over images
            positive = (torch.where(pos, sq, 0.0).sum(1) / pos.sum(1)).mean()
        else:
            positive = torch.where(pos, sq, 0.0).sum() / pos.sum()
        if self.negatives == "hardest":  # VSE++: per image and per report, the hardest negative's hinge
            masked = torch.where(neg, hinge, 0.0)
            negative = (masked.max(dim=1).values.mean() + masked.max(dim=0).values.mean()) / 2
        else:
            negative = torch.where(neg, hinge, 0.0).sum() / neg.sum().clamp_min(1)
        d = sq.detach().sqrt()  # [N, N] D, for the logs
        return {
            "contrastive_loss": positive + negative,
            "positive_distance": torch.where(pos, d, 0.0).sum() / pos.sum(),  # mean D over P
            "negative_distance": torch.where(neg, d, 0.0).sum() / neg.sum().clamp_min(1),  # mean D over Q
            **duplicate_counts(ids, n, sq.device),
        }


class _ScaledSimilarityLoss(nn.Module):
    """What InfoNCE and the sigmoid loss share: a learned logit scale ``exp(logit_scale)`` on the similarity,
    clamped to at most 100 (temperature >= 0.01), and the batch's similarity matrix after the gather."""

    def __init__(self, temperature: float, learn_temperature: bool, normalize: bool):
        super().__init__()
        self.normalize = normalize
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def similarity(
        self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor | None, gather: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``(sim [N, N], ids, N)`` over the (gathered) batch."""
        image, text, ids = _gather_pair(image, text, ids, gather)
        sim, _ = pairwise(image, text, self.normalize)
        return sim, ids, _square(sim)


class InfoNCELoss(_ScaledSimilarityLoss):
    """CLIP's symmetric InfoNCE: mean of image->text and text->image cross-entropy over ``scale x sim``,
    with ``scale = exp(logit_scale)`` learnable (clamped to at most 100, i.e. temperature >= 0.01).
    Duplicate pairs (see ``ids``) are masked out of both directions' softmax (module docstring: why)."""

    def __init__(self, temperature: float = 0.07, learn_temperature: bool = True, normalize: bool = True):
        super().__init__(temperature, learn_temperature, normalize)

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Retrieval scores ``[N, M]``: the (scaled) similarities the loss uses."""
        return self.scale().detach() * pairwise(image, text, self.normalize)[0]

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor | None = None, gather: bool = True
    ) -> dict[str, torch.Tensor]:
        sim, ids, n = self.similarity(image, text, ids, gather)
        logits = self.scale() * sim  # [N, N]
        eye = torch.eye(n, dtype=torch.bool, device=sim.device)
        duplicate = positive_mask(ids, n, sim.device) & ~eye  # symmetric: one mask serves both directions
        logits = logits.masked_fill(duplicate, float("-inf"))
        labels = torch.arange(n, device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        temperature = (1.0 / self.scale()).detach()
        return {"contrastive_loss": loss, "temperature": temperature, **duplicate_counts(ids, n, sim.device)}


class SigmoidLoss(_ScaledSimilarityLoss):
    """SigLIP's pairwise sigmoid loss (Zhai et al., 2023): every pair (i, j) of the batch is one binary term,
    ``-log sigmoid(z_ij (t sim_ij + b))`` with z = +1 for positives (the diagonal and every duplicate pair,
    see ``ids``) and -1 otherwise, summed over pairs and divided by N. ``t = exp(logit_scale)`` (clamped to
    at most 100) and ``b`` are learned. No softmax over the batch: it suits small batches, and duplicates
    are simply more positives."""

    def __init__(self, temperature: float = 0.1, learn_temperature: bool = True, bias: float = -10.0,
                 normalize: bool = True):
        super().__init__(temperature, learn_temperature, normalize)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)))

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Retrieval scores ``[N, M]``: the pair logits (the ranking of the similarities)."""
        return self.scale().detach() * pairwise(image, text, self.normalize)[0] + self.logit_bias.detach()

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor | None = None, gather: bool = True
    ) -> dict[str, torch.Tensor]:
        sim, ids, n = self.similarity(image, text, ids, gather)
        sign = positive_mask(ids, n, sim.device).float() * 2 - 1  # [N, N] +1 positive, -1 negative
        logits = self.scale() * sim + self.logit_bias
        loss = -F.logsigmoid(sign * logits).sum() / n
        return {"contrastive_loss": loss, "temperature": (1.0 / self.scale()).detach(),
                "bias": self.logit_bias.detach(), **duplicate_counts(ids, n, sim.device)}


def build_contrastive_loss(cfg: LossConfig) -> nn.Module:
    if cfg.kind in ("margin", "margin_sqdist"):
        return MarginContrastiveLoss(cfg.margin, cfg.normalize, squared_hinge=cfg.kind == "margin_sqdist",
                                     negatives=cfg.negatives, positive_weighting=cfg.positive_weighting)
    if cfg.kind == "sigmoid":
        return SigmoidLoss(cfg.temperature, cfg.learn_temperature, cfg.sigmoid_bias, cfg.normalize)
    return InfoNCELoss(cfg.temperature, cfg.learn_temperature, cfg.normalize)
