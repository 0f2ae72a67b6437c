"""Stage three: heads on the labels of the prepared folder (the 14 CheXpert labels on MIMIC-CXR) over an
exported encoder, three protocols.

* ``fc``       the encoder is frozen (the report's baseline: "fully connected layers" on the encoder): its
  pooled features are computed ONCE for every image and an FC head (``finetune.head``) is trained on them.
* ``linear``   the encoder is frozen, the head is BatchNorm without affine + one linear layer: the linear
  probe of MAE and MGCA (the field's linear-probe tables).
  Both probes train by optimizer steps with lr / weight decay / step chosen on validate from a small grid
  (:mod:`cxrpipe.evaluate.probe.frozen`).
* ``finetune`` every weight trains, by default as LP-FT (Kumar et al. 2022): the ``fc`` probe runs first and
  its selected head is the starting point and "epoch 0" of the validate-based selection, and the head's
  input BatchNorm keeps the probe's statistics (``init_head``, ``freeze_input_norm``); timm's layer-wise lr
  decay (``layer_decay`` < 1; BEiT / MAE fine-tuning recipe) scales the lr of block ``i`` of ``d`` (0-based)
  by ``layer_decay ** (d - 1 - i)`` and the patch and position embeddings by ``layer_decay ** d``; the last
  block, the final norm and the head get the full lr. AdamW, warm-up + cosine, the epoch with the best
  ``validate`` mAUC (at ``select_level``) is kept.

All: masked BCE (the uncertain/blank policies decide targets and mask); numbers are computed once on ``test``,
with intervals over test patients (``stats``: :mod:`cxrpipe.evaluate.stats.rules`).
Outputs: the metrics JSON, the resolved config beside it (``<stem>.config.json``), the test predictions
(``.npz``, for ``compare``) and a PNG of the training curves. Same seed and params -> same numbers on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from cxrpipe.config import save_config, to_dict
from cxrpipe.evaluate.probe.data import ImageRows, LabelledImages, labelled_splits, split_counts
from cxrpipe.evaluate.probe.frozen import (
    LINEAR_HEAD,
    ClassifierHead,
    HeadConfig,
    InputNorm,
    ProbeConfig,
    ProbeFit,
    cosine,
    fit_probe,
    make_loader,
    masked_bce,
    predict_logits,
    selection_score,
    sigmoid,
    validate_scorer,
)
from cxrpipe.evaluate.stats.metrics import EvalLevel, Predictions, evaluate, jsonable, macro_auroc, save_predictions
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.io import write_json_atomic
from cxrpipe.labels import BlankPolicy, UncertainPolicy
from cxrpipe.progress import progress

log = logging.getLogger(__name__)

__all__ = ["ClassifierHead", "HeadConfig", "ProbeConfig", "masked_bce"]  # the heads live in .frozen


class Protocol(str, enum.Enum):
    FC = "fc"  # frozen encoder, FC head on cached features (the report's baseline)
    LINEAR = "linear"  # frozen encoder, BatchNorm (no affine) + one linear layer (MAE's / MGCA's linear probe)
    FINETUNE = "finetune"  # all weights

    @property
    def frozen(self) -> bool:
        return self is not Protocol.FINETUNE


class HeadInit(str, enum.Enum):
    """How protocol ``finetune`` starts its head."""

    RANDOM = "random"  # a fresh head (plain fine-tuning)
    FC_PROBE = "fc_probe"  # LP-FT (Kumar et al. 2022): the head the `fc` protocol selects, which also enters the
    # validate-based selection as "epoch 0", so fine-tuning cannot end below it on validate


@dataclasses.dataclass(frozen=True)
class FullFinetuneConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2.5e-4  # AdamW peak lr of the head and the last block, cosine to 0
    weight_decay: float = 0.05  # not on biases, norms, tokens, position embeddings
    layer_decay: float = 0.75  # lr of block i (0-based) of d: lr * layer_decay**(d - 1 - i); 1.0 = off
    warmup_epochs: float = 1.0  # linear warm-up before the cosine
    init_head: HeadInit = HeadInit.FC_PROBE  # fc_probe (LP-FT) | random
    freeze_input_norm: bool = True  # keep the head's input BatchNorm in eval mode (its statistics from the
    # fc probe's features, or measured on the frozen train features) instead of re-estimating them from
    # batches while the encoder's features move
    head_lr_scale: float = 1.0  # the head's lr = lr x this (LP-FT: the probed head needs little change)
    # The LP-FT grid (BenchX grids its fine-tuning; optional, off in the demo): every point trains from the same
    # start and the best (point, epoch) on VALIDATE is kept. () = the single value above / finetune.head.norm.
    lrs: tuple[float, ...] = ()  # peak lrs tried; () = (lr,)
    layer_decays: tuple[float, ...] = ()  # layer decays tried (discriminative lr); () = (layer_decay,)
    head_norms: tuple[InputNorm, ...] = ()  # the head's input norm tried (layernorm: BenchX's); () = (head.norm,)

    def grid(self, head_norm: InputNorm) -> list[tuple[InputNorm, float, float]]:
        """(head norm, lr, layer decay) of every grid point, norm outermost (one probe per norm)."""
        return [(InputNorm(n), lr, ld) for n in (self.head_norms or (head_norm,))
                for lr in (self.lrs or (self.lr,)) for ld in (self.layer_decays or (self.layer_decay,))]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    seed: int = 0  # head init, batch order, dropout, label-fraction sample, bootstrap
    label_fraction: float = 1.0  # fraction of training STUDIES used (0.01, 0.1, 1.0: label efficiency)
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # the label_efficiency stage's fractions (nested samples)
    uncertain: UncertainPolicy = UncertainPolicy.IGNORE  # -1 labels: ignore (masked) | ones | zeros
    blank: BlankPolicy = BlankPolicy.ZEROS  # blank labels: zeros | ignore
    views: tuple[str, ...] = ("AP", "PA")  # views used; () = all (prepare already filters to frontal)
    select_level: EvalLevel = EvalLevel.STUDY  # level of the validate mAUC that picks the step / epoch
    n_bootstrap: int = 1000  # replicates (test patients resampled: stats.bootstrap_unit) for the 95% intervals
    eval_batch_size: int = 256  # batch for feature extraction and prediction
    num_workers: int = 0  # DataLoader workers reading images.h5
    device: str = "auto"  # auto (cuda if present) | cpu | cuda[:i]
    head: HeadConfig = HeadConfig()  # the fc protocol's layers (and the finetune protocol's head)
    fc: ProbeConfig = ProbeConfig()  # protocol fc's schedule and grid
    linear: ProbeConfig = ProbeConfig()  # protocol linear's schedule and grid
    finetune: FullFinetuneConfig = FullFinetuneConfig()

    def probe(self, protocol: "Protocol") -> tuple[HeadConfig, ProbeConfig]:
        """(head layers, schedule) of a frozen protocol; ``finetune`` (LP-FT) probes with ``fc``."""
        return (LINEAR_HEAD, self.linear) if Protocol(protocol) is Protocol.LINEAR else (self.head, self.fc)


class Classifier(nn.Module):
    """Encoder + head: images ``[B, 1, H, W]`` -> logits ``[B, L]`` (L labels)."""

    def __init__(self, encoder: nn.Module, head: ClassifierHead, freeze_input_norm: bool = False):
        super().__init__()
        self.encoder = encoder  # timm ViT with num_classes=0: returns pooled features [B, D]
        self.head = head
        self.freeze_input_norm = freeze_input_norm  # the head's BatchNorm stays in eval mode when training

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.freeze_input_norm:
            for m in self.head.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.eval()  # normalise with the stored statistics; never update them
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Inputs:
    """uint8 images ``[B, S, S]`` -> normalised float ``[B, 1, H, W]`` at the encoder's input size."""

    def __init__(self, enc_cfg: dict[str, Any], device: torch.device):
        size = enc_cfg["kwargs"].get("img_size", None)
        self.size = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if size else None
        self.mean, self.std = float(enc_cfg["pixel_mean"]), float(enc_cfg["pixel_std"])
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from cxrpipe.encoder import normalize_uint8

        # images.h5 made at another size than the encoder saw: resized rather than refused
        return normalize_uint8(images.to(self.device), self.mean, self.std, self.size)


