"""Stage two's training loop: MAE (+ text) pretraining, checkpoint/resume, export, alignment check.

``run_pretrain`` trains :class:`~cxrpipe.pretrain.model.PretrainModel` on the train split's image-report
pairs and writes, in ``out_dir``: ``encoder.safetensors`` + ``config.json`` (a plain timm ViT, see
:mod:`cxrpipe.encoder`) and, while running, ``checkpoint.pt`` (full state, written atomically, loaded with
``weights_only=True``; removed at the end unless ``keep_checkpoint``). Beside: per-step and per-epoch loss
CSVs (DVC plots) and a metrics JSON with the validate-split retrieval check.

Devices and processes come from accelerate: ``accelerate launch -m cxrpipe pretrain ...`` runs data-parallel,
``batch_size`` is the GLOBAL batch (each of W processes takes 1/W of it), and a W-process run sees the same
batches, masks and augmentations as a 1-process run. bf16 autocast is used on CUDA only.

Resume is exact: the data order, the augmentations and the masks are pure functions of (seed, epoch,
index/step) (see :mod:`cxrpipe.pretrain.data`), and the checkpoint holds model, optimizer, scheduler, step,
the running epoch sums and the RNG states.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrpipe import provenance
from cxrpipe.config import to_dict
from cxrpipe.encoder import normalize
from cxrpipe.io import write_json_atomic
from cxrpipe.pretrain.batch_augment import augment_batch
from cxrpipe.pretrain.data import EpochBatches, PairDataset, PretrainDataConfig, collate, find_pairs, sample_seed
from cxrpipe.pretrain.data import batch_duplicate_pairs, derange_texts
from cxrpipe.pretrain.losses import LossConfig
from cxrpipe.pretrain.mae import MAEConfig, load_mae_export
from cxrpipe.pretrain.model import PretrainModel
from cxrpipe.pretrain.pooling import PoolConfig

log = logging.getLogger(__name__)

# mae: images only | multimodal: + the contrastive loss against the report | shuffled: the same against
# ANOTHER study's report (a fixed derangement: the control for the report's content) | continued: the
# two-step flow's image-only continuation of `mae` (as many steps as multimodal's continuation)
VARIANTS = ("mae", "multimodal", "shuffled", "continued")
TEXT_FREE = ("mae", "continued")  # variants whose text weight is forced to 0
CHECKPOINT = "checkpoint.pt"
STEP_LOG = "loss.csv"
EPOCH_LOG = "epochs.csv"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Params ``pretrain.optim``: AdamW, linear warmup then cosine decay (per step)."""

    lr: float = 5.0e-4  # peak learning rate (absolute; MAE's rule: 1.5e-4 x batch_size / 256)
    min_lr: float = 1.0e-5  # end of the cosine
    warmup_epochs: float = 3.0  # linear warmup length
    weight_decay: float = 0.05  # not on biases, norms, tokens, the temperature
    betas: tuple[float, float] = (0.9, 0.95)  # MAE's
    clip_grad: float = 1.0  # max gradient norm (0 = no clipping)
    # total: clip the summed gradient (then text changes how much of the MAE gradient survives a clip) |
    # separate: clip the MAE term's and the contrastive term's gradients each on its own, then add them,
    # so the MAE update is the same with and without text
    clip_mode: Literal["total", "separate"] = "total"


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """Params ``pretrain.align``: step 2 of the two-step flow (``pretrain.flow: two_step``): ``multimodal``,
    ``shuffled`` and ``continued`` start from the exported ``mae`` (encoder and MAE decoder) and train this
    many more epochs; the alignment heads start fresh."""

    epochs: int = 10
    lr: float = 5.0e-4  # peak lr of the step (heads, decoder)
    encoder_lr_scale: float = 1.0  # the image encoder's lr = lr x this (how far the tower may move; 0 freezes it)
    warmup_epochs: float = 1.0


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Params section ``pretrain``."""

    seed: int = 0  # one seed for init, data order, augmentation and masks: the variants share it
    epochs: int = 30
    batch_size: int = 32  # global batch over all processes (the contrastive negatives: batch_size - 1)
    mixed_precision: Literal["bf16", "no"] = "bf16"  # bf16 autocast on CUDA; CPU always runs fp32
    checkpoint_every: int = 500  # steps between checkpoints (also at every epoch end)
    keep_checkpoint: bool = False  # keep checkpoint.pt after a finished run (ViT-B: ~1 GB with Adam state)
    eval_batch_size: int = 128  # retrieval check batch
    # joint: every variant from scratch (or model.init) for `epochs` | two_step: `mae` for `epochs`, then
    # multimodal / shuffled / continued continue it for align.epochs (the seed report's flow)
    flow: Literal["joint", "two_step"] = "joint"
    model: MAEConfig = MAEConfig()
    pool: PoolConfig = PoolConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: PretrainDataConfig = PretrainDataConfig()
    align: AlignConfig = AlignConfig()


def continues_mae(cfg: PretrainConfig, variant: str) -> bool:
    """Whether ``variant`` starts from the exported ``mae`` (the two-step flow's step 2)."""
    return cfg.flow == "two_step" and variant != "mae"


def for_variant(cfg: PretrainConfig, variant: str) -> PretrainConfig:
    """The config a variant trains with: ``mae`` / ``continued`` force ``loss.weight_text = 0`` (and the MAE
    term on); ``multimodal`` / ``shuffled`` are the config as given. In the two-step flow every variant but
    ``mae`` takes ``align``'s epochs, lr and warmup."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "continued" and cfg.flow != "two_step":
        raise ValueError("variant 'continued' exists in the two-step flow only (pretrain.flow: two_step)")
    if variant in TEXT_FREE:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, weight_text=0.0, weight_mae=1.0))
    if continues_mae(cfg, variant):
        optim = dataclasses.replace(cfg.optim, lr=cfg.align.lr, warmup_epochs=cfg.align.warmup_epochs,
                                    min_lr=min(cfg.optim.min_lr, cfg.align.lr))
        cfg = dataclasses.replace(cfg, epochs=cfg.align.epochs, optim=optim)
    return cfg


def trains_sentences(cfg: PretrainConfig, variant: str) -> bool:
    """Whether ``variant`` trains the sentence term: ``loss.sentence_weight`` > 0 and a text term to share it
    (never ``mae`` / ``continued``, whose text weight :func:`for_variant` forces to 0). The one rule the stage
    (it builds the sentence source only then) and the run (its sampler) both follow."""
    return cfg.loss.sentence_weight > 0 and for_variant(cfg, variant).loss.weight_text > 0


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warmup, cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------ checkpoint


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Plain dict of tensors and primitives, temp file + os.replace (a crash leaves the previous one)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _config_differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _config_differences(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        return out
    return [] if a == b else [f"{where}: checkpoint={a!r} now={b!r}"]


# ------------------------------------------------------------------------------------------------ logs


class CsvLog:
    """Rows appended as they come (rank 0); on resume the rows past the checkpoint are dropped first."""

    def __init__(self, path: Path, key: str, keep_upto: int | None):
        self.path, self.key = path, key
        self.fields: list[str] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if keep_upto is not None and path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if int(r[key]) <= keep_upto]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            if self.fields:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
        os.replace(tmp, path)

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})




# ------------------------------------------------------------------------------------------------- run


@dataclasses.dataclass
class TrainRun:
    """What one training run carries from epoch to epoch (the resume state is ``step``, ``sums``, ``count``)."""

    cfg: PretrainConfig
    variant: str
    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_ds: PairDataset
    per_epoch: int  # global batches per epoch
    ckpt_path: Path
    config_dict: dict[str, Any]  # what a checkpoint must match to be continued
    step: int = 0  # optimizer steps done
    sums: dict[str, float] = dataclasses.field(default_factory=dict)  # running loss sums of the epoch
    count: int = 0  # steps in ``sums``
    means: dict[str, float] = dataclasses.field(default_factory=dict)  # the last finished epoch's means
    clipped: dict[str, int] = dataclasses.field(default_factory=dict)  # steps whose gradient was clipped, per term
    step_log: CsvLog | None = None  # rank 0 only
    epoch_log: CsvLog | None = None

    @property
    def total(self) -> int:
        return self.cfg.epochs * self.per_epoch

    def checkpoint(self) -> None:
        """Full state to ``checkpoint.pt`` (rank 0, atomically); every process waits for it."""
        if self.accelerator.is_main_process:
            save_checkpoint(self.ckpt_path, {
                "model": self.accelerator.unwrap_model(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "epoch_sums": self.sums,
                "epoch_count": self.count,
                "clipped": self.clipped,
                "rng": _rng_state(),
                "config": self.config_dict,
            })
        self.accelerator.wait_for_everyone()


def device_batch(run: TrainRun, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
    """The batch's images on the device, ready for the model. ``augment_on: device``: the dataset sent them
    in [0, 1] unaugmented; each sample gets the very draws the loader would have used (its seed from
    ``(seed, epoch, index)``), applied in one ``grid_sample`` over the batch, then normalised."""
    images = batch["images"].to(run.accelerator.device, non_blocking=True)
    data = run.cfg.data
    if data.augment_on == "device":
        seeds = [sample_seed(run.cfg.seed, 2, epoch, int(i)) for i in batch["index"]]
        images = normalize(augment_batch(images, data.augment, seeds), data.pixel_mean, data.pixel_std)
    return images


def train_one_epoch(run: TrainRun, epoch: int, max_steps: int | None = None) -> bool:
    """One epoch (or its rest, when resumed inside it) of ``run``; True when stopped early at ``max_steps``.

    Checkpoints every ``checkpoint_every`` steps and at the epoch's end; logs per step and per epoch.
    """
    from cxrpipe.progress import progress

    cfg, acc, model = run.cfg, run.accelerator, run.model
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    num_patches = (cfg.model.img_size // cfg.model.patch_size) ** 2
    local = cfg.batch_size // world
    sampler = EpochBatches(len(run.train_ds), cfg.batch_size, cfg.seed, epoch, rank, world,
                           start=run.step - epoch * run.per_epoch)
    loader = DataLoader(run.train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda")
    bar = progress(loader, desc=f"{run.variant} epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   enabled=acc.is_main_process, leave=False)
    model.train()
    second_mask = not cfg.loss.visible_tokens and cfg.loss.contrastive_mask_ratio > 0
    separate = cfg.optim.clip_mode == "separate" and cfg.optim.clip_grad > 0
    for batch in bar:
        gen = torch.Generator().manual_seed(sample_seed(cfg.seed, 1, run.step))
        noise = torch.rand(cfg.batch_size, num_patches, generator=gen)[rank * local : (rank + 1) * local]
        noise2 = torch.rand(cfg.batch_size, num_patches, generator=gen)[rank * local : (rank + 1) * local] if second_mask else None
        # separate clipping syncs the gradients by hand: DDP must skip its own sync from the forward on
        with acc.no_sync(model) if separate else contextlib.nullcontext():
            losses = model(
                device_batch(run, batch, epoch),
                batch["text"].to(device),
                batch["text_mask"].to(device),
                noise=noise.to(device),
                ids=run.train_ds.pair_ids(batch["index"]).to(device),  # [local, 2]: duplicates are positives
                noise2=None if noise2 is None else noise2.to(device),
                **sentence_inputs(run, batch, device),
            )
            grad_norms = backward_and_clip(run, losses)
        lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1

        names = sorted(losses)
        values = acc.reduce(torch.stack([losses[k].detach().float() for k in names]), "mean")
        row = dict(zip(names, values.tolist()))
        for k, v in row.items():
            run.sums[k] = run.sums.get(k, 0.0) + v
        run.count += 1
        if run.step_log is not None:
            run.step_log.write({"step": run.step, "epoch": epoch + 1, "lr": lr, **grad_norms, **row})
            bar.set_postfix(loss=f"{row['loss']:.4f}", mae=f"{row['mae_loss']:.4f}", con=f"{row['contrastive_loss']:.4f}")
        if run.step % run.per_epoch == 0:  # end of the epoch: its means, then a checkpoint
            _end_epoch(run, epoch)
        stop = max_steps is not None and run.step >= max_steps
        if stop or run.step % run.per_epoch == 0 or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0):
            run.checkpoint()
        if stop:
            return True
    return False


def sentence_inputs(run: TrainRun, batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    """The drawn sentences of the batch for the model (none when the items carry no sentence)."""
    if "sentence" not in batch:
        return {}
    return {"sentence": batch["sentence"].to(device), "sentence_mask": batch["sentence_mask"].to(device),
            "sentence_ids": run.train_ds.sentence_ids(batch["index"], batch["sentence_row"]).to(device)}


def backward_and_clip(run: TrainRun, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Gradients of the step's loss into ``.grad``, clipped as ``optim.clip_mode`` says; returns the norms
    before clipping (``grad_norm`` or ``grad_norm_mae`` / ``grad_norm_contrastive``) and counts the clipped
    steps in ``run.clipped``.

    ``separate``: each weighted term's gradient is computed on its own (the caller runs the forward and this
    under ``no_sync``), averaged over
    processes by hand (so each norm is the global one, as one process computes it), clipped to
    ``clip_grad``, and the clipped terms are added. The MAE term's update then does not depend on whether a
    text term exists. A zero-weight term is skipped.
    """
    cfg, acc, model = run.cfg.optim, run.accelerator, run.model
    if cfg.clip_mode == "total" or cfg.clip_grad <= 0:
        acc.backward(losses["loss"])
        norm = torch.tensor(0.0)
        if cfg.clip_grad > 0:
            norm = acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            run.clipped["total"] = run.clipped.get("total", 0) + int(float(norm) > cfg.clip_grad)
        return {"grad_norm": float(norm)}
    loss_cfg = run.cfg.loss
    terms = {name: w * losses[key] for name, key, w in (
        ("mae", "mae_loss", loss_cfg.weight_mae), ("contrastive", "contrastive_loss", loss_cfg.weight_text)) if w}
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = {}
    for k, (name, term) in enumerate(terms.items()):  # the caller runs forward and this under no_sync
        acc.backward(term, retain_graph=k < len(terms) - 1)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        for p in params:
            p.grad = None
        flat = acc.reduce(flat, "mean")  # the global gradient of this term
        norm = float(flat.norm())
        norms[f"grad_norm_{name}"] = norm
        scale = min(1.0, cfg.clip_grad / (norm + 1e-6))
        run.clipped[name] = run.clipped.get(name, 0) + int(norm > cfg.clip_grad)
        for t, g in zip(total, torch.split(flat, [p.numel() for p in params])):
            t.add_(g.view_as(t), alpha=scale)
    for p, t in zip(params, total):
        p.grad = t
    return norms


def _end_epoch(run: TrainRun, epoch: int) -> None:
    run.means = {k: v / max(1, run.count) for k, v in run.sums.items()}
    if run.epoch_log is not None:
        run.epoch_log.write({"epoch": epoch + 1, "step": run.step, **run.means})
    log.info("epoch %d/%d: %s", epoch + 1, run.cfg.epochs, ", ".join(f"{k} {v:.4f}" for k, v in sorted(run.means.items())))
    run.sums, run.count = {}, 0


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig, total: int, warmup: int,
               encoder_lr_scale: float = 1.0) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no decay on biases, norms, tokens, the temperature) + per-step warmup/cosine schedule; the
    image encoder's groups at ``lr x encoder_lr_scale`` (0: the encoder is frozen)."""
    from timm.optim import param_groups_weight_decay

    if encoder_lr_scale == 0:
        model.mae.encoder.requires_grad_(False)
    no_decay = ["mae.encoder.cls_token", "mae.mask_token", "contrastive.logit_scale"]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in param_groups_weight_decay(model, cfg.optim.weight_decay, no_weight_decay_list=no_decay):
        enc = [p for p in group["params"] if names[id(p)].startswith("mae.encoder.")]
        rest = [p for p in group["params"] if not names[id(p)].startswith("mae.encoder.")]
        groups += [g for g in (dict(group, params=rest), dict(group, params=enc, lr=cfg.optim.lr * encoder_lr_scale))
                   if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas)
    min_ratio = cfg.optim.min_lr / cfg.optim.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, min_ratio))
    return optimizer, scheduler


