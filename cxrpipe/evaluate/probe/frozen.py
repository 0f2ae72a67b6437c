"""Probes on frozen encoder features: the heads, and their training by optimizer steps with the lr, weight decay
and step chosen on validate.

Two heads (:class:`ClassifierHead`):

* protocol ``fc``: fully connected layers (``finetune.head``: hidden widths, GELU, dropout) on the features,
  the report's baseline ("fully connected layers" on a frozen encoder);
* protocol ``linear``: BatchNorm without affine + ONE ``nn.Linear`` (:data:`LINEAR_HEAD`), the linear probe
  of MAE and MGCA, so that numbers read against the field's linear-probe tables.

Training (:func:`fit_probe`): AdamW with a cosine schedule over ``steps`` optimizer steps (never epochs: 5% of
2,300 studies at batch 128 is one step per epoch, so an epoch budget would measure the schedule at small
label fractions, not the features). Every ``eval_every`` steps the head is scored on ``validate`` (mAUC at
``select_level``); over the grid ``lrs`` x ``weight_decays`` (BenchX grids its fine-tuning the same way) the
best validate score wins, ties going to the earlier grid point and the earlier step. Test is never read here.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrpipe.evaluate.probe.data import LabelledImages
from cxrpipe.evaluate.stats.metrics import EvalLevel, Predictions, macro_auroc
from cxrpipe.labels import N_LABELS
from cxrpipe.progress import progress

log = logging.getLogger(__name__)


class InputNorm(str, enum.Enum):
    """The normalisation in front of a head (``finetune.head.norm``)."""

    BATCHNORM = "batchnorm"  # BatchNorm1d without affine: MAE's / MGCA's linear probe; LP-FT can keep its statistics
    LAYERNORM = "layernorm"  # LayerNorm with affine: BenchX's fine-tuning head (trains with the encoder)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    hidden: tuple[int, ...] = (256,)  # hidden FC widths; () = a single linear layer
    dropout: float = 0.1  # before each FC layer after the first
    input_norm: bool = True  # a normalisation on the encoder features (``norm``): frozen features come at
    # whatever scale pretraining left them
    norm: InputNorm = InputNorm.BATCHNORM  # which one, when ``input_norm``


LINEAR_HEAD = HeadConfig(hidden=(), dropout=0.0, input_norm=True)  # protocol `linear`: BN (no affine) + Linear


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """A probe's schedule (``finetune.fc`` / ``finetune.linear``)."""

    steps: int = 500  # AdamW steps, cosine from the peak lr to 0 (the same count at every label fraction)
    eval_every: int = 25  # steps between validate evaluations; the best one is kept (and the last step)
    batch_size: int = 128  # a training set smaller than this trains on all of it every step
    lrs: tuple[float, ...] = (1e-3,)  # peak-lr grid
    weight_decays: tuple[float, ...] = (1e-4,)  # weight-decay grid (with every lr)


class ClassifierHead(nn.Module):
    """Fully connected layers: features ``[B, D]`` -> logits ``[B, L]`` (L labels)."""

    def __init__(self, in_dim: int, cfg: HeadConfig, n_out: int = N_LABELS):
        super().__init__()
        layers: list[nn.Module] = []
        if cfg.input_norm:
            layers.append(nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if InputNorm(cfg.norm) is InputNorm.BATCHNORM
                          else nn.LayerNorm(in_dim, eps=1e-6))
        dim = in_dim
        for i, width in enumerate(cfg.hidden):
            if i > 0 and cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            layers += [nn.Linear(dim, width), nn.GELU()]
            dim = width
        if cfg.hidden and cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(dim, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the valid entries only (masked labels contribute nothing)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def make_loader(ds: Dataset, batch_size: int, train: bool, seed: int, workers: int) -> DataLoader:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        generator=gen,
        num_workers=workers,
        drop_last=train and len(ds) > batch_size,  # BatchNorm cannot train on a batch of one
    )


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, to_input: Callable) -> np.ndarray:
    """Logits ``[N, out]`` in dataset order."""
    model.eval()
    out = [model(to_input(x)).float().cpu() for x, *_ in progress(loader, desc="predict", unit="batch", leave=False)]
    return torch.cat(out).numpy()