def _param_groups(model: Classifier, cfg: FullFinetuneConfig) -> list[dict]:
    """timm's layer-decay groups for the encoder (lr scaled per block) + the head at full lr."""
    from timm.optim import param_groups_layer_decay

    no_wd = model.encoder.no_weight_decay() if hasattr(model.encoder, "no_weight_decay") else set()
    groups = param_groups_layer_decay(
        model.encoder, weight_decay=cfg.weight_decay, no_weight_decay_list=no_wd, layer_decay=cfg.layer_decay
    )
    decay = [p for p in model.head.parameters() if p.ndim > 1]
    no_decay = [p for p in model.head.parameters() if p.ndim <= 1]
    groups += [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": cfg.head_lr_scale},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": cfg.head_lr_scale},
    ]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return [g for g in groups if g["params"]]


def _fit(
    model: nn.Module,
    train: DataLoader,
    predict_validate: Callable[[], np.ndarray],
    validate: LabelledImages,
    to_input: Callable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    warmup_epochs: float,
    level: EvalLevel,
    initial_logits: np.ndarray | None = None,
) -> tuple[list[dict], int, dict[str, torch.Tensor], np.ndarray]:
    """Train all weights; keep the epoch with the best validate mAUC -> (history, best epoch, its state, its
    logits). ``initial_logits``: the validate logits ``[N_val, L]`` of the model as it starts (LP-FT's probed
    head); the starting state then competes as epoch 0 and wins ties."""
    steps = epochs * len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps, int(warmup_epochs * len(train))))
    history: list[dict] = []
    best: tuple[float, int, dict[str, torch.Tensor], np.ndarray] | None = None
    score_of = validate_scorer(validate, level)
    if initial_logits is not None:
        val_loss, mauc = score_of(initial_logits)
        history.append({"epoch": 0, "train_loss": None, "validate_loss": val_loss, "validate_mauc": mauc})
        log.info("epoch 0 (start): validate loss %.4f, validate mAUC (%s) %.4f", val_loss, level.value, mauc)
        best = (selection_score(mauc), 0, {k: v.detach().clone() for k, v in model.state_dict().items()},
                initial_logits)
    for epoch in range(1, epochs + 1):
        model.train()
        total, n = 0.0, 0
        for x, y, m in progress(train, desc=f"epoch {epoch}", unit="batch", leave=False):
            logits = model(to_input(x))
            loss = masked_bce(logits, y.to(logits.device), m.to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            total += loss.item() * x.shape[0]
            n += x.shape[0]
        logits = predict_validate()  # [N_val, L]
        val_loss, mauc = score_of(logits)
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "validate_loss": val_loss, "validate_mauc": mauc})
        log.info("epoch %d/%d: train loss %.4f, validate loss %.4f, validate mAUC (%s) %.4f",
                 epoch, epochs, total / max(n, 1), val_loss, level.value, mauc)
        if best is None or selection_score(mauc) > best[0]:  # a tie keeps the earlier epoch
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (selection_score(mauc), epoch, state, logits)
    assert best is not None, "epochs must be >= 1"
    if best[0] == -math.inf:
        log.warning("validate mAUC undefined (no label with both classes in validate): keeping epoch %d", best[1])
    return history, best[1], best[2], best[3]


