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
from cxrpipe.io import write_json_atomic
from cxrpipe.pretrain.data import EpochBatches, PairDataset, PretrainDataConfig, collate, find_pairs, sample_seed
from cxrpipe.pretrain.data import batch_duplicate_pairs
from cxrpipe.pretrain.losses import LossConfig
from cxrpipe.pretrain.mae import MAEConfig
from cxrpipe.pretrain.model import PretrainModel
from cxrpipe.pretrain.pooling import PoolConfig

log = logging.getLogger(__name__)

VARIANTS = ("mae", "multimodal")
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
    clip_grad: float = 1.0  # max global gradient norm (0 = no clipping)


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
    model: MAEConfig = MAEConfig()
    pool: PoolConfig = PoolConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: PretrainDataConfig = PretrainDataConfig()


def for_variant(cfg: PretrainConfig, variant: str) -> PretrainConfig:
    """``mae`` = the same config with ``loss.weight_text = 0``; ``multimodal`` = the config as given."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "mae":
        return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, weight_text=0.0))
    return cfg


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
) -> dict[str, Any] | None:
    """Pretrain one variant; returns the metrics (also written to ``metrics_path``).

    ``expect``: the text cache :class:`~cxrpipe.text.cache.Fingerprint` the params imply (None = unchecked).
    ``resume``: continue exactly from ``out_dir/checkpoint.pt`` when there is one written with these very
    settings (variant and resolved config); otherwise (none, or other settings: warned) start from scratch.
    ``max_steps``: stop after that many optimizer steps with a checkpoint and return None (a crash stand-in
    for tests and smoke runs; ``resume=True`` later continues as if nothing happened).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from timm.optim import param_groups_weight_decay
    from tqdm.auto import tqdm

    from cxrpipe.encoder import save_encoder
    from cxrpipe.pretrain.heads import save_heads
    from cxrpipe.pretrain.retrieval import evaluate_retrieval
    from cxrpipe.text.cache import TextCache

    cfg = for_variant(cfg, variant)
    prepared, out_dir = Path(prepared), Path(out_dir)
    plots_dir = Path(plots_dir) if plots_dir else out_dir / "plots"
    metrics_path = Path(metrics_path) if metrics_path else out_dir / "metrics.json"
    if cfg.model.img_size % cfg.model.patch_size:
        raise ValueError(f"pretrain.model.img_size {cfg.model.img_size} is not a multiple of patch_size {cfg.model.patch_size}")

    cuda = torch.cuda.is_available()
    # cpu=True without CUDA: processes started by `accelerate launch --multi_gpu` / torchrun on a CPU machine
    # then join a gloo group (otherwise each would train alone on everything)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision if cuda else "no", cpu=not cuda)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)

    text = TextCache(text_cache, expect=expect)
    train_pairs = find_pairs(prepared, text, "train", cfg.data.views)
    val_pairs = find_pairs(prepared, text, "validate", cfg.data.views)
    if len(train_pairs) < cfg.batch_size:
        raise ValueError(f"{len(train_pairs)} train image-report pairs, fewer than pretrain.batch_size {cfg.batch_size}")
    train_ds = PairDataset(prepared, text, train_pairs, cfg.data, cfg.model.img_size, augment=True)
    val_ds = PairDataset(prepared, text, val_pairs, cfg.data, cfg.model.img_size, augment=False)
    per_epoch = len(train_pairs) // cfg.batch_size
    total = cfg.epochs * per_epoch
    warmup = max(1, round(cfg.optim.warmup_epochs * per_epoch))

    model = PretrainModel(cfg.model, cfg.pool, cfg.loss, text.hidden_size)
    no_decay = ["mae.encoder.cls_token", "mae.mask_token", "contrastive.logit_scale"]
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, cfg.optim.weight_decay, no_weight_decay_list=no_decay),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
    )
    min_ratio = cfg.optim.min_lr / cfg.optim.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, min_ratio))

    ckpt_path = out_dir / CHECKPOINT
    # what a checkpoint must match to be continued: the settings AND the inputs (a rebuilt cache = start over)
    stat = (prepared / "images.h5").stat()
    inputs = {
        "train_pairs": hashlib.sha256(repr(train_pairs).encode()).hexdigest()[:16],
        "text_cache": dataclasses.asdict(text.fingerprint),
        "images_h5": [stat.st_size, stat.st_mtime_ns],
        # and the code: a checkpoint made by other training code (even a finished one kept with
        # keep_checkpoint) is not continued or re-exported (cxrpipe.provenance)
        "code": provenance.code_key("pretrain"),
    }
    config_dict = {"variant": variant, **to_dict(cfg), "inputs": to_dict(inputs)}
    step, sums, count = 0, {}, 0
    means: dict[str, float] = {}
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ckpt is not None and (diff := _config_differences(ckpt["config"], config_dict)):
        # params changed since the crash (e.g. `dvc repro` after an edit): nothing to continue, start over
        log.warning("%s was written with other settings (%s); starting from scratch", ckpt_path, "; ".join(diff))
        ckpt = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, sums, count = ckpt["step"], dict(ckpt["epoch_sums"]), ckpt["epoch_count"]
        _set_rng_state(ckpt["rng"])
        log.info("resuming %s from step %d of %d", variant, step, total)
    elif resume:
        log.info("no checkpoint of these settings at %s; starting from scratch", ckpt_path)
    model, optimizer = accelerator.prepare(model, optimizer)  # scheduler stepped by hand: once per step
    device = accelerator.device

    step_log = epoch_log = None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        resumed = step > 0
        step_log = CsvLog(plots_dir / STEP_LOG, "step", keep_upto=step if resumed else None)
        epoch_log = CsvLog(plots_dir / EPOCH_LOG, "epoch", keep_upto=step // per_epoch if resumed else None)

    def checkpoint() -> None:
        if main:
            save_checkpoint(
                ckpt_path,
                {
                    "model": accelerator.unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch_sums": sums,
                    "epoch_count": count,
                    "rng": _rng_state(),
                    "config": config_dict,
                },
            )
        accelerator.wait_for_everyone()

    log.info(
        "pretrain %s: %d train pairs, %d validate; %d epochs x %d steps of %d (%d process(es), %s)",
        variant, len(train_pairs), len(val_pairs), cfg.epochs, per_epoch, cfg.batch_size, world, device,
    )
    num_patches = (cfg.model.img_size // cfg.model.patch_size) ** 2
    local = cfg.batch_size // world
    model.train()
    t0 = time.time()
    start_step = step
    for epoch in range(step // per_epoch, cfg.epochs):
        sampler = EpochBatches(len(train_ds), cfg.batch_size, cfg.seed, epoch, rank, world, start=step - epoch * per_epoch)
        loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers)
        bar = tqdm(loader, desc=f"{variant} epoch {epoch + 1}/{cfg.epochs}", disable=not main, leave=False)
        for batch in bar:
            gen = torch.Generator().manual_seed(sample_seed(cfg.seed, 1, step))
            noise = torch.rand(cfg.batch_size, num_patches, generator=gen)[rank * local : (rank + 1) * local]
            losses = model(
                batch["images"].to(device),
                batch["text"].to(device),
                batch["text_mask"].to(device),
                noise=noise.to(device),
                ids=train_ds.pair_ids(batch["index"]).to(device),  # [local, 2]: duplicates are positives
            )
            accelerator.backward(losses["loss"])
            grad_norm = torch.tensor(0.0)
            if cfg.optim.clip_grad > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            names = sorted(losses)
            values = accelerator.reduce(torch.stack([losses[k].detach().float() for k in names]), "mean")
            row = dict(zip(names, values.tolist()))
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if main:
                step_log.write({"step": step, "epoch": epoch + 1, "lr": lr, "grad_norm": float(grad_norm), **row})
                bar.set_postfix(loss=f"{row['loss']:.4f}", mae=f"{row['mae_loss']:.4f}", con=f"{row['contrastive_loss']:.4f}")
            if step % per_epoch == 0:  # end of the epoch: its means, then a checkpoint
                means = {k: v / max(1, count) for k, v in sums.items()}
                if main:
                    epoch_log.write({"epoch": epoch + 1, "step": step, **means})
                log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())))
                sums, count = {}, 0
            stop = max_steps is not None and step >= max_steps
            if stop or step % per_epoch == 0 or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
            if stop:
                log.info("stopped at step %d (max_steps); continue with --resume", step)
                return None
    seconds = time.time() - t0

    metrics: dict[str, Any] = {}
    if main:
        unwrapped = accelerator.unwrap_model(model)
        save_encoder(
            unwrapped.encoder,
            out_dir,
            {
                "arch": cfg.model.arch,
                "kwargs": cfg.model.timm_kwargs(),
                "pixel_mean": cfg.data.pixel_mean,
                "pixel_std": cfg.data.pixel_std,
                "variant": variant,
                "params": to_dict(cfg),
            },
        )
        # the text side and the image pool beside the encoder, for zero-shot, retrieval and attention maps
        save_heads(unwrapped, out_dir, {
            "pool": cfg.pool, "loss": cfg.loss, "text_hidden": text.hidden_size, "embed_dim": cfg.model.embed_dim,
            "max_text_tokens": cfg.data.max_text_tokens, "variant": variant,
        })
        retrieval = {}
        if len(val_ds):
            retrieval = evaluate_retrieval(unwrapped, val_ds, device, cfg.eval_batch_size, autocast=accelerator.autocast)
        else:
            log.warning("no validate image-report pairs: the retrieval check is skipped")
        # the same check on as many train pairs (evenly spaced, unaugmented): fit vs generalisation
        probe = train_pairs[:: max(1, len(train_pairs) // max(1, len(val_pairs)))][: max(1, len(val_pairs))]
        probe_ds = PairDataset(prepared, text, probe, cfg.data, cfg.model.img_size, augment=False)
        retrieval_train = evaluate_retrieval(
            unwrapped, probe_ds, device, cfg.eval_batch_size, autocast=accelerator.autocast, split="train probe"
        )
        final = {k: float(v) for k, v in means.items()}
        # numbers only (`dvc metrics show`): the variant and config are in <out>/config.json
        metrics = {
            "weight_text": cfg.loss.weight_text,
            "steps": step,
            "epochs": cfg.epochs,
            "train_pairs": len(train_pairs),
            "final_epoch": final,
            "retrieval": retrieval,
            "retrieval_train": retrieval_train,
            # off-diagonal positive pairs per global batch (same study / identical text of other studies)
            "duplicate_pairs": batch_duplicate_pairs(train_pairs, cfg.batch_size, cfg.seed, cfg.epochs),
            "train_seconds": round(seconds, 1),
            "images_per_second": round((step - start_step) * cfg.batch_size / max(seconds, 1e-9), 1),
            "processes": world,
        }
        log.info("%s: %d steps on %s x %d in %.0f s", variant, step, device, world, seconds)
        write_json_atomic(metrics_path, metrics, sort_keys=True)
        if not cfg.keep_checkpoint:
            ckpt_path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return metrics
