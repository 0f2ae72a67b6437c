"""Alignment check after pretraining: image -> report retrieval on the validate split.

Each validate image (unmasked, no augmentation) is scored against every distinct validate report with the
very pooling and score the contrastive loss trained (minus the distance D for the margin loss, scaled
cosine for InfoNCE). Recall@k = fraction of images whose own report is among the k best; identical report
texts are one candidate (the text cache stores them once), so the chance level is ``k / n_reports``. A
multimodal encoder whose text signal got through scores well above chance; the ``mae`` variant's untrained
heads sit near it.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from cxrpipe.pretrain.data import PairDataset, collate, eval_batches
from cxrpipe.pretrain.model import PretrainModel

log = logging.getLogger(__name__)

KS = (1, 5, 10)


def recall_at_k(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """scores ``[N, M]`` (higher = better), targets ``[N]`` column of each row's match -> ``recall@k``.

    Rank = number of candidates scoring strictly higher than the match (ties count in its favour).
    """
    own = scores.gather(1, targets[:, None])  # [N, 1]
    rank = (scores > own).sum(dim=1)  # [N], 0 = best
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def evaluate_retrieval(
    model: PretrainModel,
    dataset: PairDataset,
    device: torch.device,
    batch_size: int = 64,
    ks: Sequence[int] = KS,
    autocast=None,
    split: str = "validate",
) -> dict[str, float]:
    """Image -> report recall@k on ``dataset`` (its pairs, read without augmentation) with chance levels;
    ``split`` only names the pairs in the log."""
    import contextlib

    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    text_rows = sorted({p.text_row for p in dataset.pairs})
    column = {r: j for j, r in enumerate(text_rows)}
    targets = torch.tensor([column[p.text_row] for p in dataset.pairs])
    # first pair of each distinct report, to read its tokens once
    first = {}
    for i, p in enumerate(dataset.pairs):
        first.setdefault(p.text_row, i)

    patches, texts = [], []
    for batch in eval_batches(len(dataset), batch_size):
        b = collate([dataset[k] for k in batch])
        with autocast():
            tokens = model.patch_tokens(b["images"].to(device))  # [n, L, D]
            # latent pool: keep only the pooled [n, dim]; cross pool: the pairs need the tokens
            patches.append(model.image_pool(tokens) if model.pool_kind == "latent" else tokens)
    t_items = [dataset[(first[r], None)] for r in text_rows]
    for a in range(0, len(t_items), batch_size):
        b = collate(t_items[a : a + batch_size])
        texts.append((b["text"].to(device), b["text_mask"].to(device)))

    with autocast():
        if model.pool_kind == "latent":
            img = torch.cat(patches)  # [N, dim]
            txt = torch.cat([model.text_pool(model.text_proj(t), m) for t, m in texts])  # [M, dim]
            scores = model.contrastive.scores(img, txt)
        else:  # one embedding per (image, report) pair: score by blocks of reports
            cols = []
            for t, m in texts:
                rows = []
                for p in patches:
                    u, v = model.embed_pairs(p, t, m, chunk=4)  # [n, m, dim], [m, dim]
                    rows.append(model.contrastive.scores(u, v))
                cols.append(torch.cat(rows))
            scores = torch.cat(cols, dim=1)  # [N, M]
    model.train(was_training)

    out = recall_at_k(scores.float().cpu(), targets, ks)
    n_img, n_txt = len(dataset), len(text_rows)
    out.update({f"chance@{k}": min(1.0, k / n_txt) for k in ks})
    out.update({"n_images": n_img, "n_reports": n_txt})
    rank = (scores.float().cpu() > scores.float().cpu().gather(1, targets[:, None])).sum(1)
    out["median_rank"] = float(np.median(rank.numpy()) + 1)
    log.info(
        "retrieval (%s) on %d images x %d reports: %s",
        split,
        n_img,
        n_txt,
        ", ".join(f"R@{k} {out[f'recall@{k}']:.3f} (chance {out[f'chance@{k}']:.3f})" for k in ks),
    )
    return out