@torch.inference_mode()
def _set_input_norm(head: ClassifierHead, encoder: nn.Module, loader: DataLoader, to_images: Callable) -> None:
    """Store the frozen encoder's train-feature mean and variance in the head's input BatchNorm."""
    bn = next((m for m in head.modules() if isinstance(m, nn.BatchNorm1d)), None)
    if bn is None:
        return
    feats = torch.from_numpy(predict_logits(encoder, loader, to_images)).double()  # [N, D]
    bn.running_mean.copy_(feats.mean(0).to(bn.running_mean))
    bn.running_var.copy_(feats.var(0).to(bn.running_var))


def _mauc(pred: Predictions, level: EvalLevel) -> float:
    lv = pred.at_level(level)
    return macro_auroc(lv.targets, lv.probs, lv.mask)[0]


def _train_all_weights(
    encoder: nn.Module, head: ClassifierHead, probe: ProbeFit | None, ds: dict[str, Dataset],
    splits: dict[str, LabelledImages], cfg: FinetuneConfig, to_images: Callable, eval_loader: Callable,
    device: torch.device,
) -> tuple[list[dict], int, np.ndarray, Classifier]:
    """Protocol ``finetune`` at one grid point (``cfg.finetune``'s lr and layer decay): encoder and head train
    together from ``head`` (the probe's, for LP-FT: its validate score is "epoch 0" of the selection). Both
    are trained in place. Returns (history, best epoch, validate logits ``[N_val, L]``, the model at the best
    epoch)."""
    ftc = cfg.finetune
    if ftc.freeze_input_norm and probe is None:  # statistics of the frozen train features, once
        _set_input_norm(head, encoder, eval_loader("train"), to_images)
    encoder.requires_grad_(True)
    model = Classifier(encoder, head, freeze_input_norm=ftc.freeze_input_norm).to(device)
    train = make_loader(ds["train"], ftc.batch_size, True, cfg.seed, cfg.num_workers)
    val_loader = eval_loader("validate")
    optimizer = torch.optim.AdamW(_param_groups(model, ftc), lr=ftc.lr)
    history, best_epoch, state, val_logits = _fit(
        model, train, lambda: predict_logits(model, val_loader, to_images), splits["validate"], to_images,
        optimizer, ftc.epochs, ftc.warmup_epochs, cfg.select_level,
        initial_logits=probe.val_logits if probe is not None else None,
    )
    model.load_state_dict(state)
    return history, best_epoch, val_logits, model