def cosine(total: int, warmup: int) -> Callable[[int], float]:
    """The lr factor at a step: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def validate_scorer(validate: LabelledImages, level: EvalLevel) -> Callable[[np.ndarray], tuple[float, float]]:
    """validate logits ``[N_val, L]`` -> (masked BCE, mAUC at ``level``): what every selection compares."""
    targets, mask = torch.from_numpy(validate.targets), torch.from_numpy(validate.mask)

    def score(logits: np.ndarray) -> tuple[float, float]:
        loss = float(masked_bce(torch.from_numpy(logits), targets, mask))
        pred = Predictions(validate.image_ids, validate.study_ids, sigmoid(logits), validate.targets,
                           validate.mask, validate.labels)
        lv = pred.at_level(level)
        return loss, macro_auroc(lv.targets, lv.probs, lv.mask)[0]

    return score


def selection_score(mauc: float) -> float:
    """Rounded (equal AUCs summed in another order differ in the last bits); nan (undefined) ranks last."""
    return -math.inf if math.isnan(mauc) else round(mauc, 12)


@dataclasses.dataclass
class ProbeFit:
    """The selected probe."""

    head: ClassifierHead  # the selected grid point's state at the selected step
    selected: dict  # {"lr", "weight_decay", "step"}
    validate_mauc: float
    val_logits: np.ndarray  # [N_val, L] of the selected head
    history: list[dict]  # every validate evaluation of every grid point


def _batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless index batches ``[b]``: a seeded permutation per pass, its last partial batch dropped (a set
    smaller than the batch gives all of it every step)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    b = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for a in range(0, n - b + 1, b):
            yield perm[a:a + b]


def fit_probe(
    feats: dict[str, torch.Tensor],
    splits: dict[str, LabelledImages],
    head_cfg: HeadConfig,
    cfg: ProbeConfig,
    level: EvalLevel,
    seed: int,
    device: torch.device,
) -> ProbeFit:
    """Train a head on frozen features ``feats[split] [N, D]`` at every grid point; keep the best on validate.

    Every grid point starts from the same init (``seed``) and draws the same batches. Raises ValueError when
    the grid is empty or the training split holds fewer than two images (BatchNorm cannot train)."""
    if not cfg.lrs or not cfg.weight_decays or cfg.steps < 1 or cfg.eval_every < 1:
        raise ValueError("a probe needs steps >= 1, eval_every >= 1 and at least one lr and one weight decay")
    x_train = feats["train"].to(device)
    if x_train.shape[0] < 2:
        raise ValueError(f"{x_train.shape[0]} training image(s): a probe needs at least 2 (BatchNorm)")
    y_train = torch.from_numpy(splits["train"].targets).to(device)
    m_train = torch.from_numpy(splits["train"].mask).to(device)
    x_val = feats["validate"].to(device)
    score = validate_scorer(splits["validate"], level)
    n_out = len(splits["train"].labels)
    history: list[dict] = []
    best: tuple[float, dict, dict, np.ndarray, float] | None = None
    for lr in cfg.lrs:
        for wd in cfg.weight_decays:
            torch.manual_seed(seed)
            head = ClassifierHead(int(x_train.shape[1]), head_cfg, n_out=n_out).to(device)
            opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(cfg.steps, 0))
            total, n = 0.0, 0
            for step, idx in enumerate(_batches(x_train.shape[0], cfg.batch_size, seed), start=1):
                head.train()
                loss = masked_bce(head(x_train[idx]), y_train[idx], m_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, n = total + loss.item(), n + 1
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    with torch.inference_mode():
                        head.eval()
                        logits = head(x_val).float().cpu().numpy()
                    val_loss, mauc = score(logits)
                    history.append({"lr": lr, "weight_decay": wd, "step": step, "train_loss": total / n,
                                    "validate_loss": val_loss, "validate_mauc": mauc})
                    total, n = 0.0, 0
                    if best is None or selection_score(mauc) > best[0]:
                        state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                        best = (selection_score(mauc), {"lr": lr, "weight_decay": wd, "step": step}, state, logits,
                                mauc)
                if step == cfg.steps:
                    break
            log.info("probe lr %g, weight decay %g: best validate mAUC (%s) so far %.4f", lr, wd, level.value,
                     best[4] if best else float("nan"))
    assert best is not None
    if best[0] == -math.inf:
        log.warning("validate mAUC undefined (no label with both classes in validate): keeping %s", best[1])
    head = ClassifierHead(int(x_train.shape[1]), head_cfg, n_out=n_out).to(device)
    head.load_state_dict(best[2])
    return ProbeFit(head, best[1], best[4], best[3], history)