def _inputs_key(prepared: Path, train_pairs: list, text: Any) -> dict[str, Any]:
    """What a checkpoint must match besides the settings: the inputs (a rebuilt cache = start over) and the
    code (a checkpoint made by other training code, even a finished one kept with keep_checkpoint, is not
    continued or re-exported: cxrpipe.provenance)."""
    import h5py

    from cxrpipe.io import SHA_PREFIX

    with h5py.File(prepared / "images.h5", "r") as f:  # the content hash prepare recorded (not the mtime: a
        images = str(f.attrs.get(SHA_PREFIX + "images", ""))  # byte-identical rebuild keeps the checkpoint)
    return {
        "train_pairs": hashlib.sha256(repr(train_pairs).encode()).hexdigest()[:16],
        "text_cache": dataclasses.asdict(text.fingerprint),
        "images_h5": images,
        "code": provenance.code_key("pretrain"),
    }


def _restore(run: TrainRun, resume: bool) -> None:
    """Load ``checkpoint.pt`` into ``run`` when ``resume`` and it was written with these very settings."""
    ckpt = load_checkpoint(run.ckpt_path) if resume and run.ckpt_path.exists() else None
    if ckpt is not None and (diff := _config_differences(ckpt["config"], run.config_dict)):
        # params changed since the crash (e.g. `dvc repro` after an edit): nothing to continue, start over
        log.warning("%s was written with other settings (%s); starting from scratch", run.ckpt_path, "; ".join(diff))
        ckpt = None
    if ckpt is not None:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.step, run.sums, run.count = ckpt["step"], dict(ckpt["epoch_sums"]), ckpt["epoch_count"]
        run.clipped = dict(ckpt.get("clipped", {}))
        _set_rng_state(ckpt["rng"])
        log.info("resuming %s from step %d of %d", run.variant, run.step, run.total)
    elif resume:
        log.info("no checkpoint of these settings at %s; starting from scratch", run.ckpt_path)