@dataclasses.dataclass
class _Outcome:
    """What a protocol's training hands to the evaluation."""

    history: list[dict]
    selection: dict[str, Any]  # probes: {"selected": {lr, weight_decay, step}}; finetune: {"best_epoch": .}
    validate_mauc: float
    val_logits: np.ndarray  # [N_val, L]
    test_logits: np.ndarray  # [N_test, L]
    probe: ProbeFit | None = None  # the probe (LP-FT's start)
    probe_test: np.ndarray | None = None  # [N_test, L] its test logits


def _frozen_features(encoder: nn.Module, eval_loader: Callable[[str], DataLoader], splits: dict[str, LabelledImages],
                     to_images: Callable) -> dict[str, torch.Tensor]:
    """The frozen encoder's pooled features ``[N, D]`` of every split, computed ONCE."""
    encoder.requires_grad_(False)
    feats = {k: torch.from_numpy(predict_logits(encoder, eval_loader(k), to_images)) for k in splits}
    log.info("frozen features: %s", {k: tuple(v.shape) for k, v in feats.items()})
    return feats


def _probe(feats: dict[str, torch.Tensor], splits: dict[str, LabelledImages], cfg: FinetuneConfig,
           protocol: Protocol, device: torch.device) -> tuple[ProbeFit, np.ndarray]:
    """A frozen protocol's probe on the features: the grid -> (fit, test logits)."""
    head_cfg, probe_cfg = cfg.probe(protocol)
    fit = fit_probe(feats, splits, head_cfg, probe_cfg, cfg.select_level, cfg.seed, device)
    with torch.inference_mode():
        fit.head.eval()
        test = fit.head(feats["test"].to(device)).float().cpu().numpy()
    return fit, test


