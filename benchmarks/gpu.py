"""One GPU benchmark, one table: stage one at LLaMA-2-7b's exact shape and stage two at ViT-B/16.

    python benchmarks/gpu.py                # a CUDA machine; ~5 min on one H200; needs ~20 GB in --workdir
    python benchmarks/gpu.py --tiny         # shrunken shapes on CPU in seconds: checks the script (a test runs it)

Rows:
- stage one, LLaMA-2-7b shape, random weights (no download; benchmarks/gpu_llama7b.py writes the checkpoint and
  loads it through the stage's own loader), nf4 and bf16: tokens/s, peak GPU memory, padding share, and the
  hours one such GPU would take for all of MIMIC-CXR (227,835 reports at the texts' mean length).
- stage two, ViT-B/16 MAE (mask 0.75) + latent attention pooling + margin contrastive loss, bf16 autocast,
  4096-d text: images/s, step time, share of wall time spent waiting for the DataLoader (real
  cxrpipe.pretrain.data path over synthetic 224 px image and 4096-d linked text caches, --workers workers),
  peak memory; eager and torch.compile with the augmentation batched on the GPU (`augment_on: device`), and
  eager with it per sample in the loader workers (`augment_on: loader`).

Without CUDA (and without --tiny) it stops at once with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

MIMIC_STUDIES = 227_835
MIMIC_IMAGES = 377_110


def stage_two(workdir: Path, tiny: bool, compile_: bool, steps: int, batch: int, workers: int,
              device: "torch.device", augment_on: str = "device") -> dict:
    import torch
    from torch.utils.data import DataLoader

    from benchmarks.data_path import make_image_cache, make_text_cache
    from cxrpipe.config import build
    from cxrpipe.encoder import normalize
    from cxrpipe.gpu_bench import BENCH_VIT, PREFETCH_FACTOR, warmup_steps
    from cxrpipe.pretrain.batch_augment import augment_batch
    from cxrpipe.pretrain.data import AugmentConfig, EpochBatches, Pair, PairDataset, PretrainDataConfig, collate
    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.train import PretrainConfig
    from cxrpipe.text.cache import TextCache

    img, hidden = (32, 64) if tiny else (224, 4096)
    model_cfg = (dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                      decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75) if tiny else
                 dict(BENCH_VIT))
    cfg = build(PretrainConfig, {"batch_size": batch, "model": model_cfg, "pool": {"dim": 32 if tiny else 512,
                                                                                    "num_heads": 2 if tiny else 8}})
    warmup = warmup_steps(workers)
    n_images = batch * (steps + warmup + 1)
    # one image cache per size: a cache kept from a run with fewer steps would be read past its end
    prepared = workdir / ("tiny" if tiny else "s2") / f"prepared-{n_images}"
    prepared.mkdir(parents=True, exist_ok=True)
    import benchmarks.data_path as dp

    dp.IMG, dp.HIDDEN = img, hidden
    make_image_cache(prepared / "images.h5", n_images)
    text_path = prepared.parent / "text" / "text.h5"
    make_text_cache(text_path, 0.01 if tiny else 1.0)
    text = TextCache(text_path)
    rng = np.random.default_rng(0)
    pairs = [Pair(i, i, int(r)) for i, r in enumerate(rng.integers(0, text.n_texts, n_images))]
    # augment_on device (params-mimic.yaml): the loader sends [0, 1] images, the batch is augmented on the GPU
    on_device = augment_on == "device"
    ds = PairDataset(prepared, text, pairs, PretrainDataConfig(), img, augment=not on_device,
                     normalize_images=not on_device)
    loader = DataLoader(ds, batch_sampler=EpochBatches(n_images, batch, 0, 0), collate_fn=collate,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=PREFETCH_FACTOR if workers else None,
                        persistent_workers=False)
    torch.manual_seed(0)
    model = PretrainModel(cfg.model, cfg.pool, cfg.loss, hidden).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    # --tiny compiles with the eager backend: the same torch.compile path, without minutes of CPU codegen
    fwd = torch.compile(model, backend="eager" if tiny else "inductor") if compile_ else model
    num_patches = (img // cfg.model.patch_size) ** 2
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wait = busy = 0.0
    done = 0
    t_start = time.perf_counter()
    it = iter(loader)
    for k in range(steps + warmup):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        images = b["images"].to(device, non_blocking=True)
        if on_device:  # as cxrpipe.pretrain.train.device_batch does
            images = normalize(augment_batch(images, AugmentConfig(), b["index"].tolist()), 0.5, 0.25)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses = fwd(images, b["text"].to(device, non_blocking=True),
                         b["text_mask"].to(device, non_blocking=True), noise=torch.rand(batch, num_patches, device=device))
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if k >= warmup:
            wait, busy, done = wait + t1 - t0, busy + t2 - t1, done + batch
        elif k == warmup - 1:
            t_start = time.perf_counter()
    wall = time.perf_counter() - t_start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del model, opt, fwd, it
    return {"images_per_s": done / wall, "step_s": wall / steps, "wait_share": wait / wall, "peak_gib": peak,
            "mimic_epoch_h": MIMIC_IMAGES / (done / wall) / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="shrunken shapes on CPU (checks the script)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cxrpipe-gpu-bench"))
    ap.add_argument("--n-texts", type=int, default=1000, help="stage one: reports per quantization")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="stage one: padded tokens per forward")
    ap.add_argument("--batch", type=int, default=256, help="stage two: images per step")
    ap.add_argument("--steps", type=int, default=100, help="stage two: timed steps per row (after a warm-up that "
                    "drains the batches the loader prefetched meanwhile: 2 + workers x 4 steps)")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="stage two: DataLoader workers")
    ap.add_argument("--skip", default="", help="comma list of rows to skip: nf4,bf16,eager,compile,loader-aug")
    args = ap.parse_args()

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False). Run it on a GPU machine, "
              "or with --tiny to check the script on CPU.", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` from any working directory
    from benchmarks.gpu_llama7b import LLAMA2_7B, TINY, bench, make_checkpoint
    from cxrpipe.gpu_bench import warmup_steps

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    skip = set(filter(None, args.skip.split(",")))
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    if args.tiny:
        args.n_texts, args.batch, args.steps, args.workers = min(args.n_texts, 24), 8, 2, 0
    t0 = time.perf_counter()
    folder = args.workdir / ("tiny" if args.tiny else "llama2-7b-shape")
    shape = dict(TINY, vocab_size=512) if args.tiny else LLAMA2_7B
    if not {"nf4", "bf16"} <= skip:
        make_checkpoint(folder, shape)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(110), 0.6, args.n_texts).round(), 8, 512).astype(int)
    vocab = shape["vocab_size"]
    ids = [rng.integers(3, vocab, n).tolist() for n in lengths]
    print(f"# {card}; torch {torch.__version__}; {'TINY shapes' if args.tiny else 'real shapes'}; "
          f"checkpoint ready in {time.perf_counter() - t0:.0f} s")
    print(f"{'row':<44}{'throughput':>16}{'step s':>8}{'wait data':>10}{'padding':>9}{'peak GiB':>10}"
          f"{'MIMIC-CXR h':>13}")
    for q in ("nf4", "bf16"):
        if q in skip:
            continue
        r = bench(folder, q, ids, args.batch_tokens, device)
        hours = MIMIC_STUDIES * lengths.mean() / r["tokens_per_s"] / 3600
        print(f"{'stage 1 LLaMA-2-7b ' + q:<44}{r['tokens_per_s']:>10.0f} tok/s{'':>8}{'':>10}{r['padding']:>9.1%}"
              f"{r['peak_gib']:>10.2f}{hours:>13.2f}", flush=True)
    for compile_, aug in ((False, "device"), (True, "device"), (False, "loader")):
        row = "loader-aug" if aug == "loader" else "compile" if compile_ else "eager"
        if row in skip:
            continue
        r = stage_two(args.workdir, args.tiny, compile_, args.steps, args.batch, args.workers, device, aug)
        name = f"stage 2 ViT-B/16 bf16 {'compile' if compile_ else 'eager'} aug {aug}"
        print(f"{name:<44}{r['images_per_s']:>10.0f} img/s{r['step_s']:>8.3f}{r['wait_share']:>10.1%}{'':>9}"
              f"{r['peak_gib']:>10.2f}{r['mimic_epoch_h']:>13.2f}", flush=True)
    print(f"# stage 1: {args.n_texts} random-token reports, mean {lengths.mean():.0f} tokens, batch_tokens "
          f"{args.batch_tokens}; hours = {MIMIC_STUDIES} reports x mean / tokens/s. stage 2: batch {args.batch}, "
          f"{args.steps} timed steps after {warmup_steps(args.workers)} warm-up, {args.workers} loader workers; "
          f"hours = one epoch of {MIMIC_IMAGES} images. total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