def run_pretrain(
    cfg: PretrainConfig,
    variant: str,
    prepared: str | Path,
    text_cache: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    *,
    expect=None,
    metrics_path: str | Path | None = None,
    plots_dir: str | Path | None = None,
    max_steps: int | None = None,
    init_from: str | Path | None = None,
    sentences: Any = None,
) -> dict[str, Any] | None:
    """Pretrain one variant; returns the metrics (also written to ``metrics_path``).

    ``expect``: the text cache :class:`~cxrpipe.text.cache.Fingerprint` the params imply (None = unchecked).
    ``resume``: continue exactly from ``out_dir/checkpoint.pt`` when there is one written with these very
    settings (variant and resolved config); otherwise (none, or other settings: warned) start from scratch.
    ``max_steps``: stop after that many optimizer steps with a checkpoint and return None (a crash stand-in
    for tests and smoke runs; ``resume=True`` later continues as if nothing happened).
    ``init_from``: the exported ``mae`` folder the two-step flow's step 2 starts from (encoder and decoder).
    ``sentences``: the :class:`~cxrpipe.text.sentences.SentenceSource` the ``loss.sentence_weight`` term reads.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from cxrpipe.text.cache import TextCache

    step2 = continues_mae(cfg, variant)
    cfg = for_variant(cfg, variant)
    prepared, out_dir = Path(prepared), Path(out_dir)
    if step2 and init_from is None:
        raise ValueError(f"pretrain.flow two_step: {variant} continues the exported mae; pass its folder "
                         "(--init data/models/mae, made by `dvc repro pretrain@mae`)")
    plots_dir = Path(plots_dir) if plots_dir else out_dir / "plots"
    metrics_path = Path(metrics_path) if metrics_path else out_dir / "metrics.json"
    if cfg.model.img_size % cfg.model.patch_size:
        raise ValueError(f"pretrain.model.img_size {cfg.model.img_size} is not a multiple of patch_size {cfg.model.patch_size}")

    cuda = torch.cuda.is_available()
    # cpu=True without CUDA: processes started by `accelerate launch --multi_gpu` / torchrun on a CPU machine
    # then join a gloo group (otherwise each would train alone on everything)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision if cuda else "no", cpu=not cuda)
    set_seed(cfg.seed)

    text = TextCache(text_cache, expect=expect)
    run, train_pairs, val_ds, shuffle_report = _build_run(cfg, variant, accelerator, prepared, text, out_dir,
                                                          sentences, init_from if step2 else None)
    per_epoch = run.per_epoch
    _restore(run, resume)
    run.model, run.optimizer = accelerator.prepare(run.model, run.optimizer)  # scheduler stepped by hand: once per step

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        resumed = run.step > 0
        run.step_log = CsvLog(plots_dir / STEP_LOG, "step", keep_upto=run.step if resumed else None)
        run.epoch_log = CsvLog(plots_dir / EPOCH_LOG, "epoch", keep_upto=run.step // per_epoch if resumed else None)
    log.info(
        "pretrain %s: %d train pairs, %d validate; %d epochs x %d steps of %d (%d process(es), %s; augment on %s)",
        variant, len(train_pairs), len(val_ds.pairs), cfg.epochs, per_epoch, cfg.batch_size,
        accelerator.num_processes, accelerator.device, cfg.data.augment_on,
    )
    t0, start_step = time.time(), run.step
    for epoch in range(run.step // per_epoch, cfg.epochs):
        if train_one_epoch(run, epoch, max_steps):
            log.info("stopped at step %d (max_steps); continue with --resume", run.step)
            return None
    seconds = time.time() - t0

    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        metrics = _export_and_check(run, text, prepared, out_dir, train_pairs, val_ds)
        metrics["clipped_share"] = {k: v / max(1, run.step) for k, v in sorted(run.clipped.items())}
        if shuffle_report is not None:
            metrics["shuffled"] = shuffle_report
        metrics.update({
            "train_seconds": round(seconds, 1),
            "images_per_second": round((run.step - start_step) * cfg.batch_size / max(seconds, 1e-9), 1),
        })
        log.info("%s: %d steps on %s x %d in %.0f s", variant, run.step, accelerator.device, accelerator.num_processes, seconds)
        write_json_atomic(metrics_path, metrics, sort_keys=True)
        if not cfg.keep_checkpoint:
            run.ckpt_path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return metrics


def _build_run(cfg: PretrainConfig, variant: str, accelerator: Any, prepared: Path, text: Any, out_dir: Path,
               sentences: Any, init_from: Path | None) -> tuple[TrainRun, list, PairDataset, dict | None]:
    """The run before its first step: the pairs (``shuffled``: deranged), datasets, model (``init_from``: the
    exported mae the two-step flow continues), optimizer and schedule; (run, train pairs, validate dataset,
    the derangement's report or None)."""
    train_pairs = find_pairs(prepared, text, "train", cfg.data.views)
    val_pairs = find_pairs(prepared, text, "validate", cfg.data.views)
    shuffle_report = None
    if variant == "shuffled":  # each study's images get another study's report (validate keeps the truth)
        train_pairs, shuffle_report = derange_texts(train_pairs, cfg.seed)
    if len(train_pairs) < cfg.batch_size:
        raise ValueError(f"{len(train_pairs)} train image-report pairs, fewer than pretrain.batch_size {cfg.batch_size}")
    # augment_on device: the loader sends [0, 1] images, train_one_epoch augments the batch on the device
    on_device = cfg.data.augment_on == "device"
    sampler = _sentence_sampler(cfg, variant, prepared, text, sentences)
    train_ds = PairDataset(prepared, text, train_pairs, cfg.data, cfg.model.img_size, augment=not on_device,
                           normalize_images=not on_device, sentences=sampler)
    val_ds = PairDataset(prepared, text, val_pairs, cfg.data, cfg.model.img_size, augment=False)
    per_epoch = len(train_pairs) // cfg.batch_size
    warmup = max(1, round(cfg.optim.warmup_epochs * per_epoch))
    model = PretrainModel(cfg.model, cfg.pool, cfg.loss, text.hidden_size)
    inputs = _inputs_key(prepared, train_pairs, text)
    if sampler is not None:
        inputs["sentence_cache"] = dataclasses.asdict(sampler.cache.fingerprint)
    if init_from is not None:
        inputs["init_from"] = load_mae_export(model.mae, Path(init_from))
    optimizer, scheduler = _optimizer(model, cfg, cfg.epochs * per_epoch, warmup,
                                      cfg.align.encoder_lr_scale if init_from is not None else 1.0)
    config_dict = {"variant": variant, **to_dict(cfg), "inputs": to_dict(inputs)}
    run = TrainRun(cfg, variant, accelerator, model, optimizer, scheduler, train_ds, per_epoch,
                   out_dir / CHECKPOINT, config_dict)
    return run, train_pairs, val_ds, shuffle_report


def _sentence_sampler(cfg: PretrainConfig, variant: str, prepared: Path, text: Any, source: Any) -> Any:
    """The sentence term's sampler, or None when the variant has no such term (:func:`trains_sentences`); a
    term without its cache, outside [0, 1] or with the cross pool is refused."""
    w = cfg.loss.sentence_weight
    if not 0 <= w <= 1:
        raise ValueError(f"pretrain.loss.sentence_weight must lie in [0, 1], got {w}")
    if not trains_sentences(cfg, variant):
        return None
    if cfg.pool.kind != "latent":
        raise ValueError("pretrain.loss.sentence_weight > 0 needs pretrain.pool.kind latent (one image embedding)")
    if source is None:
        raise ValueError("pretrain.loss.sentence_weight > 0 reads the sentence cache: `dvc repro` makes it with "
                         "'pipeline.sentences: [sentences]' (docs/alignment.md); a run by hand passes --sentence-cache")
    from cxrpipe.text.sentences import SentenceSampler

    return SentenceSampler(prepared, source.path, text, source.sections, source.expect, source.table)


def _export_and_check(run: TrainRun, text: Any, prepared: Path, out_dir: Path, train_pairs: list,
                      val_ds: PairDataset) -> dict[str, Any]:
    """Rank 0 after the last step: the encoder (a plain timm ViT) and the heads exported, the retrieval
    check on validate and on as many train pairs; the metrics (numbers only: the variant and config are in
    ``<out>/config.json``)."""
    from cxrpipe.encoder import save_encoder
    from cxrpipe.model_card import write_model_card
    from cxrpipe.pretrain.heads import save_heads
    from cxrpipe.pretrain.mae import save_decoder
    from cxrpipe.pretrain.retrieval import evaluate_retrieval

    cfg, acc = run.cfg, run.accelerator
    unwrapped = acc.unwrap_model(run.model)
    save_encoder(unwrapped.encoder, out_dir, {
        "arch": cfg.model.arch,
        "kwargs": cfg.model.timm_kwargs(),
        "pixel_mean": cfg.data.pixel_mean,
        "pixel_std": cfg.data.pixel_std,
        "variant": run.variant,
        "params": to_dict(cfg),
    })
    save_decoder(unwrapped.mae, out_dir)  # what the two-step flow's step 2 continues from
    # the text side and the image pool beside the encoder, for zero-shot, retrieval and attention maps
    save_heads(unwrapped, out_dir, {
        "pool": cfg.pool, "loss": cfg.loss, "text_hidden": text.hidden_size, "embed_dim": cfg.model.embed_dim,
        "max_text_tokens": cfg.data.max_text_tokens, "variant": run.variant,
    })
    retrieval = {}
    if len(val_ds):
        retrieval = evaluate_retrieval(unwrapped, val_ds, acc.device, cfg.eval_batch_size, autocast=acc.autocast)
    else:
        log.warning("no validate image-report pairs: the retrieval check is skipped")
    # the same check on as many train pairs (evenly spaced, unaugmented): fit vs generalisation
    n_val = max(1, len(val_ds))
    probe = train_pairs[:: max(1, len(train_pairs) // n_val)][:n_val]
    probe_ds = PairDataset(prepared, text, probe, cfg.data, cfg.model.img_size, augment=False)
    retrieval_train = evaluate_retrieval(
        unwrapped, probe_ds, acc.device, cfg.eval_batch_size, autocast=acc.autocast, split="train probe"
    )
    write_model_card(out_dir, prepared, {"retrieval": retrieval}, text.fingerprint.model)  # README.md beside it
    return {
        "weight_text": cfg.loss.weight_text,
        "steps": run.step,
        "epochs": cfg.epochs,
        "train_pairs": len(train_pairs),
        "final_epoch": {k: float(v) for k, v in run.means.items()},
        "retrieval": retrieval,
        "retrieval_train": retrieval_train,
        # off-diagonal positive pairs per global batch (same study / identical text of other studies)
        "duplicate_pairs": batch_duplicate_pairs(train_pairs, cfg.batch_size, cfg.seed, cfg.epochs),
        "processes": acc.num_processes,
    }