def _finetune_grid(encoder: nn.Module, ds: dict[str, Dataset], splits: dict[str, LabelledImages], cfg: FinetuneConfig,
                   to_images: Callable, eval_loader: Callable, device: torch.device) -> _Outcome:
    """Protocol ``finetune`` over ``cfg.finetune.grid``: every point starts from the same encoder weights (and,
    for LP-FT, the ``fc`` probe fitted with that point's head norm), trains all weights, and the best (point,
    epoch) on VALIDATE is kept, ties going to the earlier point; only that model is run on test."""
    ftc = cfg.finetune
    lp_ft = ftc.init_head is HeadInit.FC_PROBE
    feats = _frozen_features(encoder, eval_loader, splits, to_images) if lp_ft else None
    probes: dict[InputNorm, tuple[ProbeFit, np.ndarray]] = {}
    n_labels = len(splits["train"].labels)  # the head's width: the prepared folder's label set
    points, best, rng = [], None, None
    for norm, lr, layer_decay in ftc.grid(cfg.head.norm):
        point = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, norm=norm),
                                    finetune=dataclasses.replace(ftc, lr=lr, layer_decay=layer_decay))
        if feats is not None and norm not in probes:
            probes[norm] = _probe(feats, splits, point, Protocol.FINETUNE, device)
        probe = probes[norm][0] if feats is not None else None
        if rng is None:  # every point draws the same random stream (head init, dropout) as the first
            rng = torch.get_rng_state()
        torch.set_rng_state(rng)
        head = (copy.deepcopy(probe.head) if probe is not None
                else ClassifierHead(int(encoder.num_features), point.head, n_labels).to(device))
        history, epoch, val_logits, model = _train_all_weights(
            copy.deepcopy(encoder), head, probe, ds, splits, point, to_images, eval_loader, device)
        mauc = next(h["validate_mauc"] for h in history if h["epoch"] == epoch)
        points.append({"head_norm": norm.value, "lr": lr, "layer_decay": layer_decay, "best_epoch": epoch,
                       "validate_mauc": mauc})
        log.info("LP-FT grid point %s: best epoch %d, validate mAUC %.4f", points[-1], epoch, mauc)
        if best is None or selection_score(mauc) > selection_score(best[1]):
            best = (len(points) - 1, mauc, history, val_logits, model, norm)
    assert best is not None
    k, mauc, history, val_logits, model, norm = best
    selection: dict[str, Any] = {"best_epoch": points[k]["best_epoch"]}
    if len(points) > 1:  # the grid's record; a single point (the demo) writes what it always wrote
        selection |= {"selected": {key: points[k][key] for key in ("head_norm", "lr", "layer_decay")},
                      "grid": points}
    test_logits = predict_logits(model, eval_loader("test"), to_images)
    probe, probe_test = probes[norm] if norm in probes else (None, None)
    return _Outcome(history, selection, mauc, val_logits, test_logits, probe, probe_test)


def _train(protocol: Protocol, encoder: nn.Module, ds: dict[str, Dataset], splits: dict[str, LabelledImages],
           cfg: FinetuneConfig, to_images: Callable, eval_loader: Callable, device: torch.device) -> _Outcome:
    """Run one protocol: a probe on frozen features, or all weights (LP-FT: the fc probe first) over the grid."""
    if not protocol.frozen:
        return _finetune_grid(encoder, ds, splits, cfg, to_images, eval_loader, device)
    probe, probe_test = _probe(_frozen_features(encoder, eval_loader, splits, to_images), splits, cfg, protocol, device)
    return _Outcome(probe.history, {"selected": probe.selected}, probe.validate_mauc, probe.val_logits, probe_test)


def run_finetune(
    cfg: FinetuneConfig,
    encoder_dir: str | Path,
    protocol: Protocol | str,
    prepared: str | Path,
    out_json: str | Path,
    predictions_out: str | Path | None = None,
    plot_out: str | Path | None = None,
    min_train_positives: int = 0,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """Train the head (``fc``, ``linear``) or everything (``finetune``), evaluate on test, write the outputs.

    The head has one output per label of the prepared folder (``read_label_names``: the 14 CheXpert labels on
    MIMIC-CXR). ``min_train_positives`` > 0 (small label fractions): a label with fewer positive training
    studies is reported as not estimable, apart from mAUC (``metrics.evaluate_level``). ``stats``: the
    bootstrap unit and the label rule of the intervals and means.

    Writes ``out_json`` (metrics), ``<out_json stem>.config.json`` (resolved config), ``predictions_out``
    (test predictions .npz; default ``<out_json dir>/../predictions/<stem>.npz``) and ``plot_out`` (training
    curves PNG; skipped when None). Returns the metrics dict.
    """
    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.encoder import load_encoder

    t0 = time.time()
    protocol = Protocol(protocol)
    prepared, out_json = Path(prepared), Path(out_json)
    if predictions_out is None:
        predictions_out = out_json.parent.parent / "predictions" / f"{out_json.stem}.npz"
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    splits = labelled_splits(prepared, cfg.views, cfg.uncertain, cfg.blank, cfg.label_fraction, cfg.seed)
    encoder, enc_cfg = load_encoder(encoder_dir)
    variant = str(enc_cfg.get("variant") or Path(encoder_dir).name)
    encoder.to(device)
    to_images = _Inputs(enc_cfg, device)
    cache = ImageCache(prepared / "images.h5")
    ds = {k: ImageRows(cache, v) for k, v in splits.items()}

    def eval_loader(split: str) -> DataLoader:
        return make_loader(ds[split], cfg.eval_batch_size, False, cfg.seed, cfg.num_workers)

    out = _train(protocol, encoder, ds, splits, cfg, to_images, eval_loader, device)

    def preds(split: str, logits: np.ndarray) -> Predictions:
        d = splits[split]
        return Predictions(d.image_ids, d.study_ids, sigmoid(logits), d.targets, d.mask, d.labels, d.subject_ids)

    test_pred = preds("test", out.test_logits)
    # numbers only: strings (names, paths, provenance) go to <stem>.config.json, so `dvc metrics show` fits a screen
    result: dict[str, Any] = {
        **out.selection,  # probes: the grid point and step kept; finetune: the epoch (0 = LP-FT kept the fc probe)
        "validate_mauc": out.validate_mauc,
        # LP-FT: its starting point, the `fc` protocol's model, with its test mAUC beside (not used to select)
        **({"fc_probe": {"selected": out.probe.selected, "validate_mauc": out.probe.validate_mauc,
                         "test_mauc": _mauc(preds("test", out.probe_test), cfg.select_level)}}
           if out.probe is not None and out.probe_test is not None else {}),
        "label_fraction": cfg.label_fraction,
        **split_counts(splits),
        **evaluate(test_pred, preds("validate", out.val_logits), cfg.n_bootstrap, cfg.seed, stats.min_test_positives,
                   *((splits["train"].positives(), min_train_positives) if min_train_positives > 0 else (None, 0)),
                   unit=stats.bootstrap_unit),
        "history": out.history,
    }
    for block in (result["image"], result["study"]):
        block.pop("level", None)  # the key says it
        block.pop("bootstrap_unit", None)  # a string: in the config beside
    result = jsonable(result)
    write_json_atomic(out_json, result)
    save_config(
        {
            "finetune": to_dict(cfg),
            "stats": to_dict(stats),
            "encoder_variant": variant,
            "dataset": _dataset_info(prepared),
            "protocol": protocol.value,
            "encoder_dir": str(encoder_dir),
            "encoder": {k: enc_cfg.get(k) for k in ("arch", "kwargs", "pixel_mean", "pixel_std", "variant")},
            "encoder_seed": (enc_cfg.get("params") or {}).get("seed"),  # its pretraining (or init) seed
            "prepared": str(prepared),
        },
        out_json.with_name(f"{out_json.stem}.config.json"),
    )
    save_predictions(test_pred, predictions_out, encoder=variant, protocol=protocol.value)
    if plot_out is not None:
        from cxrpipe.evaluate.stats.plots import plot_history

        plot_history(out.history, plot_out, out.selection, title=f"{variant}-{protocol.value}")
    s = result[cfg.select_level.value]
    log.info(
        "%s-%s: test mAUC (%s) %s %s, accuracy %s (all-negative %s); %.1f s",
        variant, protocol.value, cfg.select_level.value, s["mauc"], s["mauc_ci95"], s["accuracy"],
        s["all_negative_accuracy"], time.time() - t0,
    )
    return result


def _dataset_info(prepared: Path) -> dict[str, Any]:
    """Provenance from prepare's report: compare says "different dataset" beside the published numbers."""
    path = prepared / "prepare_report.json"
    if not path.exists():
        return {"source": None, "demo": None, "root": None}
    report = json.loads(path.read_text())
    return {k: report.get(k) for k in ("source", "demo", "root")}
